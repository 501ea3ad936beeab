"""OLMo and OLMo 2 (Hugging Face `modeling_olmo.py`, `modeling_olmo2.py`).

OLMo: Llama with LayerNorms that have no weight or bias (eps fixed at 1e-5), and optional clamping of
q, k and v (`clip_qkv`). OLMo 2: RMSNorms after each sublayer instead of before it, and RMSNorms on
the queries and keys over all heads at once. OLMo 3 (`modeling_olmo3.py`): OLMo 2 with sliding-window
layers (three of every four) and a rotary setting per layer type, where only the global layers scale.
"""

from __future__ import annotations

from typing import Any

from hooked.config import HookedTransformerConfig
from hooked.loading.adapter import Adapter, WeightTable, attn_type_fields, register, require, rope_parameters
from hooked.loading.families.llama import IGNORED, llama_config, llama_weights
from hooked.loading.transforms import Copy


def olmo_config(hf: dict[str, Any]) -> dict[str, Any]:
    bias = bool(hf.get("attention_bias", False))
    fields = {**llama_config({**hf, "rms_norm_eps": 1e-5}), "attn_qkv_bias": bias, "attn_out_bias": bias}
    return {**fields, "normalization_type": "LNPre", "clip_qkv": float(hf.get("clip_qkv") or 0.0)}


def olmo2_config(hf: dict[str, Any]) -> dict[str, Any]:
    bias = bool(hf.get("attention_bias", False))
    fields = {**llama_config(hf), "attn_qkv_bias": bias, "attn_out_bias": bias}
    return {**fields, "block_norms": "post", "qk_norm": "all_heads"}


def olmo3_config(hf: dict[str, Any]) -> dict[str, Any]:
    # Transformers 5 nests rope_parameters by layer type, as for Gemma 3; 4 had one rope_theta for all layers.
    rope = hf.get("rope_parameters") or {}
    full = rope_parameters(hf, rope.get("full_attention"), rope_theta=500000.0)
    local = rope_parameters(hf, rope.get("sliding_attention"), {"rope_theta": "rope_theta"}, None, rope_theta=500000.0)
    require({**hf, "local rope_type": local["rope_type"]}, "local rope_type", ("default",))
    every_4th = ["sliding_attention" if (i + 1) % 4 else "full_attention" for i in range(hf["num_hidden_layers"])]
    return {
        **olmo2_config({**hf, "rope_parameters": full}),
        **attn_type_fields(hf, every_4th),
        "rotary_base_local": float(local["rope_theta"]),
    }


def olmo_weights(cfg: HookedTransformerConfig) -> WeightTable:
    # Llama's table without the norms, which have no parameters.
    return {name: t for name, t in llama_weights(cfg).items() if not name.startswith(("blocks.{i}.ln", "ln_final"))}


def olmo2_weights(cfg: HookedTransformerConfig) -> WeightTable:
    layer, attn = "model.layers.{i}", "model.layers.{i}.self_attn"
    return {
        **olmo_weights(cfg),
        "blocks.{i}.attn.q_norm.w": Copy(f"{attn}.q_norm.weight"),
        "blocks.{i}.attn.k_norm.w": Copy(f"{attn}.k_norm.weight"),
        "blocks.{i}.ln1_post.w": Copy(f"{layer}.post_attention_layernorm.weight"),
        "blocks.{i}.ln2_post.w": Copy(f"{layer}.post_feedforward_layernorm.weight"),
        "ln_final.w": Copy("model.norm.weight"),
    }


register("OlmoForCausalLM", Adapter(olmo_config, olmo_weights, IGNORED, model_type="olmo", prefix="model."))
register("Olmo2ForCausalLM", Adapter(olmo2_config, olmo2_weights, IGNORED, model_type="olmo2", prefix="model."))
register("Olmo3ForCausalLM", Adapter(olmo3_config, olmo2_weights, IGNORED, model_type="olmo3", prefix="model."))
