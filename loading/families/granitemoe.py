"""Granite MoE (Hugging Face `modeling_granitemoe.py`): Mixtral's block with Granite's four constants. The
router takes the softmax of the top-k logits (the renormalized top-k probabilities), with no bias.

`embedding_multiplier` scales the token embedding (`embed_scale`, so hook_embed is after it);
`attention_multiplier` replaces 1/sqrt(d_head) as the score scale (`attn_scale` is its inverse);
`residual_multiplier` scales each sublayer's output before it joins the residual and `logits_scaling` divides
the logits: both are folded into the weights at load (W_O, b_O and every expert's W_out times
residual_multiplier; W_U divided by logits_scaling, a copy where the checkpoint ties it to W_E), as for dense
Granite, so `hook_result`, `hook_attn_out`, `hook_expert_out` and `hook_mlp_out` are what reaches the residual
and every decomposition stays exact. Those parameters are the checkpoint's times the constants.

Checkpoints stack the experts: `block_sparse_moe.input_linear.weight` [experts, 2 * d_mlp, d_model] (gate
rows, then up rows), `output_linear.weight` [experts, d_model, d_mlp] and `router.layer.weight`; a live
transformers 5 model names them `experts.gate_up_proj`, `experts.down_proj` and `router.weight`.
"""

from __future__ import annotations

import re
from typing import Any

from hooked.config import HookedTransformerConfig
from hooked.loading.adapter import Adapter, WeightTable, register
from hooked.loading.families.experts import moe_fields
from hooked.loading.families.llama import IGNORED, llama_config, llama_weights
from hooked.loading.transforms import Pick, Transpose

MOE = "model.layers.{i}.block_sparse_moe"


def granitemoe_config(hf: dict[str, Any]) -> dict[str, Any]:
    return {
        **llama_config(hf),
        **moe_fields(hf, "intermediate_size", norm_topk_prob=True),
        "embed_scale": float(hf.get("embedding_multiplier", 1.0)),
        "attn_scale": 1.0 / float(hf.get("attention_multiplier", 1.0)),
    }


def granitemoe_weights(cfg: HookedTransformerConfig) -> WeightTable:
    table = {name: t for name, t in llama_weights(cfg).items() if ".mlp." not in name}
    table["blocks.{i}.mlp.W_router"] = Transpose(f"{MOE}.router.layer.weight")
    gate, up = slice(0, cfg.d_mlp), slice(cfg.d_mlp, 2 * cfg.d_mlp)
    for e in range(cfg.num_experts):
        expert = f"blocks.{{i}}.mlp.experts.{e}"
        table[f"{expert}.W_gate"] = Pick(f"{MOE}.input_linear.weight", (e, gate), transpose=True)
        table[f"{expert}.W_in"] = Pick(f"{MOE}.input_linear.weight", (e, up), transpose=True)
        table[f"{expert}.W_out"] = Pick(f"{MOE}.output_linear.weight", (e,), transpose=True)
    return table


def granitemoe_multipliers(hf: dict[str, Any]) -> dict[str, float]:
    residual = float(hf.get("residual_multiplier", 1.0))
    n_experts = hf.get("num_local_experts") or hf.get("num_experts")
    outputs = ["blocks.{i}.attn.W_O", "blocks.{i}.attn.b_O"]
    outputs += [f"blocks.{{i}}.mlp.experts.{e}.W_out" for e in range(n_experts)]
    return {**dict.fromkeys(outputs, residual), "unembed.W_U": 1.0 / float(hf.get("logits_scaling", 1.0))}


LIVE = {
    "experts.gate_up_proj": "input_linear.weight",
    "experts.down_proj": "output_linear.weight",
    "router.weight": "router.layer.weight",
}


def checkpoint_names(state: dict[str, Any]) -> dict[str, Any]:
    """A live transformers 5 model's state dict under the checkpoint's names (the same tensors)."""
    pattern = re.compile(r"(.*\.block_sparse_moe)\.(experts\.gate_up_proj|experts\.down_proj|router\.weight)")
    renamed = {}
    for name, tensor in state.items():
        match = pattern.fullmatch(name)
        renamed[f"{match.group(1)}.{LIVE[match.group(2)]}" if match else name] = tensor
    return renamed


register(
    "GraniteMoeForCausalLM",
    Adapter(
        granitemoe_config,
        granitemoe_weights,
        IGNORED,
        model_type="granitemoe",
        prefix="model.",
        live=checkpoint_names,
        multipliers=granitemoe_multipliers,
    ),
)
