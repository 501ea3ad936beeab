"""model.frozen(): with attention patterns and norm scales detached, the gradient of a logit with respect to
the residual stream is the Jacobian of the linear model those constants define, written out here by hand."""

from __future__ import annotations

import pytest
import torch

from hooked import HookedTransformer, HookedTransformerConfig

CFG = HookedTransformerConfig(
    n_layers=2, d_model=16, n_heads=4, d_head=4, n_ctx=16, d_vocab=30, attn_only=True, normalization_type="LN", seed=0
)


def layer_norm(x, norm, scale):
    """A LayerNorm whose scale is the constant `scale` (its mean is still x's: linear in x)."""
    return (x - x.mean(-1, keepdim=True)) / scale * norm.w + norm.b


def linear_model(model, cache, resid):
    """The attention-only model with each pattern and norm scale replaced by the cached constant."""
    for layer in range(model.cfg.n_layers):
        block = model.blocks[layer]
        normalized = layer_norm(resid, block.ln1, cache["scale", layer, "ln1"])
        v = torch.einsum("bpd,hde->bphe", normalized, model.W_V[layer]) + model.b_V[layer]
        z = torch.einsum("bhqk,bkhe->bqhe", cache["pattern", layer], v)
        resid = resid + torch.einsum("bqhe,hed->bqd", z, model.W_O[layer]) + model.b_O[layer]
    return layer_norm(resid, model.ln_final, cache["ln_final.hook_scale"]) @ model.W_U + model.b_U


def gradient(fn, resid):
    resid = resid.clone().requires_grad_(True)
    (logits_fn := fn(resid))[0, -1, 7].backward()
    return logits_fn, resid.grad


def test_the_frozen_gradient_is_the_jacobian_of_the_linear_local_model():
    model = HookedTransformer(CFG)
    tokens = torch.randint(0, CFG.d_vocab, (1, 6), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        _, cache = model.run_with_cache(tokens)
    resid = cache["resid_pre", 0]
    with model.frozen():
        logits, frozen_grad = gradient(lambda r: model(r, start_at_layer=0), resid)
    by_hand, expected = gradient(lambda r: linear_model(model, cache, r), resid)
    torch.testing.assert_close(logits, by_hand, rtol=1e-5, atol=1e-6)  # same forward numbers
    torch.testing.assert_close(frozen_grad, expected, rtol=1e-5, atol=1e-7)
    _, live_grad = gradient(lambda r: model(r, start_at_layer=0), resid)
    assert (live_grad - expected).abs().max() > 1e-4  # unfrozen, patterns and scales carry gradient too


@pytest.mark.parametrize("patterns,norm_scales", [(True, True), (True, False), (False, True)])
def test_every_pattern_and_norm_scale_q_k_norms_included_is_detached_and_only_inside(patterns, norm_scales):
    cfg = CFG.replace(attn_only=False, normalization_type="RMS", qk_norm="shared", d_mlp=8, act_fn="silu")
    model = HookedTransformer(cfg)
    seen = {}

    def record(act, hook):
        seen[hook.name] = act.requires_grad

    watched = lambda name: name.endswith(("hook_pattern", "hook_scale"))  # noqa: E731
    with model.frozen(patterns=patterns, norm_scales=norm_scales):
        model.run_with_hooks(torch.tensor([[1, 2, 3]]), fwd_hooks=[(watched, record)])
    assert "blocks.0.attn.q_norm.hook_scale" in seen and "ln_final.hook_scale" in seen
    for name, requires_grad in seen.items():
        assert requires_grad == (not patterns if name.endswith("hook_pattern") else not norm_scales), name
    model.run_with_hooks(torch.tensor([[1, 2, 3]]), fwd_hooks=[(watched, record)])
    assert all(seen.values())  # after the context, gradients flow through them again
