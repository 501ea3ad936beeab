"""Command R (Cohere) and Command R7B / Command A (Cohere 2) (Hugging Face `modeling_cohere.py`,
`modeling_cohere2.py`).

Cohere: attention and a SwiGLU MLP side by side, reading one LayerNorm that has no bias (loaded with a
zero bias), rotary positions on adjacent pairs (2i, 2i + 1), optional per-head LayerNorms on queries and
keys (`use_qk_norm`, Command R+), and logits multiplied by `logit_scale`, folded into W_U at load (a copy
of the tied embedding). Cohere 2: no q/k norms, and sliding-window layers that rotate between global
layers that have no positional encoding (NoPE).
"""

from __future__ import annotations

from typing import Any

from hooked.config import HookedTransformerConfig
from hooked.loading.adapter import Adapter, WeightTable, attn_type_fields, register, require, rotary_fields, sizes
from hooked.loading.families.llama import IGNORED, llama_weights
from hooked.loading.transforms import Copy, Heads, ZerosLike


def cohere_config(hf: dict[str, Any]) -> dict[str, Any]:
    fields = sizes(hf)
    bias = bool(hf.get("attention_bias", False))
    return {
        **fields,
        "act_fn": require(hf, "hidden_act", ("silu", "gelu", "gelu_pytorch_tanh", "relu")),
        "gated_mlp": True,
        "normalization_type": "LN",
        "eps": hf["layer_norm_eps"],
        **rotary_fields(hf, fields["d_head"]),
        "rotary_adjacent_pairs": True,
        "parallel_attn_mlp": True,
        "attn_qkv_bias": bias,
        "attn_out_bias": bias,
        "mlp_bias": False,
        "qk_norm": "per_head" if hf.get("use_qk_norm") else None,
        "tie_word_embeddings": bool(hf.get("tie_word_embeddings", True)),
    }


def cohere2_config(hf: dict[str, Any]) -> dict[str, Any]:
    # Without layer_types, every 4th layer is global (transformers' default sliding_window_pattern).
    pattern = hf.get("sliding_window_pattern") or 4
    default = ["sliding_attention" if (i + 1) % pattern else "full_attention" for i in range(hf["num_hidden_layers"])]
    layer_types = hf.get("layer_types") or default
    # Only sliding-window layers rotate (none do without a window).
    window = hf.get("sliding_window")
    nope = tuple(i for i, kind in enumerate(layer_types) if kind != "sliding_attention" or window is None)
    return {**cohere_config({**hf, "use_qk_norm": False}), **attn_type_fields(hf, default), "nope_layers": nope}


def cohere_weights(cfg: HookedTransformerConfig) -> WeightTable:
    # Same as llama_weights except: one norm for both sublayers, zero norm biases, per-head q/k norms.
    layer, attn = "model.layers.{i}", "model.layers.{i}.self_attn"
    table = llama_weights(cfg)
    table |= {
        "blocks.{i}.ln1.b": ZerosLike(f"{layer}.input_layernorm.weight"),
        "blocks.{i}.ln2.w": Copy(f"{layer}.input_layernorm.weight"),
        "blocks.{i}.ln2.b": ZerosLike(f"{layer}.input_layernorm.weight"),
        "ln_final.b": ZerosLike("model.norm.weight"),
    }
    if cfg.qk_norm is not None:  # [n_heads, d_head] weights, one row per head
        for head in range(cfg.n_heads):
            table[f"blocks.{{i}}.attn.q_norm.w.{head}"] = Heads(f"{attn}.q_norm.weight", "n h -> n h", head)
        for head in range(cfg.n_key_value_heads):
            table[f"blocks.{{i}}.attn.k_norm.w.{head}"] = Heads(f"{attn}.k_norm.weight", "n h -> n h", head)
    return table


def logit_scale(hf: dict[str, Any]) -> dict[str, float]:
    return {"unembed.W_U": float(hf.get("logit_scale") or 1.0)}


for architecture, model_type, config in (
    ("CohereForCausalLM", "cohere", cohere_config),
    ("Cohere2ForCausalLM", "cohere2", cohere2_config),
):
    register(
        architecture,
        Adapter(config, cohere_weights, IGNORED, model_type=model_type, prefix="model.", multipliers=logit_scale),
    )
