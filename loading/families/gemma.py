"""Gemma, Gemma 2 and Gemma 3 (Hugging Face `modeling_gemma.py`, `modeling_gemma2.py`, `modeling_gemma3.py`).

All three: Llama-like blocks with GeGLU MLPs, token embeddings scaled by sqrt(d_model), and RMSNorms
that multiply by (1 + w), loaded here as plain RMSNorm weights w + 1 (`PlusOne`; in half precision this
rounds 1 + w to the weights' dtype, where the reference keeps it in float32). Gemma 2 adds a norm after
each sublayer, soft-capped attention scores and logits, scores scaled by query_pre_attn_scalar, and
alternating sliding-window layers. Gemma 3 adds query/key norms and a separate rotary base for its
sliding-window layers (and, like the reference, ignores attn_logit_softcapping).
"""

from __future__ import annotations

import math
from typing import Any

from hooked.config import HookedTransformerConfig
from hooked.loading.adapter import (
    Adapter,
    WeightTable,
    attn_type_fields,
    register,
    require,
    rope_parameters,
    rotary_fields,
    sizes,
)
from hooked.loading.families.llama import IGNORED, llama_weights
from hooked.loading.transforms import Copy, PlusOne

ACTS = ("gelu_pytorch_tanh", "gelu", "gelu_new", "silu", "relu")


def gemma_config(hf: dict[str, Any]) -> dict[str, Any]:
    require(hf, "use_bidirectional_attention", (None, False))
    fields = sizes(hf)
    d_head = fields["d_head"]
    act = "hidden_activation" if hf.get("hidden_activation") else "hidden_act"
    bias = bool(hf.get("attention_bias", False))
    return {
        **fields,
        "act_fn": require(hf, act, ACTS),
        "gated_mlp": True,
        "normalization_type": "RMS",
        "eps": hf["rms_norm_eps"],
        **rotary_fields(hf, d_head),
        "attn_qkv_bias": bias,
        "attn_out_bias": bias,
        "mlp_bias": False,
        "embed_scale": math.sqrt(hf["hidden_size"]),
        "tie_word_embeddings": bool(hf.get("tie_word_embeddings", True)),
    }


def gemma2_config(hf: dict[str, Any], default_layer_types: list[str] | None = None) -> dict[str, Any]:
    # Without layer_types, transformers makes Gemma 2's even layers (0, 2, ...) sliding-window ones.
    alternate = ["full_attention" if i % 2 else "sliding_attention" for i in range(hf["num_hidden_layers"])]
    return {
        **gemma_config(hf),
        **attn_type_fields(hf, default_layer_types or alternate),
        "block_norms": "pre_and_post",
        "attn_scale": math.sqrt(hf["query_pre_attn_scalar"]),
        "attn_scores_soft_cap": float(hf.get("attn_logit_softcapping") or 0.0),
        "output_logits_soft_cap": float(hf.get("final_logit_softcapping") or 0.0),
    }


def gemma3_config(hf: dict[str, Any]) -> dict[str, Any]:
    # Transformers 5 nests rope_parameters by layer type: full_attention (global) and sliding_attention
    # (local). Transformers 4 kept the global setting in rope_theta / rope_scaling and only the local base,
    # rope_local_base_freq (local layers never scale).
    rope = hf.get("rope_parameters") or {}
    full = rope_parameters(hf, rope.get("full_attention"), rope_theta=1000000.0)
    local = rope_parameters(
        hf, rope.get("sliding_attention"), {"rope_theta": "rope_local_base_freq"}, None, rope_theta=10000.0
    )
    require({**hf, "local rope_type": local["rope_type"]}, "local rope_type", ("default",))
    flat = {**hf, "rope_parameters": full}  # full already agrees with rope_theta / rope_scaling
    # Without layer_types, every sliding_window_pattern-th layer is global (transformers' default: 6).
    pattern = hf.get("sliding_window_pattern") or 6
    every_nth = ["sliding_attention" if (i + 1) % pattern else "full_attention" for i in range(hf["num_hidden_layers"])]
    return {
        **gemma2_config(flat, every_nth),
        "qk_norm": "shared",
        "rotary_base_local": float(local["rope_theta"]),
        # The reference never applies attn_logit_softcapping to Gemma 3 (its attention does not pass it on;
        # released checkpoints set it to null), so neither do we.
        "attn_scores_soft_cap": 0.0,
    }


def gemma_weights(cfg: HookedTransformerConfig) -> WeightTable:
    # Same as llama_weights except: Gemma 2/3's extra norms, q/k norms (Gemma 3), and every norm
    # weight loaded as w + 1, since Gemma's RMSNorm multiplies by (1 + w).
    layer, attn = "model.layers.{i}", "model.layers.{i}.self_attn"
    table = llama_weights(cfg)
    if cfg.block_norms == "pre_and_post":  # Gemma 2 and 3
        table["blocks.{i}.ln1_post.w"] = Copy(f"{layer}.post_attention_layernorm.weight")
        table["blocks.{i}.ln2.w"] = Copy(f"{layer}.pre_feedforward_layernorm.weight")
        table["blocks.{i}.ln2_post.w"] = Copy(f"{layer}.post_feedforward_layernorm.weight")
    if cfg.qk_norm is not None:  # Gemma 3
        table["blocks.{i}.attn.q_norm.w"] = Copy(f"{attn}.q_norm.weight")
        table["blocks.{i}.attn.k_norm.w"] = Copy(f"{attn}.k_norm.weight")
    return {name: PlusOne(t.key) if name.endswith(".w") else t for name, t in table.items()}


register("GemmaForCausalLM", Adapter(gemma_config, gemma_weights, IGNORED, model_type="gemma", prefix="model."))
register("Gemma2ForCausalLM", Adapter(gemma2_config, gemma_weights, IGNORED, model_type="gemma2", prefix="model."))
register("Gemma3ForCausalLM", Adapter(gemma3_config, gemma_weights, IGNORED, model_type="gemma3_text", prefix="model."))
