"""run_with_cache and ActivationCache: what is kept, how it is looked up, gradients."""

from __future__ import annotations

import pytest
import torch

from hooked import ActivationCache, HookedTransformer, HookedTransformerConfig

CFG = HookedTransformerConfig(d_model=24, n_layers=3, n_heads=3, d_vocab=50, n_ctx=16, d_mlp=40)


@pytest.fixture
def model():
    return HookedTransformer(CFG).eval()


@pytest.fixture
def tokens():
    return torch.randint(0, 50, (2, 7))


def test_cache_is_a_mapping_of_every_hook(model, tokens):
    logits, cache = model.run_with_cache(tokens)
    assert isinstance(cache, ActivationCache)
    assert set(cache) == set(model.hook_dict) and len(cache) == len(model.hook_dict)
    assert dict(cache.items()).keys() == set(model.hook_dict)
    assert "blocks.0.attn.hook_pattern" in cache and "blocks.9.hook_resid_pre" not in cache
    assert torch.allclose(logits, model(tokens), atol=1e-6)


def test_shorthand_keys(model, tokens):
    _, cache = model.run_with_cache(tokens)
    assert cache["pattern", 0] is cache["blocks.0.attn.hook_pattern"]
    assert cache["resid_pre", -1] is cache["blocks.2.hook_resid_pre"]
    assert cache["scale"] is cache["ln_final.hook_scale"]
    assert cache["normalized", 1, "ln2"] is cache["blocks.1.ln2.hook_normalized"]
    assert cache["pre1"] is cache["blocks.1.mlp.hook_pre"]
    assert cache["k", 2, "a"] is cache["blocks.2.attn.hook_k"]
    assert cache["embed"] is cache["hook_embed"]
    with pytest.raises(KeyError, match="names_filter"):
        model.run_with_cache(tokens, names_filter="hook_embed")[1]["resid_pre", 0]


@pytest.mark.parametrize(
    "names_filter, expected",
    [
        ("blocks.1.hook_resid_post", {"blocks.1.hook_resid_post"}),
        (["hook_embed", "blocks.0.attn.hook_z"], {"hook_embed", "blocks.0.attn.hook_z"}),
        (lambda name: name.endswith("hook_pattern"), {f"blocks.{i}.attn.hook_pattern" for i in range(3)}),
    ],
)
def test_names_filter_keeps_only_what_it_asks_for(model, tokens, names_filter, expected):
    _, cache = model.run_with_cache(tokens, names_filter=names_filter)
    assert set(cache) == expected
    assert not any(hp.has_hooks for hp in model.hook_dict.values())


def test_unknown_name_in_filter_suggests_neighbours(model, tokens):
    with pytest.raises(KeyError, match="blocks.1.hook_resid_post"):
        model.run_with_hooks(tokens, fwd_hooks=[("blocks.1.hook_resid_pots", lambda x, hook: x)])
    assert not any(hp.has_hooks for hp in model.hook_dict.values())


def test_device_batch_dim_and_pos_slice(model, tokens):
    _, full = model.run_with_cache(tokens)
    _, on_meta = model.run_with_cache(tokens, device="meta", names_filter="hook_embed")
    assert on_meta["hook_embed"].device.type == "meta"
    _, single = model.run_with_cache(tokens[:1], remove_batch_dim=True)
    assert torch.allclose(single["resid_post", 1], full["resid_post", 1][0], atol=1e-6)
    assert single["pattern", 0].shape == (3, 7, 7)
    _, last = model.run_with_cache(tokens, pos_slice=-1)
    assert torch.allclose(last["resid_post", 0], full["resid_post", 0][:, -1], atol=1e-6)
    assert torch.allclose(last["pattern", 0], full["pattern", 0][:, :, -1], atol=1e-6)


def test_cache_batch_operations(model, tokens):
    _, cache = model.run_with_cache(tokens)
    row = cache.apply_slice_to_batch_dim(1)
    assert torch.equal(row["resid_pre", 2], cache["resid_pre", 2][1])
    first = cache.apply_slice_to_batch_dim((0, 1))
    assert first["resid_pre", 2].shape[0] == 1
    first.remove_batch_dim()
    assert torch.equal(first["resid_pre", 2], cache["resid_pre", 2][0])
    with pytest.raises(ValueError, match="batch size 1"):
        cache.remove_batch_dim()
    moved = cache.to("meta")
    assert moved is cache and cache["hook_embed"].device.type == "meta"


def test_incl_bwd_caches_true_gradients(model, tokens):
    """Gradients in the cache equal those autograd gives for the same activations (via retain_grad)."""
    names = ["hook_embed", "blocks.1.hook_resid_mid", "blocks.2.attn.hook_pattern", "blocks.0.mlp.hook_post"]
    kept = {}

    def retain(x, hook):
        x.retain_grad()
        kept[hook.name] = x

    loss = model.run_with_hooks(tokens, return_type="loss", fwd_hooks=[(names, retain)])
    loss.backward()
    model.zero_grad()
    _, cache = model.run_with_cache(tokens, return_type="loss", incl_bwd=True)
    for name in names:
        assert torch.allclose(cache[name + "_grad"], kept[name].grad, atol=1e-7), name
        assert cache[name + "_grad"].abs().sum() > 0
    assert not any(hp.has_hooks for hp in model.hook_dict.values())


def test_toggle_autodiff(model, tokens):
    _, cache = model.run_with_cache(tokens)
    try:
        cache.toggle_autodiff(False)
        assert not torch.is_grad_enabled()
        cache.toggle_autodiff(True)
        assert torch.is_grad_enabled()
    finally:
        torch.set_grad_enabled(True)


def test_a_names_filter_naming_no_hook_point_is_refused_with_the_nearest(model, tokens):
    """It used to cache nothing, silently; a predicate or None still selects as before."""
    with pytest.raises(KeyError, match="Did you mean: blocks.0.attn.hook_pattern"):
        model.run_with_cache(tokens, names_filter="blocks.0.attn.hook_patern")
    with pytest.raises(KeyError, match="hook_resid_psot"):
        model.run_with_cache(tokens, names_filter=["blocks.0.hook_resid_pre", "blocks.0.hook_resid_psot"])
    assert not any(hp.has_hooks for hp in model.hook_dict.values())
    _, cache = model.run_with_cache(tokens, names_filter=lambda name: name.endswith("hook_patern"))
    assert len(cache) == 0
