"""Mixtral (Hugging Face `modeling_mixtral.py`): Mistral with a mixture of SwiGLU experts in place of
the MLP; a router picks each token's top experts (see `hooked/components/moe.py`).

Checkpoints store each expert as w1 (gate), w3 (up) and w2 (down), which is also what transformers
writes with `save_pretrained`. A live transformers 5 model (`hf_model=`) holds them fused, under
`mlp.` rather than `block_sparse_moe.`: `experts.gate_up_proj` [experts, 2 * d_mlp, d_model] (gate rows,
then up rows) and `experts.down_proj` [experts, d_model, d_mlp]; `unfuse_experts` splits them back.
"""

from __future__ import annotations

import re
from typing import Any

from hooked.config import HookedTransformerConfig
from hooked.loading.adapter import Adapter, WeightTable, register
from hooked.loading.families.llama import IGNORED, llama_config, llama_weights
from hooked.loading.transforms import Transpose


def mixtral_config(hf: dict[str, Any]) -> dict[str, Any]:
    return {
        **llama_config(hf, theta=1000000.0),
        "sliding_window": hf.get("sliding_window"),
        "num_experts": hf["num_local_experts"],
        "experts_per_token": hf["num_experts_per_tok"],
    }


def mixtral_weights(cfg: HookedTransformerConfig) -> WeightTable:
    moe = "model.layers.{i}.block_sparse_moe"
    table = {name: t for name, t in llama_weights(cfg).items() if ".mlp." not in name}
    table["blocks.{i}.mlp.W_router"] = Transpose(f"{moe}.gate.weight")
    for e in range(cfg.num_experts):
        table[f"blocks.{{i}}.mlp.experts.{e}.W_gate"] = Transpose(f"{moe}.experts.{e}.w1.weight")
        table[f"blocks.{{i}}.mlp.experts.{e}.W_in"] = Transpose(f"{moe}.experts.{e}.w3.weight")
        table[f"blocks.{{i}}.mlp.experts.{e}.W_out"] = Transpose(f"{moe}.experts.{e}.w2.weight")
    return table


def unfuse_experts(state: dict[str, Any]) -> dict[str, Any]:
    """A live model's state dict under checkpoint names, each expert's matrices split apart (views)."""
    out = {}
    for name, tensor in state.items():
        match = re.fullmatch(
            r"(model\.layers\.\d+)\.mlp\.(gate\.weight|experts\.gate_up_proj|experts\.down_proj)", name
        )
        if match is None:
            out[name] = tensor
            continue
        moe, part = f"{match.group(1)}.block_sparse_moe", match.group(2)
        if part == "gate.weight":
            out[f"{moe}.gate.weight"] = tensor
        elif part == "experts.gate_up_proj":
            gate, up = tensor.chunk(2, dim=1)
            for e in range(tensor.shape[0]):
                out[f"{moe}.experts.{e}.w1.weight"], out[f"{moe}.experts.{e}.w3.weight"] = gate[e], up[e]
        else:
            for e in range(tensor.shape[0]):
                out[f"{moe}.experts.{e}.w2.weight"] = tensor[e]
    return out


register(
    "MixtralForCausalLM",
    Adapter(mixtral_config, mixtral_weights, IGNORED, model_type="mixtral", prefix="model.", live=unfuse_experts),
)
