"""OLMoE (Hugging Face `modeling_olmoe.py`): OLMo 2's RMSNorms on the queries and keys over all heads at
once, in Llama's pre-norm block, with a mixture of SwiGLU experts in place of the MLP
(hooked/components/moe.py); the router's top-k probabilities are renormalized only with `norm_topk_prob`
(false in OLMoE-1B-7B). OLMoE clamps q/k/v (`clip_qkv`) after the query/key norms, where OLMo clamps
before them: a config with a clip is refused rather than loaded in the wrong order."""

from __future__ import annotations

from typing import Any

from hooked.config import HookedTransformerConfig
from hooked.loading.adapter import Adapter, WeightTable, register, require
from hooked.loading.families.experts import moe_fields, unfuse_experts
from hooked.loading.families.llama import IGNORED, llama_config, llama_weights
from hooked.loading.families.qwen_moe import routed
from hooked.loading.transforms import Copy


def olmoe_config(hf: dict[str, Any]) -> dict[str, Any]:
    require(hf, "clip_qkv", (None,))
    bias = bool(hf.get("attention_bias", False))
    fields = {**llama_config(hf), "attn_qkv_bias": bias, "attn_out_bias": bias, "qk_norm": "all_heads"}
    return {**fields, **moe_fields(hf, "intermediate_size")}


def olmoe_weights(cfg: HookedTransformerConfig) -> WeightTable:
    attn = "model.layers.{i}.self_attn"
    return {
        **routed(llama_weights(cfg), cfg),
        "blocks.{i}.attn.q_norm.w": Copy(f"{attn}.q_norm.weight"),
        "blocks.{i}.attn.k_norm.w": Copy(f"{attn}.k_norm.weight"),
    }


register(
    "OlmoeForCausalLM",
    Adapter(olmoe_config, olmoe_weights, IGNORED, model_type="olmoe", prefix="model.", live=unfuse_experts),
)
