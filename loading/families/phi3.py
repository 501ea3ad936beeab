"""Phi-3 (Hugging Face `modeling_phi3.py`): Llama with fused projections, q/k/v in one matrix
(all query heads, then the key heads, then the value heads) and gate/up in another (gate first);
optional partial rotary, a sliding window on every layer, and LongRoPE (the 128k-context models)."""

from __future__ import annotations

import math
from typing import Any

from hooked.config import HookedTransformerConfig, RopeScaling
from hooked.loading.adapter import Adapter, UnsupportedConfigError, WeightTable, register
from hooked.loading.families.llama import IGNORED, llama_config
from hooked.loading.transforms import Copy, Heads, Split, Transpose

QKV = ("n_heads*d_head", "n_key_value_heads*d_head", "n_key_value_heads*d_head")
GATE_UP = ("d_mlp", "d_mlp")


# Phi-3 accepts only LongRoPE; "su" and "yarn" are older names transformers reads as it.
ROPE_TYPES = ("default", "longrope", "su", "yarn")


def phi3_config(hf: dict[str, Any]) -> dict[str, Any]:
    # Phi-3 has no projection biases, whatever the config says about Llama's fields.
    fields = llama_config(hf, rope_types=ROPE_TYPES, scaling=longrope)
    fields = {**fields, "attn_qkv_bias": False, "attn_out_bias": False, "mlp_bias": False}
    return {**fields, "sliding_window": hf.get("sliding_window")}


def longrope(hf: dict[str, Any], params: dict[str, Any]) -> RopeScaling:
    """Phi-3's LongRoPE: short_factor up to the original context, long_factor beyond it, and cos/sin scaled
    by sqrt(1 + ln(factor) / ln(original)). Both transformers 4.57 and 5 take the original context from the
    top-level original_max_position_embeddings (Phi3Config's default 4096), whatever the scaling dict says;
    4.57 always derives the factor as max_position_embeddings / original, 5 only where the dict has none,
    so a factor that disagrees is refused."""
    original = int(hf.get("original_max_position_embeddings") or 4096)
    factor = hf["max_position_embeddings"] / original
    if params.get("factor") is not None and float(params["factor"]) != factor:
        raise UnsupportedConfigError(
            f"Phi3ForCausalLM: longrope factor={params['factor']} differs from max_position_embeddings / "
            f"original_max_position_embeddings = {factor}, which transformers 4.57 uses instead (5 uses the "
            "factor), so the numbers depend on the version; remove the factor or make them agree."
        )
    attention = params.get("attention_factor")
    if attention is None:
        attention = 1.0 if factor <= 1.0 else math.sqrt(1 + math.log(factor) / math.log(original))
    return RopeScaling(
        "longrope",
        factor,
        original_max_position_embeddings=original,
        attention_factor=float(attention),
        short_factor=tuple(params["short_factor"]),
        long_factor=tuple(params["long_factor"]),
    )


def phi3_weights(cfg: HookedTransformerConfig) -> WeightTable:
    layer, attn, mlp = "model.layers.{i}", "model.layers.{i}.self_attn", "model.layers.{i}.mlp"
    qkv, gate_up = f"{attn}.qkv_proj.weight", f"{mlp}.gate_up_proj.weight"
    return {
        "embed.W_E": Copy("model.embed_tokens.weight"),
        "blocks.{i}.ln1.w": Copy(f"{layer}.input_layernorm.weight"),
        "blocks.{i}.attn.W_Q": Split(qkv, QKV, 0, "(n h) m -> n m h", n="n_heads"),
        "blocks.{i}.attn.W_K": Split(qkv, QKV, 1, "(n h) m -> n m h", n="n_key_value_heads"),
        "blocks.{i}.attn.W_V": Split(qkv, QKV, 2, "(n h) m -> n m h", n="n_key_value_heads"),
        "blocks.{i}.attn.W_O": Heads(f"{attn}.o_proj.weight", "m (n h) -> n h m", n="n_heads"),
        "blocks.{i}.ln2.w": Copy(f"{layer}.post_attention_layernorm.weight"),
        "blocks.{i}.mlp.W_gate": Split(gate_up, GATE_UP, 0, "f m -> m f"),
        "blocks.{i}.mlp.W_in": Split(gate_up, GATE_UP, 1, "f m -> m f"),
        "blocks.{i}.mlp.W_out": Transpose(f"{mlp}.down_proj.weight"),
        "ln_final.w": Copy("model.norm.weight"),
        "unembed.W_U": Transpose("model.embed_tokens.weight" if cfg.tie_word_embeddings else "lm_head.weight"),
    }


register("Phi3ForCausalLM", Adapter(phi3_config, phi3_weights, IGNORED, model_type="phi3", prefix="model."))
