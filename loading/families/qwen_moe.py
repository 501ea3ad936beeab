"""Qwen3-MoE and Qwen2-MoE (Hugging Face `modeling_qwen3_moe.py`, `modeling_qwen2_moe.py`): Qwen3 / Qwen2
with a mixture of SwiGLU experts in place of the MLP (hooked/components/moe.py). The router's top-k
probabilities are renormalized only with `norm_topk_prob` (false in Qwen1.5/Qwen2-MoE, true in Qwen3-MoE's
checkpoints). Qwen2-MoE adds a shared expert every token goes through, scaled by sigmoid(x @ w), where w is
`shared_expert_gate` (`mlp.shared_expert.*`, `mlp.hook_shared_gate`, `mlp.hook_shared_out`).
"""

from __future__ import annotations

from typing import Any

from hooked.config import HookedTransformerConfig
from hooked.loading.adapter import Adapter, WeightTable, register
from hooked.loading.families.experts import every_layer_sparse, expert_weights, moe_fields, unfuse_experts
from hooked.loading.families.llama import IGNORED, llama_weights, qwen2_config
from hooked.loading.families.qwen3 import qwen3_config, qwen3_weights
from hooked.loading.transforms import Transpose

MOE = "model.layers.{i}.mlp"


def qwen3_moe_config(hf: dict[str, Any]) -> dict[str, Any]:
    every_layer_sparse(hf)
    # Unlike Qwen3's, the window (with use_sliding_window) applies to every layer, as Mistral's: transformers'
    # Qwen3-MoE has no layer_types and ignores max_window_layers.
    window = hf.get("sliding_window") if hf.get("use_sliding_window") else None
    fields = {**qwen3_config(hf), "sliding_window": window, "attn_types": None}
    return {**fields, **moe_fields(hf, "moe_intermediate_size")}


def qwen2_moe_config(hf: dict[str, Any]) -> dict[str, Any]:
    every_layer_sparse(hf)
    bias = bool(hf.get("qkv_bias", True))
    fields = {**qwen2_config(hf), "attn_qkv_bias": bias, **moe_fields(hf, "moe_intermediate_size")}
    return {**fields, "d_mlp_shared": hf["shared_expert_intermediate_size"]}


def routed(table: WeightTable, cfg: HookedTransformerConfig) -> WeightTable:
    """A dense family's table with its MLP replaced by the router and the experts."""
    table = {name: t for name, t in table.items() if ".mlp." not in name}
    return {**table, "blocks.{i}.mlp.W_router": Transpose(f"{MOE}.gate.weight"), **expert_weights(cfg, MOE)}


def qwen3_moe_weights(cfg: HookedTransformerConfig) -> WeightTable:
    return routed(qwen3_weights(cfg), cfg)


def qwen2_moe_weights(cfg: HookedTransformerConfig) -> WeightTable:
    shared = f"{MOE}.shared_expert"
    return {
        **routed(llama_weights(cfg), cfg),
        "blocks.{i}.mlp.shared_expert.W_gate": Transpose(f"{shared}.gate_proj.weight"),
        "blocks.{i}.mlp.shared_expert.W_in": Transpose(f"{shared}.up_proj.weight"),
        "blocks.{i}.mlp.shared_expert.W_out": Transpose(f"{shared}.down_proj.weight"),
        "blocks.{i}.mlp.W_shared_gate": Transpose(f"{MOE}.shared_expert_gate.weight"),
    }


register(
    "Qwen3MoeForCausalLM",
    Adapter(qwen3_moe_config, qwen3_moe_weights, IGNORED, model_type="qwen3_moe", prefix="model.", live=unfuse_experts),
)
register(
    "Qwen2MoeForCausalLM",
    Adapter(qwen2_moe_config, qwen2_moe_weights, IGNORED, model_type="qwen2_moe", prefix="model.", live=unfuse_experts),
)
