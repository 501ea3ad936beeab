"""Wrong inputs to a model are refused by name, before anything runs, and leave the model as it was.

Each case checks the exception type, a message naming the problem and the way out, and afterwards that
no hook is left attached and the logits are bit-identical to before. The forward pass is called without
the test suite's runtime shape checks (conftest installs them on hooked.model), which would otherwise
answer first with their own message: users run without them, and these errors are what users see.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from conftest import tiny_llama, tiny_tokenizer

from hooked import HookedTransformer
from hooked.components.kv_cache import KVCache

D_VOCAB, N_CTX = 41, 16  # tiny_tokenizer's vocabulary


@pytest.fixture(autouse=True)
def unchecked_forward(monkeypatch):
    """HookedTransformer.forward as users get it, without jaxtyping's runtime checks."""
    monkeypatch.setattr(HookedTransformer, "forward", HookedTransformer.forward.__wrapped__)


def make_model(**sizes) -> HookedTransformer:
    cfg = tiny_llama(**{"n_layers": 2, "d_vocab": D_VOCAB, "n_ctx": N_CTX, "seed": 0, **sizes})
    return HookedTransformer(cfg, tokenizer=tiny_tokenizer()).eval()


@pytest.fixture(scope="module")
def model():
    return make_model()


TOKENS = torch.tensor([[0, 5, 9, 12, 3], [0, 7, 7, 2, 40]])


@pytest.fixture
def reference(model):
    with torch.no_grad():
        return model(TOKENS)


def assert_unchanged(model, reference):
    assert not any(hook_point.has_hooks for hook_point in model.hook_points()), "a hook was left attached"
    with torch.no_grad():
        assert torch.equal(model(TOKENS), reference)


BAD_INPUTS = {
    "None": (None, {}, TypeError, "a tensor of token ids \\[batch, pos\\]; got NoneType"),
    "int": (123, {}, TypeError, "got int"),
    "tuple": ((1, 2), {}, TypeError, "got tuple"),
    "bytes": (b"the cat", {}, TypeError, "got bytes"),
    "numpy": (np.array([[1, 2]]), {}, TypeError, r"got ndarray \(torch\.as_tensor\(array\) makes one"),
    "empty list": ([], {}, ValueError, "The input is an empty list"),
    "list of ints": ([1, 2], {}, TypeError, r"A list input must hold strings, but it holds int; .*torch\.tensor"),
    "bool": (torch.tensor([[True, False]]), {}, TypeError, r"int64 or int32 tensor, got torch\.bool; use tokens\.long"),
    "uint8": (torch.tensor([[1, 2]], dtype=torch.uint8), {}, TypeError, r"got torch\.uint8; use tokens\.long\(\)"),
    "float": (torch.tensor([[1.0, 2.0]]), {}, TypeError, "got torch.float32; pass start_at_layer to feed a residual"),
    "3-D": (
        torch.zeros(1, 2, 3, dtype=torch.long),
        {},
        ValueError,
        r"\[pos\] or \[batch, pos\], got shape \(1, 2, 3\)",
    ),
    "0-D": (torch.tensor(3), {}, ValueError, r"got shape \(\); use tokens\.reshape\(1, -1\)"),
    "id too large": (torch.tensor([[1, D_VOCAB]]), {}, ValueError, rf"in \[0, {D_VOCAB}\).*range from 1 to {D_VOCAB};"),
    "negative id": (torch.tensor([[-1, 2]]), {}, ValueError, "range from -1 to 2; were they made by another model"),
    "mask shape": (
        TOKENS,
        {"attention_mask": torch.ones(2, 4, dtype=torch.long)},
        ValueError,
        r"attention_mask has shape \(2, 4\) but the input is \[batch=2, pos=5\]",
    ),
    "tokens with start_at_layer": (
        TOKENS,
        {"start_at_layer": 1},
        TypeError,
        r"start_at_layer=1 takes the residual stream .* got torch\.int64 \(2, 5\). Token ids start at the embedding",
    ),
    "residual of another width": (
        torch.zeros(2, 5, 7),
        {"start_at_layer": 1},
        TypeError,
        r"\[batch, pos, d_model=32\], got torch\.float32 \(2, 5, 7\)",
    ),
}


@pytest.mark.parametrize("case", sorted(BAD_INPUTS))
def test_a_wrong_input_is_named(model, reference, case):
    bad, kwargs, error, message = BAD_INPUTS[case]
    with torch.no_grad(), pytest.raises(error, match=message):
        model(bad, **kwargs)
    assert_unchanged(model, reference)


# ---- hooks ------------------------------------------------------------------------------------------------

NAME = "blocks.0.hook_resid_mid"


@pytest.mark.parametrize(
    "replace, message",
    [
        (lambda x: x.double(), r"returned a torch\.float64 tensor on cpu, but the activation is torch\.float32 on cpu"),
        (
            lambda x: torch.empty_like(x, device="meta"),
            r"returned a torch\.float32 tensor on meta, but the activation is torch\.float32 on cpu",
        ),
    ],
)
def test_a_hook_returning_another_dtype_or_device_is_named(model, reference, replace, message):
    with torch.no_grad(), pytest.raises(TypeError, match=rf"Hook on '{NAME}' {message}; return result\.to\("):
        model.run_with_hooks(TOKENS, fwd_hooks=[(NAME, lambda x, hook: replace(x))])
    assert_unchanged(model, reference)


def test_a_backward_hook_returning_another_dtype_is_named(model, reference):
    with model.hooks(bwd_hooks=[(NAME, lambda grad, hook: grad.double())]):
        loss = model(TOKENS, return_type="loss")
        with pytest.raises(TypeError, match=rf"Backward hook on '{NAME}' returned a torch\.float64 tensor"):
            loss.backward()
    model.zero_grad(set_to_none=True)
    assert_unchanged(model, reference)


def test_fwd_hooks_as_one_bare_pair_is_named(model, reference):
    with torch.no_grad(), pytest.raises(TypeError, match=r"fwd_hooks takes a list of \(name, fn\) pairs; put the one"):
        model.run_with_hooks(TOKENS, fwd_hooks=(NAME, lambda x, hook: x * 0))
    assert_unchanged(model, reference)


def test_a_bad_hook_entry_is_refused_before_any_hook_is_added(model, reference):
    good = (NAME, lambda x, hook: x * 0)
    with pytest.raises(TypeError, match="one entry is 'blocks.1.hook_resid_mid'"):
        with model.hooks(fwd_hooks=[good, "blocks.1.hook_resid_mid"], reset_hooks_end=False):
            pass
    assert_unchanged(model, reference)  # with reset_hooks_end=False, an added `good` would have stayed


@pytest.mark.parametrize("mode", [torch.inference_mode, torch.no_grad])
def test_incl_bwd_without_autograd_is_named(model, reference, mode):
    with mode(), pytest.raises(RuntimeError, match=r"incl_bwd=True\) back-propagates, which torch\.inference_mode"):
        model.run_with_cache(TOKENS, return_type="loss", incl_bwd=True)
    assert_unchanged(model, reference)


def test_incl_bwd_on_a_non_scalar_output_is_named(model, reference):
    with pytest.raises(ValueError, match=r"must be a scalar, but it is \(2, 5, 41\); pass return_type='loss'"):
        model.run_with_cache(TOKENS, incl_bwd=True)
    assert all(p.grad is None for p in model.parameters())
    assert_unchanged(model, reference)


# ---- key-value caches -------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "other, message",
    [
        ({"n_layers": 3}, "This KVCache has 3 layers but the model has 2"),
        # One key/value head where the model has two: the old cache broadcast it silently.
        ({"n_key_value_heads": 1}, r"holds keys of 1 heads x 8 \(torch\.float32, cpu\) but the model's are 2 heads"),
    ],
)
def test_a_kv_cache_of_another_model_is_refused(model, reference, other, message):
    cache = KVCache.for_model(make_model(**other))
    with torch.no_grad():
        make_model(**other)(TOKENS, past_kv_cache=cache)
        before = [(layer.length, layer.keys.clone()) for layer in cache.layers]
        with pytest.raises(ValueError, match=rf"{message}.*KVCache\.for_model\(model\)"):
            model(TOKENS[:, :1], past_kv_cache=cache)
    assert len(cache) == TOKENS.shape[1]
    assert all(
        # Only the stored positions: the buffer past them is uninitialized memory (it may hold NaNs).
        layer.length == n and torch.equal(layer.keys[:, :n], k[:, :n])
        for layer, (n, k) in zip(cache.layers, before, strict=True)
    )
    assert_unchanged(model, reference)


# ---- generation -------------------------------------------------------------------------------------------


@pytest.mark.parametrize("use_past_kv_cache", [True, False])
def test_generate_stops_at_the_context_with_a_warning_and_keeps_the_tokens(model, use_past_kv_cache):
    prompt = TOKENS[:1, :5]
    settings = dict(do_sample=False, stop_at_eos=False, verbose=False, use_past_kv_cache=use_past_kv_cache)
    with pytest.warns(UserWarning, match=rf"stopped after {N_CTX - 5} of 20 new tokens: .* n_ctx={N_CTX} tokens"):
        out = model.generate(prompt, max_new_tokens=20, **settings)
    assert out.shape == (1, N_CTX)
    assert torch.equal(out, model.generate(prompt, max_new_tokens=N_CTX - 5, **settings))  # no warning: it fits


def test_generate_refuses_a_negative_max_new_tokens(model):
    with pytest.raises(ValueError, match="max_new_tokens must be 0 or more, got -1"):
        model.generate(TOKENS[:1], max_new_tokens=-1, verbose=False)
