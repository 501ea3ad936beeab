"""Residual-stream analysis (hooked/cache_analysis.py) on the families whose blocks are not the plain
pre-norm block: norms after each sublayer (Gemma 2/3, OLMo 2), a LayerNorm without parameters (OLMo),
a mixture of experts (Mixtral), attention and MLP side by side (GPT-J, GPT-NeoX, Phi). Tiny random
Hugging Face models of test_parity_families.py's variants, loaded by us, checked by invariants:
every decomposition sums to the stream it decomposes, norm scaling reproduces each norm, and direct
logit attribution adds up to the model's logit difference."""

from __future__ import annotations

import pytest
import torch
from conftest import assert_close, save_tiny
from test_parity_families import VARIANTS, V

from hooked import HookedTransformer

FAMILIES = [
    "gemma2-uncapped-untied",  # the final logit cap would bend the logits away from the attribution
    "gemma3-local-global",
    "olmo",
    "olmo2-bias-tied",
    "mixtral-top2",
    "gptj",
    "gpt_neox-parallel",
    "phi",
]
POST_NORMED = {"gemma2-uncapped-untied", "gemma3-local-global", "olmo2-bias-tied"}
MOE = {"mixtral-top2"}
PARALLEL = {"gptj", "gpt_neox-parallel", "phi"}


_RUNS: dict = {}  # family -> (name, model, logits, cache), built once per session


def load_run(name: str, tmp_path_factory):
    if name not in _RUNS:
        folder = tmp_path_factory.mktemp(name)
        save_tiny(VARIANTS[name][0](), folder)
        model = HookedTransformer.from_pretrained(folder)
        tokens = torch.randint(0, V, (2, 9), generator=torch.Generator().manual_seed(0))
        with torch.no_grad():
            logits, cache = model.run_with_cache(tokens)
        _RUNS[name] = (name, model, logits, cache)
    return _RUNS[name]


@pytest.fixture(params=FAMILIES)
def run(request, tmp_path_factory):
    return load_run(request.param, tmp_path_factory)


def streams(model) -> list[tuple[int, bool]]:
    n_layers = model.cfg.n_layers
    return [(layer, False) for layer in range(n_layers + 1)] + [(layer, True) for layer in range(n_layers)]


def stream(cache, layer: int, mlp_input: bool) -> torch.Tensor:
    """The residual stream a norm reads, straight from the cache: hook_mlp_in is what the MLP reads
    (resid_mid, or resid_pre in a parallel block)."""
    n_layers = cache.model.cfg.n_layers
    if layer == n_layers:
        return cache["resid_post", n_layers - 1]
    return cache[f"blocks.{layer}.hook_mlp_in" if mlp_input else f"blocks.{layer}.hook_resid_pre"]


def normalized(cache, layer: int, mlp_input: bool) -> torch.Tensor:
    """What the norm reading that stream made of it, before its weight (OLMo 2 has no such norm)."""
    if layer == cache.model.cfg.n_layers:
        return cache["ln_final.hook_normalized"]
    name = f"blocks.{layer}.{'ln2' if mlp_input else 'ln1'}.hook_normalized"
    return cache[name] if name in cache else stream(cache, layer, mlp_input)


# ---- decompositions sum to their stream ------------------------------------------------------------


@pytest.mark.parametrize("expand_neurons", [True, False])
def test_full_decomposition_sums_to_every_stream(run, expand_neurons):
    name, model, _, cache = run
    if expand_neurons and name in MOE:
        with pytest.raises(ValueError, match="expand_neurons=False"):
            cache.get_full_resid_decomposition(expand_neurons=True)
        return
    for layer, mlp_input in streams(model):
        stack, labels = cache.get_full_resid_decomposition(
            layer, mlp_input=mlp_input, expand_neurons=expand_neurons, return_labels=True
        )
        assert len(labels) == stack.shape[0] == len(set(labels))
        assert_close(stack.sum(0), stream(cache, layer, mlp_input), "resid", label=f"{name} {layer} {mlp_input}")
    for pos_slice, index in [(-1, -1), ((2, 5), slice(2, 5))]:
        stack = cache.get_full_resid_decomposition(expand_neurons=expand_neurons, pos_slice=pos_slice)
        assert_close(stack.sum(0), cache["resid_post", -1][:, index], "resid", label=f"{name} {pos_slice}")


def test_decompose_and_accumulate_every_stream(run):
    name, model, _, cache = run
    for layer, mlp_input in streams(model):
        expected = stream(cache, layer, mlp_input)
        assert_close(cache.decompose_resid(layer, mlp_input=mlp_input).sum(0), expected, "resid", label=name)
        assert torch.equal(cache.accumulated_resid(layer, mlp_input=mlp_input)[-1], expected)
    own_attention = [] if name in PARALLEL else ["0_attn_out"]
    assert cache.decompose_resid(0, mlp_input=True, incl_embeds=False, return_labels=True)[1] == own_attention


def test_heads_and_neurons_are_what_the_sublayers_write(run):
    """Through a post-norm, a head's (a neuron's) entry is its result times w / scale, the norm's
    cached scale: heads and bias together make up hook_attn_out (neurons and bias, hook_mlp_out)."""
    name, model, _, cache = run
    n_heads = model.cfg.n_heads
    heads = cache.stack_head_results()
    for layer, block in enumerate(model.blocks):
        b_O = block.attn.b_O if block.attn.b_O is not None else torch.zeros(model.cfg.d_model)
        if name in POST_NORMED:
            b_O = block.ln1_post.w * b_O / cache[f"blocks.{layer}.ln1_post.hook_scale"]
        in_layer = heads[layer * n_heads : (layer + 1) * n_heads].sum(0)
        assert_close(in_layer + b_O, cache["attn_out", layer], "resid", label=f"{name} heads of {layer}")
        if name in MOE:
            continue
        b_out = block.mlp.b_out if block.mlp.b_out is not None else torch.zeros(model.cfg.d_model)
        if name in POST_NORMED:
            b_out = block.ln2_post.w * b_out / cache[f"blocks.{layer}.ln2_post.hook_scale"]
        neurons = cache.get_neuron_results(layer)
        assert_close(neurons.sum(-2) + b_out, cache["mlp_out", layer], "resid", label=f"{name} neurons of {layer}")
        one = cache.get_neuron_results(layer, neuron_slice=3, pos_slice=-1)
        assert_close(one, neurons[:, -1, 3], "resid", label=f"{name} neuron 3 of {layer} at the last position")


# ---- norms and logits --------------------------------------------------------------------------------


def test_apply_ln_reproduces_every_norm(run):
    name, model, _, cache = run
    for layer, mlp_input in streams(model):
        expected = normalized(cache, layer, mlp_input)
        stack = cache.get_full_resid_decomposition(layer, mlp_input=mlp_input, expand_neurons=False)
        scaled = cache.apply_ln_to_stack(stack, layer, mlp_input=mlp_input).sum(0)
        assert_close(scaled, expected, "resid", label=f"{name} {layer} {mlp_input}")
        resid = cache.accumulated_resid(layer, mlp_input=mlp_input, apply_ln=True)[-1]
        assert_close(resid, expected, "resid", label=f"{name} accumulated {layer} {mlp_input}")


def test_logit_attrs_add_up_to_the_logit_difference(run):
    """Exact for every final norm: apply_ln_to_stack freezes its scale at the cached one."""
    name, model, logits, cache = run
    right, wrong = 5, 7
    stack = cache.get_full_resid_decomposition(expand_neurons=name not in MOE, pos_slice=-1)
    attrs = cache.logit_attrs(stack, right, wrong, pos_slice=-1)
    W_U, b_U, b = model.W_U, model.b_U, getattr(model.ln_final, "b", None)
    constant = b_U + (b @ W_U if b is not None else 0)  # what no component of the residual carries
    expected = (logits[:, -1, right] - logits[:, -1, wrong]) - (constant[right] - constant[wrong])
    assert_close(attrs.sum(0), expected, "logits", label=name)
    assert_close(cache.logit_lens()[-1], logits, "logits", label=f"{name} logit lens")


# ---- what the analysis refuses, and why ------------------------------------------------------------------


@pytest.mark.parametrize("family", sorted(POST_NORMED))
def test_a_filtered_cache_without_the_post_norm_scale_is_named(family, tmp_path_factory):
    _, model, _, _ = load_run(family, tmp_path_factory)
    tokens = torch.randint(0, V, (1, 6))
    with torch.no_grad():
        _, cache = model.run_with_cache(tokens, names_filter=lambda hook: "_post.hook_scale" not in hook)
    with pytest.raises(ValueError, match=r"blocks\.0\.ln1_post\.hook_scale.*names_filter"):
        cache.stack_head_results()
    with pytest.raises(ValueError, match=r"blocks\.0\.ln2_post\.hook_scale.*names_filter"):
        cache.get_neuron_results(0)
    assert_close(cache.decompose_resid().sum(0), cache["resid_post", -1], "resid")  # needs no scale


@pytest.mark.parametrize("family", sorted(MOE))
def test_neurons_of_a_mixture_of_experts_are_refused(family, tmp_path_factory):
    _, _, _, cache = load_run(family, tmp_path_factory)
    for call in (lambda: cache.get_neuron_results(0), lambda: cache.stack_neuron_results(2)):
        with pytest.raises(ValueError, match="experts.*expand_neurons=False"):
            call()


@pytest.mark.parametrize("family", sorted(PARALLEL))
def test_a_parallel_block_has_no_resid_mid(family, tmp_path_factory):
    _, model, _, cache = load_run(family, tmp_path_factory)
    with pytest.raises(ValueError, match="parallel"):
        cache.accumulated_resid(incl_mid=True)
    # The MLP reads resid_pre, which holds none of the block's own b_O.
    assert torch.equal(model.accumulated_bias(1, mlp_input=True), model.accumulated_bias(1))


def test_an_experts_rows_follow_batch_slicing(tmp_path_factory):
    """An expert's activations have one row per routed token, not a batch axis: slicing the batch keeps the
    rows routed from the kept examples, and removing a batch of one leaves them whole."""
    _, model, _, _ = load_run("mixtral-top2", tmp_path_factory)
    tokens = torch.randint(0, V, (3, 6), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        _, cache = model.run_with_cache(tokens)
        _, alone = model.run_with_cache(tokens[1:2])
        _, dropped = model.run_with_cache(tokens[1:2], remove_batch_dim=True)
    sliced = cache.apply_slice_to_batch_dim(1)
    experts = [name for name in alone if ".experts." in name]
    assert experts
    for name in experts:
        assert_close(sliced[name], alone[name], "resid", label=name)
        assert torch.equal(dropped[name], alone[name])
    assert torch.equal(
        alone.remove_batch_dim()["blocks.0.mlp.experts.0.hook_post"], dropped["blocks.0.mlp.experts.0.hook_post"]
    )
