"""In-place edits inside hooks under autograd, and one model used from two threads.

An in-place edit of an activation that autograd saved (the fused attention's output behind hook_z, the
softmax's pattern) used to make `.backward()` fail; its gradients must equal those of the same edit made
out of place. Hooks belong to the model, so a second thread running it while the first is inside
hooks() would silently use the first thread's hooks: that is refused, by name.
"""

from __future__ import annotations

import threading

import pytest
import torch
from conftest import tiny_llama

from hooked import HookedTransformer


@pytest.fixture
def model():
    torch.manual_seed(0)
    return HookedTransformer(tiny_llama(n_layers=2, d_vocab=40, n_ctx=32))


@pytest.fixture
def tokens():
    torch.manual_seed(1)
    return torch.randint(0, 40, (2, 9))


def in_place_z(z, hook):
    z[:, :, 1] = 0.0  # the README's head ablation


def out_of_place_z(z, hook):
    keep = torch.ones(z.shape[2], dtype=z.dtype)
    keep[1] = 0.0
    return z * keep[:, None]


def in_place_pattern(pattern, hook):
    pattern[:, 2] *= 0.5


def out_of_place_pattern(pattern, hook):
    scale = torch.ones(pattern.shape[1], dtype=pattern.dtype)
    scale[2] = 0.5
    return pattern * scale[:, None, None]


def in_place_scale(scale, hook):
    scale *= 2.0


def out_of_place_scale(scale, hook):
    return scale * 2.0


def gradients(model, tokens, name, fn):
    model.zero_grad()
    loss = model.run_with_hooks(tokens, return_type="loss", fwd_hooks=[(name, fn)])
    loss.backward()
    return loss.detach(), {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}


@pytest.mark.parametrize(
    ("name", "in_place", "out_of_place"),
    [
        ("blocks.0.attn.hook_z", in_place_z, out_of_place_z),
        ("blocks.1.attn.hook_pattern", in_place_pattern, out_of_place_pattern),
        ("blocks.0.ln1.hook_scale", in_place_scale, out_of_place_scale),  # sqrt keeps its output for backward
    ],
)
@pytest.mark.parametrize("implementation", ["sdpa", "eager"])
def test_in_place_edits_back_propagate_like_the_same_edit_out_of_place(
    model, tokens, name, in_place, out_of_place, implementation
):
    model.set_attn_implementation(implementation)
    loss, grads = gradients(model, tokens, name, in_place)
    expected_loss, expected_grads = gradients(model, tokens, name, out_of_place)
    torch.testing.assert_close(loss, expected_loss, atol=1e-6, rtol=1e-6)
    assert grads.keys() == expected_grads.keys() and len(grads) > 0
    for param, grad in grads.items():
        torch.testing.assert_close(grad, expected_grads[param], atol=1e-6, rtol=1e-5, msg=param)
    with torch.no_grad():
        unedited = model(tokens, return_type="loss")
    assert not torch.equal(loss, unedited)  # the edit took effect


def test_a_second_thread_is_refused_while_one_is_inside_hooks(model, tokens):
    inside, release = threading.Event(), threading.Event()
    errors = []

    def first():
        with model.hooks(fwd_hooks=[("blocks.0.hook_resid_post", lambda x, hook: x * 0)]):
            inside.set()
            release.wait(timeout=60)

    thread = threading.Thread(target=first)
    thread.start()
    assert inside.wait(timeout=60)
    try:
        for attempt in (
            lambda: model(tokens),
            lambda: model.run_with_hooks(tokens, fwd_hooks=[("blocks.0.hook_resid_pre", lambda x, hook: None)]),
            lambda: model.run_with_cache(tokens),
        ):
            with pytest.raises(RuntimeError, match=r"another thread.*copy\.deepcopy\(model\)"):
                attempt()
    except BaseException as error:  # never leave the other thread waiting
        errors.append(error)
    finally:
        release.set()
        thread.join(timeout=60)
    assert not errors, errors
    # Once the first thread has left its hooks() block, any thread may run the model again, hook-free.
    assert not any(hp.has_hooks for hp in model.hook_dict.values())
    results = []
    worker = threading.Thread(target=lambda: results.append(model(tokens)))
    worker.start()
    worker.join(timeout=60)
    torch.testing.assert_close(results[0], model(tokens), atol=0, rtol=0)


def test_hooks_blocks_nest_in_one_thread(model, tokens):
    double_0 = ("blocks.0.hook_resid_post", lambda x, hook: x * 2)
    double_1 = ("blocks.1.hook_resid_post", lambda x, hook: x * 2)
    with torch.no_grad():
        clean = model(tokens)
        with model.hooks(fwd_hooks=[double_0]):
            with model.hooks(fwd_hooks=[double_1]):
                both = model(tokens)
            outer = model(tokens)
        torch.testing.assert_close(both, model.run_with_hooks(tokens, fwd_hooks=[double_0, double_1]))
        torch.testing.assert_close(outer, model.run_with_hooks(tokens, fwd_hooks=[double_0]))
        torch.testing.assert_close(model(tokens), clean, atol=0, rtol=0)
    assert not torch.allclose(both, outer)
