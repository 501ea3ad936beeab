"""Qwen3 (Hugging Face `modeling_qwen3.py`): Llama plus an RMSNorm on each head's queries and keys
(one weight shared by all heads), applied before rotary; optional sliding-window layers."""

from __future__ import annotations

from typing import Any

from hooked.config import HookedTransformerConfig
from hooked.loading.adapter import Adapter, WeightTable, register
from hooked.loading.families.llama import IGNORED, llama_config, llama_weights, qwen_attn_types
from hooked.loading.transforms import Copy


def qwen3_config(hf: dict[str, Any]) -> dict[str, Any]:
    return {**llama_config(hf), **qwen_attn_types(hf), "qk_norm": "shared"}


def qwen3_weights(cfg: HookedTransformerConfig) -> WeightTable:
    attn = "model.layers.{i}.self_attn"
    return {
        **llama_weights(cfg),
        "blocks.{i}.attn.q_norm.w": Copy(f"{attn}.q_norm.weight"),
        "blocks.{i}.attn.k_norm.w": Copy(f"{attn}.k_norm.weight"),
    }


register("Qwen3ForCausalLM", Adapter(qwen3_config, qwen3_weights, IGNORED, model_type="qwen3", prefix="model."))
