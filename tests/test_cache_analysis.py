"""Residual-stream analysis on the cache (hooked/cache_analysis.py), checked by invariants only:
decompositions sum to the residual they decompose, norm scaling reproduces the norm, logit
attributions sum to the logits, the logit lens ends at the logits."""

from __future__ import annotations

import pytest
import torch
from conftest import assert_close
from test_weights import GPT2_LIKE, LLAMA_LIKE, make_model

N_LAYERS = GPT2_LIKE.n_layers


@pytest.fixture(params=["gpt2", "llama"])
def model(request):
    return make_model(GPT2_LIKE if request.param == "gpt2" else LLAMA_LIKE)


@pytest.fixture
def tokens():
    return torch.randint(0, 128, (2, 7))


@pytest.fixture
def run(model, tokens):
    logits, cache = model.run_with_cache(tokens)
    return model, logits, cache


def residual(cache, layer, mlp_input=False):
    """The residual stream `layer` (0..n_layers) straight from the cache."""
    if layer == N_LAYERS:
        return cache["resid_post", N_LAYERS - 1]
    return cache["resid_mid" if mlp_input else "resid_pre", layer]


def norm_output(norm, normalized):
    """What a norm outputs, from its cached pre-weight `hook_normalized`."""
    out = normalized * norm.w
    return out + norm.b if getattr(norm, "b", None) is not None else out


STREAMS = [(layer, False) for layer in range(N_LAYERS + 1)] + [(layer, True) for layer in range(N_LAYERS)]


# ---- residual streams -------------------------------------------------------------------------


def test_accumulated_resid_lists_the_cached_streams(run):
    _, _, cache = run
    stack, labels = cache.accumulated_resid(return_labels=True)
    assert labels == ["0_pre", "1_pre", "2_pre", "final_post"]
    for entry, layer in zip(stack, range(N_LAYERS + 1), strict=True):
        assert torch.equal(entry, residual(cache, layer))
    for same in (-1, N_LAYERS):
        assert torch.equal(cache.accumulated_resid(layer=same), stack)
    mid, labels = cache.accumulated_resid(layer=1, incl_mid=True, mlp_input=True, return_labels=True)
    assert labels == ["0_pre", "0_mid", "1_pre", "1_mid"]
    assert torch.equal(mid[-1], cache["resid_mid", 1]) and torch.equal(mid[1], cache["resid_mid", 0])
    last = cache.accumulated_resid(pos_slice=-1)
    assert torch.equal(last, stack[:, :, -1])


def test_accumulated_resid_apply_ln_normalizes_each_stream_itself(run):
    model, _, cache = run
    for layer in range(N_LAYERS):
        ln1 = cache.accumulated_resid(layer=layer, apply_ln=True)[-1]
        assert_close(ln1, cache["normalized", layer, "ln1"], "resid", label=f"ln1 {layer}")
        ln2 = cache.accumulated_resid(layer=layer, mlp_input=True, apply_ln=True)[-1]
        assert_close(ln2, cache["normalized", layer, "ln2"], "resid", label=f"ln2 {layer}")
    final = cache.accumulated_resid(apply_ln=True)
    assert_close(final[-1], cache["ln_final.hook_normalized"], "resid")
    # An early stream is normalized by its own statistics: what ln_final itself makes of it.
    norm = model.ln_final
    by_the_module = model.ln_final(cache["resid_pre", 1]) - (norm.b if getattr(norm, "b", None) is not None else 0)
    assert_close(final[1] * norm.w, by_the_module, "resid")


@pytest.mark.parametrize("layer, mlp_input", STREAMS)
def test_decompose_resid_sums_to_the_residual(run, layer, mlp_input):
    _, _, cache = run
    stack, labels = cache.decompose_resid(layer=layer, mlp_input=mlp_input, return_labels=True)
    assert len(labels) == stack.shape[0] and labels[0] == "embed"
    assert_close(stack.sum(0), residual(cache, layer, mlp_input), "resid", label=f"{layer} {mlp_input}")
    attn = cache.decompose_resid(layer=layer, mlp_input=mlp_input, mode="attn", incl_embeds=False)
    mlp = cache.decompose_resid(layer=layer, mlp_input=mlp_input, mode="mlp", incl_embeds=False)
    n_embeds = 2 if "pos_embed" in labels else 1
    assert attn.shape[0] + mlp.shape[0] + n_embeds == stack.shape[0]
    assert_close(attn.sum(0) + mlp.sum(0) + stack[:n_embeds].sum(0), residual(cache, layer, mlp_input), "resid")


def test_decompose_resid_labels(run):
    model, _, cache = run
    _, labels = cache.decompose_resid(layer=1, mlp_input=True, return_labels=True)
    embeds = ["embed", "pos_embed"] if model.cfg.positional_embedding_type == "standard" else ["embed"]
    assert labels == embeds + ["0_attn_out", "0_mlp_out", "1_attn_out"]
    empty = cache.decompose_resid(layer=0, incl_embeds=False)
    assert empty.shape == (0, 2, 7, 32)


# ---- heads and neurons ------------------------------------------------------------------------


@pytest.mark.parametrize("layer", range(N_LAYERS + 1))
def test_stack_head_results_with_remainder_sums_to_the_residual(run, layer):
    _, _, cache = run
    stack, labels = cache.stack_head_results(layer=layer, incl_remainder=True, return_labels=True)
    assert stack.shape[0] == layer * 4 + 1 and labels[-1] == "remainder"
    assert_close(stack.sum(0), residual(cache, layer), "resid")


def test_heads_sum_to_attn_out_minus_bias(run):
    model, _, cache = run
    heads, labels = cache.stack_head_results(return_labels=True)
    assert labels == model.all_head_labels()
    for layer in range(N_LAYERS):
        in_layer = heads[layer * 4 : (layer + 1) * 4].sum(0)
        assert_close(in_layer, cache["attn_out", layer] - model.b_O[layer], "resid", label=f"layer {layer}")


def test_head_results_without_cached_result(model, tokens):
    """Computed from hook_z and W_O when hook_result was filtered out: the same as the cached one."""
    _, full = model.run_with_cache(tokens)
    _, cache = model.run_with_cache(tokens, names_filter=lambda name: not name.endswith("hook_result"))
    assert "blocks.0.attn.hook_result" not in cache
    assert_close(cache.stack_head_results(pos_slice=-1), full.stack_head_results(pos_slice=-1), "resid")
    cache.compute_head_results()
    for layer in range(N_LAYERS):
        assert_close(cache["result", layer], full["result", layer], "resid")


def test_neurons_sum_to_mlp_out_minus_bias(run):
    model, _, cache = run
    for layer in range(N_LAYERS):
        neurons = cache.get_neuron_results(layer)
        assert neurons.shape == (2, 7, 48, 32)
        assert_close(neurons.sum(-2), cache["mlp_out", layer] - model.b_out[layer], "resid", label=f"{layer}")
    some = cache.get_neuron_results(1, neuron_slice=[3, 5], pos_slice=-1)
    assert_close(some, cache.get_neuron_results(1)[:, -1, [3, 5]], "resid")


@pytest.mark.parametrize("layer", range(N_LAYERS + 1))
def test_stack_neuron_results_with_remainder_sums_to_the_residual(run, layer):
    _, _, cache = run
    stack, labels = cache.stack_neuron_results(layer, incl_remainder=True, return_labels=True)
    assert stack.shape[0] == layer * 48 + 1 == len(labels)
    assert_close(stack.sum(0), residual(cache, layer), "resid")


def test_stack_neuron_results_slice_and_labels(run):
    _, _, cache = run
    stack, labels = cache.stack_neuron_results(2, neuron_slice=(0, 2), return_labels=True)
    assert labels == ["L0N0", "L0N1", "L1N0", "L1N1"]
    assert_close(stack[3], cache.get_neuron_results(1)[..., 1, :], "resid")
    _, labels = cache.stack_neuron_results(1, neuron_slice=-1, return_labels=True)
    assert labels == ["L0N47"]


def test_stack_activation(run):
    _, _, cache = run
    patterns = cache.stack_activation("pattern")
    assert patterns.shape == (N_LAYERS, 2, 4, 7, 7)
    assert torch.equal(patterns[1], cache["pattern", 1])
    assert cache.stack_activation("scale", layer=2, sublayer_type="ln2").shape == (2, 2, 7, 1)


# ---- the full decomposition -------------------------------------------------------------------


@pytest.mark.parametrize("expand_neurons", [True, False])
@pytest.mark.parametrize("layer, mlp_input", STREAMS)
def test_full_decomposition_sums_to_the_residual(run, layer, mlp_input, expand_neurons):
    _, _, cache = run
    stack, labels = cache.get_full_resid_decomposition(
        layer, mlp_input=mlp_input, expand_neurons=expand_neurons, return_labels=True
    )
    assert len(labels) == stack.shape[0] == len(set(labels))
    n_heads = (layer + mlp_input) * 4
    n_mlp = layer * (48 if expand_neurons else 1)
    assert labels[n_heads + n_mlp] == "embed" and labels[-1] == "bias"
    assert_close(stack.sum(0), residual(cache, layer, mlp_input), "resid")


def test_full_decomposition_pos_slice(run):
    _, _, cache = run
    stack = cache.get_full_resid_decomposition(pos_slice=(2, 5))
    assert stack.shape[1:] == (2, 3, 32)
    assert_close(stack.sum(0), residual(cache, N_LAYERS)[:, 2:5], "resid")


# ---- norms and logits ---------------------------------------------------------------------------


@pytest.mark.parametrize("layer, mlp_input", STREAMS)
def test_apply_ln_to_stack_reproduces_the_norm(run, layer, mlp_input):
    model, _, cache = run
    stack = cache.get_full_resid_decomposition(layer, mlp_input=mlp_input)
    scaled = cache.apply_ln_to_stack(stack, layer, mlp_input=mlp_input).sum(0)
    if layer == N_LAYERS:
        assert_close(norm_output(model.ln_final, scaled), cache["unembed.hook_in"], "resid")
    else:
        norm = "ln2" if mlp_input else "ln1"
        assert_close(scaled, cache["normalized", layer, norm], "resid", label=f"{layer} {norm}")


def test_apply_ln_to_stack_with_pos_slice(run):
    _, _, cache = run
    for pos_slice, index in [(-1, -1), ((1, 4), slice(1, 4)), ([0, 6], [0, 6])]:
        stack = cache.decompose_resid(pos_slice=pos_slice, apply_ln=True)
        assert_close(stack.sum(0), cache["ln_final.hook_normalized"][:, index], "resid", label=str(pos_slice))


def test_apply_ln_to_stack_needs_the_scale(model, tokens):
    _, cache = model.run_with_cache(tokens, names_filter=lambda name: not name.endswith("hook_scale"))
    stack = cache.decompose_resid()
    with pytest.raises(ValueError, match=r"ln_final\.hook_scale.*names_filter"):
        cache.apply_ln_to_stack(stack)
    with pytest.raises(ValueError, match=r"blocks\.1\.ln2\.hook_scale"):
        cache.apply_ln_to_stack(cache.decompose_resid(1, mlp_input=True), 1, mlp_input=True)


def test_layer_arguments_are_checked(run):
    _, _, cache = run
    with pytest.raises(ValueError, match="mlp_input"):
        cache.decompose_resid(layer=None, mlp_input=True)
    with pytest.raises(ValueError, match="layer must be in"):
        cache.stack_head_results(layer=N_LAYERS + 1)


def _unattributed(model, tokens):
    """What no residual component carries: b_U and ln_final's bias pushed through W_U."""
    constant = model.b_U
    if getattr(model.ln_final, "b", None) is not None:
        constant = constant + model.ln_final.b @ model.W_U
    return constant[tokens]


def test_logit_attrs_sum_to_the_logits(run, tokens):
    model, logits, cache = run
    stack = cache.get_full_resid_decomposition(expand_neurons=False)
    answers = torch.randint(0, 128, (2, 7))
    wrong = torch.randint(0, 128, (2, 7))
    attrs = cache.logit_attrs(stack, answers)
    assert attrs.shape == stack.shape[:-1]
    expected = logits.gather(-1, answers[..., None])[..., 0] - _unattributed(model, answers)
    assert_close(attrs.sum(0), expected, "logits")

    diff = cache.logit_attrs(stack, answers, incorrect_tokens=wrong).sum(0)
    expected_diff = expected - (logits.gather(-1, wrong[..., None])[..., 0] - _unattributed(model, wrong))
    assert_close(diff, expected_diff, "logits")


def test_logit_attrs_token_forms(run):
    model, logits, cache = run
    last = cache.get_full_resid_decomposition(pos_slice=-1)  # [component, batch, d_model]
    for token in (5, " cat"):
        t = model.to_single_token(token) if isinstance(token, str) else token
        attrs = cache.logit_attrs(last, token, pos_slice=-1)
        assert attrs.shape == last.shape[:-1]
        assert_close(attrs.sum(0), logits[:, -1, t] - _unattributed(model, t), "logits", label=repr(token))
    per_example = torch.tensor([3, 9])  # one answer per prompt, broadcast over positions
    attrs = cache.logit_attrs(cache.decompose_resid(), per_example).sum(0)
    assert attrs.shape == (2, 7)
    expected = logits[torch.arange(2), :, per_example] - _unattributed(model, per_example)[:, None]
    assert_close(attrs, expected, "logits")
    with pytest.raises(ValueError, match="same shape"):
        cache.logit_attrs(last, per_example, incorrect_tokens=4, pos_slice=-1)


def test_logit_lens(run):
    model, logits, cache = run
    lens, labels = cache.logit_lens(return_labels=True)
    assert labels == ["0_pre", "1_pre", "2_pre", "final_post"] and lens.shape == (4, 2, 7, 128)
    assert_close(lens[-1], logits, "logits")
    # Each stream goes through the model's own final norm and unembedding, with its own statistics.
    for layer in range(N_LAYERS):
        expected = model.unembed(model.ln_final(cache["resid_pre", layer]))
        assert_close(lens[layer], expected, "logits", label=f"layer {layer}")
    assert_close(cache.logit_lens(pos_slice=-1), lens[:, :, -1], "logits")


def test_without_batch_dim(model, tokens):
    logits, cache = model.run_with_cache(tokens[:1], remove_batch_dim=True)
    stack = cache.get_full_resid_decomposition(pos_slice=-1)
    assert stack.shape[1:] == (32,)
    assert_close(stack.sum(0), cache["resid_post", -1][-1], "resid")
    attrs = cache.logit_attrs(stack, 5, pos_slice=-1).sum(0)
    assert_close(attrs, logits[0, -1, 5] - _unattributed(model, 5), "logits")
    assert_close(cache.logit_lens()[-1], logits[0], "logits")


def test_cache_cut_to_one_position(model, tokens):
    logits, cache = model.run_with_cache(tokens, pos_slice=-1)
    stack = cache.get_full_resid_decomposition()
    assert stack.shape[1:] == (2, 32)
    assert_close(stack.sum(0), cache["resid_post", -1], "resid")
    attrs = cache.logit_attrs(stack, torch.tensor([3, 9])).sum(0)
    assert_close(attrs, logits[[0, 1], -1, [3, 9]] - _unattributed(model, torch.tensor([3, 9])), "logits")
