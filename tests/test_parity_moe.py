"""Parity with Hugging Face for the mixture-of-experts families beyond Mixtral (Qwen3-MoE, Qwen2-MoE with
its shared expert, OLMoE, Granite MoE, GPT-OSS), variant by variant, on tiny random models (d_model 64,
2 layers, 4 experts): logits, every residual and attention pattern, left padding, the KV cache, greedy
generation, the router's hook points, and the per-expert split of each MLP output summing back to it."""

from __future__ import annotations

import pytest
import torch
from conftest import assert_close, rope_kwargs, save_tiny

# The invariants every family keeps (test_parity_families.py), collected here again, where they run on this
# module's `pair`: logits / residuals / patterns, a live model, the fast path, left padding, the loss, identity
# hooks bit-identical, every hook point taking effect, cached decoding.
from test_parity_families import (  # noqa: F401
    MOE_HOOKS,
    V,
    assert_refused,
    config,
    test_a_hook_on_every_point_takes_effect,
    test_a_live_model_loads_like_its_checkpoint,
    test_cached_decoding_matches_full_forward,
    test_identity_hooks_everywhere_are_bit_identical,
    test_left_padded_batch_matches_reference,
    test_logits_residuals_and_patterns_match,
    test_loss_matches_reference,
    test_unhooked_fast_path_matches_reference,
)

from hooked import HookedTransformer

TINY = dict(
    hidden_size=64,
    intermediate_size=48,
    num_hidden_layers=2,
    num_attention_heads=4,
    vocab_size=V,
    max_position_embeddings=64,
)
ROUTER_HOOKS = [*MOE_HOOKS, "blocks.1.mlp.hook_expert_out"]
SHARED_HOOKS = [
    "blocks.0.mlp.shared_expert.hook_pre",
    "blocks.0.mlp.shared_expert.hook_post",
    "blocks.0.mlp.hook_shared_gate",
    "blocks.1.mlp.hook_shared_out",
]

# name -> (HF config factory, hook names beyond the dense families' that the variant must have)
VARIANTS = {
    "qwen3_moe-top2": (
        lambda: config(
            "Qwen3MoeConfig",
            **TINY,
            num_key_value_heads=2,
            head_dim=16,
            num_experts=4,
            num_experts_per_tok=2,
            moe_intermediate_size=32,
        ),
        [*ROUTER_HOOKS, "blocks.0.attn.q_norm.hook_scale"],
    ),
    "qwen3_moe-renormalized-sliding-tied": (
        lambda: config(
            "Qwen3MoeConfig",
            **TINY,
            num_key_value_heads=1,
            head_dim=24,
            num_experts=4,
            num_experts_per_tok=3,
            moe_intermediate_size=32,
            norm_topk_prob=True,
            use_sliding_window=True,
            sliding_window=4,
            max_window_layers=1,
            tie_word_embeddings=True,
        ),
        ROUTER_HOOKS,
    ),
    "olmoe-top2": (
        lambda: config("OlmoeConfig", **TINY, num_experts=4, num_experts_per_tok=2, pad_token_id=0, eos_token_id=1),
        [*ROUTER_HOOKS, "blocks.0.attn.k_norm.hook_normalized"],
    ),
    "olmoe-renormalized-gqa-bias": (
        lambda: config(
            "OlmoeConfig",
            **TINY,
            num_key_value_heads=2,
            num_experts=4,
            num_experts_per_tok=2,
            norm_topk_prob=True,
            attention_bias=True,
            pad_token_id=0,
            eos_token_id=1,
        ),
        ROUTER_HOOKS,
    ),
    "qwen2_moe-shared": (
        lambda: config(
            "Qwen2MoeConfig",
            **TINY,
            num_key_value_heads=2,
            num_experts=4,
            num_experts_per_tok=2,
            moe_intermediate_size=32,
            shared_expert_intermediate_size=40,
        ),
        [*ROUTER_HOOKS, *SHARED_HOOKS],
    ),
    "qwen2_moe-renormalized-nobias-top1": (
        lambda: config(
            "Qwen2MoeConfig",
            **TINY,
            num_key_value_heads=4,
            num_experts=4,
            num_experts_per_tok=1,
            moe_intermediate_size=32,
            shared_expert_intermediate_size=24,
            norm_topk_prob=True,
            qkv_bias=False,
            tie_word_embeddings=True,
        ),
        SHARED_HOOKS,
    ),
    "granitemoe-multipliers-tied": (
        lambda: config(
            "GraniteMoeConfig",
            **TINY,
            num_key_value_heads=2,
            num_local_experts=4,
            num_experts_per_tok=2,
            embedding_multiplier=3.0,
            attention_multiplier=0.3,
            residual_multiplier=0.4,
            logits_scaling=2.5,
            tie_word_embeddings=True,
        ),
        ROUTER_HOOKS,
    ),
    "granitemoe-top1-untied-bias": (
        lambda: config(
            "GraniteMoeConfig",
            **TINY,
            num_key_value_heads=4,
            num_local_experts=4,
            num_experts_per_tok=1,
            residual_multiplier=0.5,
            attention_bias=True,
            tie_word_embeddings=False,
        ),
        MOE_HOOKS[:3],
    ),
    "gpt_oss-sinks-sliding-clamped": (
        # A limit small enough to clamp many of the tiny model's gate and linear branches.
        lambda: config(
            "GptOssConfig",
            **TINY,
            num_key_value_heads=2,
            head_dim=16,
            num_local_experts=4,
            num_experts_per_tok=2,
            sliding_window=4,
            layer_types=["sliding_attention", "full_attention"],
            swiglu_limit=0.1,  # rotary: GptOssConfig's own default, the released checkpoints' yarn (factor 32)
        ),
        [*ROUTER_HOOKS, "blocks.0.attn.hook_pattern"],
    ),
    "gpt_oss-full-mqa-top1": (
        lambda: config(
            "GptOssConfig",
            **TINY,
            num_key_value_heads=1,
            head_dim=16,
            num_local_experts=4,
            num_experts_per_tok=1,
            sliding_window=4,
            layer_types=["full_attention", "full_attention"],
            tie_word_embeddings=True,
            **rope_kwargs(500.0),
        ),
        MOE_HOOKS,
    ),
}


@pytest.fixture(scope="module", params=sorted(VARIANTS))
def pair(request, tmp_path_factory):
    folder = tmp_path_factory.mktemp(request.param)
    hf = save_tiny(VARIANTS[request.param][0](), folder)
    return request.param, hf, HookedTransformer.from_pretrained(folder)


def test_family_hook_points_exist(pair):
    name, _, model = pair
    missing = [hook for hook in VARIANTS[name][1] if hook not in model.hook_dict]
    assert not missing, f"{name} lacks hook points {missing}"


def test_router_hooks_are_the_references_routing(pair):
    """hook_router_logits is what Hugging Face's router returns (`output_router_logits`), and the chosen
    experts and their weights are its top-k, renormalized where the config says so."""
    name, hf, model = pair
    tokens = torch.randint(0, V, (2, 7))
    with torch.no_grad():
        ref = hf(tokens, output_router_logits=True)
        _, cache = model.run_with_cache(tokens)
    for layer in range(model.cfg.n_layers):
        logits = cache[f"blocks.{layer}.mlp.hook_router_logits"]
        assert_close(logits.flatten(0, 1), ref.router_logits[layer], "resid", label=f"{name} router logits {layer}")
        probs = logits.float().softmax(-1)
        chosen = cache[f"blocks.{layer}.mlp.hook_expert_indices"]
        weights = probs.gather(-1, chosen)
        if model.cfg.norm_topk_prob:
            weights = weights / weights.sum(-1, keepdim=True)
        assert torch.equal(chosen, probs.topk(model.cfg.experts_per_token, dim=-1).indices)
        assert_close(cache[f"blocks.{layer}.mlp.hook_expert_weights"], weights, "resid", label=f"{name} weights")


def test_greedy_generation_equals_transformers(pair):
    _, hf, model = pair
    hf.generation_config.eos_token_id = None  # run the full length on both sides
    hf.generation_config.pad_token_id = 0
    prompt = torch.randint(0, V, (2, 5))
    expected = hf.generate(prompt, attention_mask=torch.ones_like(prompt), max_new_tokens=12, do_sample=False)
    got = model.generate(prompt, max_new_tokens=12, do_sample=False, stop_at_eos=False, verbose=False)
    assert torch.equal(got, expected)


def test_expert_outputs_sum_to_the_mlp_output(pair):
    """Each chosen expert's weighted output (hook_expert_out), summed over the slots, plus the gated shared
    expert, is the block's MLP output; the per-expert stack splits it by expert and sums back to it."""
    name, _, model = pair
    tokens = torch.randint(0, V, (2, 8))
    with torch.no_grad():
        _, cache = model.run_with_cache(tokens)
    for layer in range(model.cfg.n_layers):
        total = cache[f"blocks.{layer}.mlp.hook_expert_out"].sum(2)
        if model.cfg.d_mlp_shared:
            total = total + cache[f"blocks.{layer}.mlp.hook_shared_out"]
        assert_close(total, cache["mlp_out", layer], "resid", label=f"{name} experts of layer {layer}")
    stack, labels = cache.stack_expert_results(return_labels=True)
    n_experts, shared = model.cfg.num_experts, int(bool(model.cfg.d_mlp_shared))
    assert len(labels) == stack.shape[0] == model.cfg.n_layers * (n_experts + shared)
    assert labels[:2] == ["L0E0", "L0E1"] and (not shared or labels[n_experts] == "L0shared")
    per_layer = stack.unflatten(0, (model.cfg.n_layers, -1))
    for layer in range(model.cfg.n_layers):
        assert_close(per_layer[layer].sum(0), cache["mlp_out", layer], "resid", label=f"{name} stack {layer}")
        # An expert no token chose writes nothing; one that was chosen writes at those tokens only.
        chosen = cache[f"blocks.{layer}.mlp.hook_expert_indices"]
        for e in range(n_experts):
            routed_here = (chosen == e).any(-1)
            assert torch.equal(per_layer[layer, e].abs().sum(-1) > 0, routed_here), f"{name} L{layer}E{e}"


def test_an_edit_of_one_experts_output_moves_the_mlp_output_by_it(pair):
    name, _, model = pair
    tokens = torch.randint(0, V, (1, 6))
    with torch.no_grad():
        _, clean = model.run_with_cache(tokens, names_filter=lambda n: n.endswith(("hook_mlp_out", "hook_expert_out")))

        def drop_first_slot(out, hook):
            out[:, :, 0] = 0.0

        with model.hooks(fwd_hooks=[("blocks.0.mlp.hook_expert_out", drop_first_slot)]):
            _, edited = model.run_with_cache(tokens, names_filter="blocks.0.hook_mlp_out")
    expected = clean["blocks.0.hook_mlp_out"] - clean["blocks.0.mlp.hook_expert_out"][:, :, 0]
    assert_close(edited["blocks.0.hook_mlp_out"], expected, "resid", label=name)


REFUSED = {
    "Qwen3-MoE dense layers": ("Qwen3MoeConfig", "Qwen3MoeForCausalLM", dict(mlp_only_layers=[1]), "mlp_only_layers"),
    "Qwen2-MoE sparse step": ("Qwen2MoeConfig", "Qwen2MoeForCausalLM", dict(decoder_sparse_step=2), "sparse_step"),
    "OLMoE clip after the norms": ("OlmoeConfig", "OlmoeForCausalLM", dict(clip_qkv=0.5), "clip_qkv"),
    "GPT-OSS another alpha": ("GptOssConfig", "GptOssForCausalLM", dict(swiglu_alpha=1.0), "swiglu_alpha"),
    "GPT-OSS MXFP4": (
        "GptOssConfig",
        "GptOssForCausalLM",
        dict(quantization_config={"quant_method": "mxfp4"}),
        "quantized \\(mxfp4\\).*dequantize",
    ),
}


@pytest.mark.parametrize("case", sorted(REFUSED))
def test_config_fields_that_change_numbers_are_refused(case):
    assert_refused(*REFUSED[case])


@pytest.mark.parametrize(
    ("name", "architecture", "reason"),
    [
        ("DeepseekV2Config", "DeepseekV2ForCausalLM", "multi-head latent attention"),
        ("DeepseekV3Config", "DeepseekV3ForCausalLM", "multi-head latent attention"),
        ("Llama4TextConfig", "Llama4ForCausalLM", "chunked local attention"),
    ],
)
def test_families_the_block_cannot_express_are_refused_with_the_reason(name, architecture, reason):
    from hooked.loading.convert import UnsupportedArchitectureError, model_config

    hf = config(name, architectures=[architecture]).to_dict()
    with pytest.raises(UnsupportedArchitectureError, match=f"{architecture} is not supported yet: it has {reason}"):
        model_config(hf)


def test_expert_stack_slices_positions_and_scales_like_the_other_stacks(pair):
    name, _, model = pair
    tokens = torch.randint(0, V, (2, 7))
    with torch.no_grad():
        _, cache = model.run_with_cache(tokens)
    stack = cache.stack_expert_results(layer=1)
    assert_close(stack.sum(0), cache["mlp_out", 0], "resid", label=name)
    last = cache.stack_expert_results(pos_slice=-1)
    assert torch.equal(last, cache.stack_expert_results()[:, :, -1])
    scaled = cache.stack_expert_results(pos_slice=(2, 5), apply_ln=True)
    expected = cache.apply_ln_to_stack(cache.stack_expert_results(pos_slice=(2, 5)), pos_slice=(2, 5))
    assert torch.equal(scaled, expected)
    _, filtered = model.run_with_cache(tokens, names_filter=lambda n: "hook_expert_out" not in n)
    with pytest.raises(ValueError, match=r"blocks\.0\.mlp\.hook_expert_out.*names_filter"):
        filtered.stack_expert_results()


def test_the_residual_decomposition_sums_back_with_experts_in_place_of_mlp_outputs(pair):
    """get_full_resid_decomposition keeps each MLP output whole (a mixture of experts has no per-block neurons);
    its stack sums to every residual stream, and so does it with each MLP output replaced by its experts."""
    name, _, model = pair
    tokens = torch.randint(0, V, (2, 7))
    with torch.no_grad():
        _, cache = model.run_with_cache(tokens)
    n_layers = model.cfg.n_layers
    for layer in range(n_layers + 1):
        stack, labels = cache.get_full_resid_decomposition(layer, expand_neurons=False, return_labels=True)
        resid = cache["resid_post", n_layers - 1] if layer == n_layers else cache["resid_pre", layer]
        assert_close(stack.sum(0), resid, "resid", label=f"{name} stream {layer}")
        kept = [i for i, label in enumerate(labels) if not label.endswith("_mlp_out")]
        experts = cache.stack_expert_results(layer)
        assert_close(stack[kept].sum(0) + experts.sum(0), resid, "resid", label=f"{name} experts, stream {layer}")


def test_accumulated_bias_of_experts(pair):
    """Experts without biases write no MLP bias, so the sum is the attention biases'; experts with biases
    write theirs weighted by the router, which no per-layer vector is: refused, naming the way out."""
    name, _, model = pair
    b_O = [block.attn.b_O for block in model.blocks if block.attn.b_O is not None]
    attention = torch.stack(b_O).sum(0) if b_O else torch.zeros(model.cfg.d_model)
    assert torch.equal(model.accumulated_bias(2, include_mlp_biases=False), attention)
    if model.cfg.mlp_bias:
        with pytest.raises(ValueError, match="include_mlp_biases=False"):
            model.accumulated_bias(2)
    else:
        assert torch.equal(model.accumulated_bias(2), attention)


def test_the_hook_names_of_a_mixture_of_experts_layer(tmp_path):
    """The contract, written out (hooked/components/moe.py's docstring): a Qwen2-MoE layer with 2 experts."""
    two = dict(num_experts=2, num_experts_per_tok=1, moe_intermediate_size=32, shared_expert_intermediate_size=40)
    save_tiny(config("Qwen2MoeConfig", **TINY, num_key_value_heads=2, **two), tmp_path)
    model = HookedTransformer.from_pretrained(tmp_path)
    expert = ["hook_pre", "hook_pre_linear", "hook_post"]
    expected = [
        "hook_router_logits",
        "hook_expert_weights",
        "hook_expert_indices",
        *[f"experts.{e}.{hook}" for e in range(2) for hook in expert],
        "hook_expert_out",
        *[f"shared_expert.{hook}" for hook in expert],
        "hook_shared_gate",
        "hook_shared_out",
    ]
    names = [name.removeprefix("blocks.0.mlp.") for name in model.hook_dict if name.startswith("blocks.0.mlp.")]
    assert names == expected


def test_an_experts_output_gets_the_mlp_outputs_gradient(pair):
    """hook_expert_out's terms sum to the MLP output, so each slot's gradient is the MLP output's."""
    name, _, model = pair
    tokens = torch.randint(0, V, (1, 6))
    _, cache = model.run_with_cache(
        tokens, return_type="loss", incl_bwd=True, names_filter=lambda n: n.startswith("blocks.1.")
    )
    slots = cache["blocks.1.mlp.hook_expert_out_grad"]
    expected = cache["blocks.1.hook_mlp_out_grad"][:, :, None].expand_as(slots)
    assert_close(slots, expected, "resid", label=name)
    assert slots.abs().sum() > 0
