"""Mixtral (Hugging Face `modeling_mixtral.py`): Mistral with a mixture of SwiGLU experts in place of
the MLP; a router picks each token's top experts (see `hooked/components/moe.py`).

Checkpoints store each expert as w1 (gate), w3 (up) and w2 (down), which is also what transformers
writes with `save_pretrained`. A live model's state dict (`hf_model=`) fuses the experts instead and
is not read: load from the checkpoint folder.
"""

from __future__ import annotations

from typing import Any

from hooked.config import HookedTransformerConfig
from loading.adapter import Adapter, WeightTable, register
from loading.families.llama import IGNORED, llama_config, llama_weights
from loading.transforms import Transpose


def mixtral_config(hf: dict[str, Any]) -> dict[str, Any]:
    return {
        **llama_config(hf),
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


register("MixtralForCausalLM", Adapter(mixtral_config, mixtral_weights, IGNORED, prefix="model."))
