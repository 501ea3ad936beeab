"""SAEs and transcoders spliced into a model (hooked.dictionaries), checked against the maths done by hand
from their weights, and against the invariants: with the error term the logits are the clean ones, bit for
bit; a feature edit moves the output by exactly that feature's decoder share; nothing outlives a context.
"""

from __future__ import annotations

import pytest
import torch

from hooked import HookedTransformer, HookedTransformerConfig
from hooked.dictionaries import SAE, JumpReLUSAE, TopKSAE

CFG = HookedTransformerConfig(
    n_layers=2,
    d_model=16,
    n_heads=4,
    n_key_value_heads=2,
    d_head=4,
    d_mlp=24,
    d_vocab=50,
    n_ctx=32,
    normalization_type="RMS",
    positional_embedding_type="rotary",
    gated_mlp=True,
    act_fn="silu",
    seed=0,
)


@pytest.fixture(scope="module")
def model():
    return HookedTransformer(CFG)


@pytest.fixture(scope="module")
def tokens():
    return torch.randint(0, CFG.d_vocab, (2, 9), generator=torch.Generator().manual_seed(1))


def make(cls, d_in, hook, d_sae=40, seed=0, **kwargs):
    torch.manual_seed(seed)
    sae = cls(d_in, d_sae, hook, **kwargs)
    with torch.no_grad():
        for param in sae.parameters():
            param.normal_(0, 0.3)
        sae.b_enc.fill_(0.05)  # some features active everywhere, so the reconstruction really differs
        if isinstance(sae, JumpReLUSAE):
            sae.threshold.uniform_(0.0, 0.3)
    return sae


# hook -> d_in: each way a hook point can be read (flattened heads, each head alike, neurons, residual)
HOOKS = {
    "blocks.0.hook_resid_pre": 16,
    "blocks.1.hook_resid_mid": 16,
    "blocks.0.attn.hook_z": 16,  # 4 heads x d_head 4, flattened (SAELens's reshape_activations="hook_z")
    "blocks.1.attn.hook_k": 4,  # every one of the 2 kv heads read alike
    "blocks.0.attn.hook_result": 16,  # [batch, pos, n_heads, d_model], computed only because the SAE listens
    "blocks.1.hook_q_input": 16,
    "blocks.0.mlp.hook_post": 24,
    "blocks.1.ln2.hook_normalized": 16,
}


@pytest.mark.parametrize("grad", [True, False], ids=["grad", "no_grad"])
@pytest.mark.parametrize("hook", sorted(HOOKS))
def test_with_the_error_term_the_logits_are_the_clean_ones_bit_for_bit(model, tokens, hook, grad):
    sae = make(SAE, HOOKS[hook], hook)
    with torch.set_grad_enabled(grad):
        clean = model(tokens)
        spliced = model.run_with_saes(tokens, saes=[sae], use_error_term=True)
        replaced = model.run_with_saes(tokens, saes=[sae])
    assert torch.equal(spliced, clean)
    assert (replaced - clean).abs().max() > 1e-5  # without the error term the reconstruction is what runs on


def test_a_transcoder_with_its_error_term_leaves_the_logits_bit_for_bit(model, tokens):
    tc = make(SAE, 16, "blocks.0.ln2.hook_normalized", hook_name_out="blocks.0.hook_mlp_out", skip=True)
    clean = model(tokens)
    assert torch.equal(model.run_with_saes(tokens, saes=[tc], use_error_term=True), clean)
    assert (model.run_with_saes(tokens, saes=[tc]) - clean).abs().max() > 1e-3


def by_hand(sae, x):
    """The SAE's maths written out from its weights (ReLU, JumpReLU or TopK), in float64."""
    W_enc, b_enc, W_dec, b_dec = (getattr(sae, n).detach().double() for n in ("W_enc", "b_enc", "W_dec", "b_dec"))
    x = x.double()
    pre = (x - b_dec if sae.apply_b_dec_to_input else x) @ W_enc + b_enc
    if isinstance(sae, JumpReLUSAE):
        acts = torch.where(pre > sae.threshold.detach().double(), pre.clamp(min=0), 0.0)
    elif isinstance(sae, TopKSAE):
        kth = pre.topk(sae.k, dim=-1).values[..., -1:]
        acts = torch.where(pre >= kth, pre.clamp(min=0), 0.0)
    else:
        acts = pre.clamp(min=0)
    recons = acts @ W_dec + b_dec
    if sae.W_skip is not None:
        recons = recons + x @ sae.W_skip.detach().double().T
    return pre, acts, recons


SAES = {
    "relu-resid": (SAE, "blocks.1.hook_resid_pre", 16, {}),
    "jumprelu-z": (JumpReLUSAE, "blocks.1.attn.hook_z", 16, {}),
    "topk-mlp": (TopKSAE, "blocks.0.mlp.hook_post", 24, {"k": 5}),
    "skip-transcoder": (
        SAE,
        "blocks.1.ln2.hook_normalized",
        16,
        {"hook_name_out": "blocks.1.hook_mlp_out", "skip": True},
    ),
}


@pytest.mark.parametrize("kind", sorted(SAES))
def test_the_cached_feature_activations_and_reconstruction_are_the_maths_of_the_weights(model, tokens, kind):
    cls, hook, d_in, kwargs = SAES[kind]
    sae = make(cls, d_in, hook, **kwargs)
    out = sae.hook_name_out
    _, clean = model.run_with_cache(tokens, names_filter=[hook, out])
    # Caching every point would switch attention to its explicit path, whose numbers differ in the last bit.
    _, cache = model.run_with_cache_with_saes(
        tokens, saes=[sae], names_filter=lambda n: n in (hook, out) or ".hook_sae_" in n
    )
    x = clean[hook].flatten(-2) if hook.endswith("hook_z") else clean[hook]
    pre, acts, recons = by_hand(sae, x)
    torch.testing.assert_close(
        cache[f"{out}.hook_sae_input"], x, rtol=0, atol=0
    )  # what the SAE read: the clean activation
    torch.testing.assert_close(cache[f"{out}.hook_sae_acts_pre"].double(), pre, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(cache[f"{out}.hook_sae_acts_post"].double(), acts, rtol=1e-5, atol=1e-5)
    assert (acts > 0).any() and (acts == 0).any()
    output = cache[f"{out}.hook_sae_output"].double()
    torch.testing.assert_close(output, recons.reshape(output.shape), rtol=1e-5, atol=1e-5)
    assert torch.equal(cache[out], cache[f"{out}.hook_sae_output"])  # hooks on the point see what runs on
    if isinstance(sae, TopKSAE):
        assert ((cache[f"{out}.hook_sae_acts_post"] != 0).sum(-1) <= sae.k).all()


def test_a_feature_edit_with_the_error_term_moves_the_output_by_its_decoder_share(model, tokens):
    hook = "blocks.0.hook_resid_post"
    sae = make(SAE, 16, hook)
    _, clean = model.run_with_cache_with_saes(tokens, saes=[sae], use_error_term=True)
    acts = clean[f"{hook}.hook_sae_acts_post"]
    feature = int(acts.flatten(0, 1).min(0).values.argmax())
    assert (acts[..., feature] > 0).all()

    def zero_feature(a, hook):
        a[..., feature] = 0.0  # in place, as notebooks do

    edited = model.run_with_hooks_with_saes(
        tokens, saes=[sae], use_error_term=True, fwd_hooks=[(f"{hook}.hook_sae_acts_post", zero_feature)]
    )
    share = acts[..., feature, None] * sae.W_dec[feature].detach()

    def remove_share(resid, hook):
        return resid - share

    expected = model.run_with_hooks(tokens, fwd_hooks=[(hook, remove_share)])
    torch.testing.assert_close(edited, expected, rtol=1e-5, atol=1e-5)
    assert (edited - model(tokens)).abs().max() > 1e-3


def test_with_the_error_term_gradients_are_the_clean_models_and_features_get_their_decoders(model, tokens):
    hook = "blocks.0.hook_resid_post"
    sae = make(SAE, 16, hook)
    grads = {}

    def keep(name):
        def fn(grad, hook):
            grads[name] = grad.clone()

        return fn

    bwd = [("hook_embed", keep("embed")), (hook, keep("resid"))]
    model.run_with_hooks(tokens, bwd_hooks=bwd)[:, -1, 7].sum().backward()
    clean_embed = grads.pop("embed")
    bwd.append((f"{hook}.hook_sae_acts_post", keep("acts")))
    model.run_with_hooks_with_saes(tokens, saes=[sae], use_error_term=True, bwd_hooks=bwd)[:, -1, 7].sum().backward()
    assert torch.equal(grads["embed"], clean_embed)
    torch.testing.assert_close(grads["acts"], grads["resid"] @ sae.W_dec.detach().T, rtol=1e-5, atol=1e-6)


def test_steering_with_a_feature_direction_acts_during_generate(model):
    hook, feature = "blocks.0.hook_resid_post", 5
    sae = make(SAE, 16, hook)
    prompt = torch.tensor([[1, 2, 3, 4]])

    def steer(acts, hook):
        acts[..., feature] += 8.0

    with model.saes([sae], use_error_term=True), model.hooks([(f"{hook}.hook_sae_acts_post", steer)]):
        steered = model.generate(prompt, max_new_tokens=6, do_sample=False, stop_at_eos=False, verbose=False)

    def add_direction(resid, hook):
        return resid + 8.0 * sae.W_dec[feature].detach()

    with model.hooks([(hook, add_direction)]):
        expected = model.generate(prompt, max_new_tokens=6, do_sample=False, stop_at_eos=False, verbose=False)
    clean = model.generate(prompt, max_new_tokens=6, do_sample=False, stop_at_eos=False, verbose=False)
    assert torch.equal(steered, expected) and not torch.equal(steered, clean)


def splice_state(model):
    return sorted(model.hook_dict), {n: len(p._forward_hooks) for n, p in model.hook_dict.items()}


def test_nothing_outlives_a_context_even_when_its_body_or_a_splice_raises(model, tokens):
    before = splice_state(model)
    sae, other = make(SAE, 16, "blocks.0.hook_resid_pre"), make(SAE, 16, "blocks.1.hook_resid_pre", seed=1)
    model.run_with_cache_with_saes(tokens, saes=[sae, other], use_error_term=True)
    assert splice_state(model) == before and model.acts_to_saes == {}
    with pytest.raises(RuntimeError, match="inside"):
        with model.saes([sae]):
            raise RuntimeError("inside")
    assert splice_state(model) == before
    bad = make(SAE, 12, "blocks.1.hook_resid_post")
    with pytest.raises(ValueError, match="d_in=12"):
        model.run_with_saes(tokens, saes=[sae, bad])
    assert splice_state(model) == before and sae.spliced_at is None
    assert sorted(sae.hook_dict) == sorted(
        f"hook_sae_{n}" for n in ("input", "acts_pre", "acts_post", "recons", "error", "output")
    )
    assert sae.hook_sae_acts_post.name == "hook_sae_acts_post"  # its points took their names back


def test_add_sae_stays_until_reset_saes_and_a_context_restores_what_was_there(model, tokens):
    hook = "blocks.0.hook_resid_pre"
    first, second = make(SAE, 16, hook), make(SAE, 16, hook, seed=1)
    with_first = model.run_with_saes(tokens, saes=[first])
    model.add_sae(first)
    try:
        model.reset_hooks(including_permanent=True)  # hooks are not splices: the SAE stays
        assert torch.equal(model(tokens), with_first)
        with model.saes([second]):
            assert model.acts_to_saes[hook] is second
        assert model.acts_to_saes[hook] is first and torch.equal(model(tokens), with_first)
    finally:
        model.reset_saes()
    assert model.acts_to_saes == {} and torch.equal(model(tokens), model.run_with_saes(tokens, saes=[]))


def test_refusals_name_the_problem(model):
    with pytest.raises(ValueError, match=r"d_in=12.*'blocks.0.hook_resid_pre' is 16"):
        model.add_sae(make(SAE, 12, "blocks.0.hook_resid_pre"))
    with pytest.raises(ValueError, match=r"d_in=6.*4 \(each head\) or 8 \(heads flattened\)"):
        model.add_sae(make(SAE, 6, "blocks.0.attn.hook_v"))
    with pytest.raises(KeyError, match="blocks.7.hook_resid_pre"):
        model.add_sae(make(SAE, 16, "blocks.7.hook_resid_pre"))
    with pytest.raises(ValueError, match="Cannot splice a dictionary at 'blocks.0.attn.hook_pattern'"):
        model.add_sae(make(SAE, 16, "blocks.0.attn.hook_pattern"))
    tc = make(SAE, 16, "blocks.0.hook_mlp_in", hook_name_out="blocks.0.hook_mlp_out")
    model.add_sae(tc)
    try:
        with pytest.raises(ValueError, match="already carries the output"):
            model.add_sae(make(SAE, 16, "blocks.0.hook_mlp_out"))
        with pytest.raises(ValueError, match="already spliced"):
            HookedTransformer(CFG).add_sae(tc)
    finally:
        model.reset_saes()
    assert model.acts_to_saes == {}


def test_an_sae_runs_on_its_own_as_a_hooked_root_module():
    sae = make(TopKSAE, 16, "blocks.0.hook_resid_pre", k=3)
    x = torch.randn(5, 16)
    out, cache = sae.run_with_cache(x)
    _, acts, recons = by_hand(sae, x)
    torch.testing.assert_close(out.double(), recons, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(cache["hook_sae_acts_post"].double(), acts, rtol=1e-5, atol=1e-5)
