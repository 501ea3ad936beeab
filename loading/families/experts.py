"""What the mixture-of-experts families share: their config fields and the tables of their experts' weights.

Checkpoints store experts one of two ways. One tensor per expert and matrix (Qwen MoE, OLMoE, Mixtral:
`{moe}.experts.{e}.gate_proj.weight`, ...), which is what transformers 5 writes with `save_pretrained`; a
live transformers 5 model (`hf_model=`) holds them fused instead, `{moe}.experts.gate_up_proj` [experts,
2 * d_mlp, d_model] (gate rows, then up rows) and `{moe}.experts.down_proj` [experts, d_model, d_mlp], which
`unfuse_experts` splits back (views). Or stacked over experts in the checkpoint itself (Granite MoE,
GPT-OSS), read with `Pick`.
"""

from __future__ import annotations

import re
from typing import Any

from hooked.config import HookedTransformerConfig
from hooked.loading.adapter import UnsupportedConfigError, WeightTable, require
from hooked.loading.transforms import Transpose


def moe_fields(hf: dict[str, Any], d_mlp_field: str, norm_topk_prob: bool | None = None) -> dict[str, Any]:
    """The router's fields: the expert count (configs name it num_experts or num_local_experts), experts per
    token, the experts' width (`d_mlp_field`), and `norm_topk_prob` (the config's, unless the family fixes it)."""
    n_experts = hf.get("num_experts") or hf.get("num_local_experts")
    if not n_experts:
        arch = (hf.get("architectures") or ["?"])[0]
        raise UnsupportedConfigError(f"{arch}: the config gives no num_experts (or num_local_experts).")
    renormalize = bool(hf.get("norm_topk_prob", False)) if norm_topk_prob is None else norm_topk_prob
    return {
        "num_experts": n_experts,
        "experts_per_token": hf["num_experts_per_tok"],
        "d_mlp": hf[d_mlp_field],
        "norm_topk_prob": renormalize,
    }


def every_layer_sparse(hf: dict[str, Any]) -> None:
    """Qwen MoE can make some layers dense (mlp_only_layers, decoder_sparse_step > 1); every real checkpoint has
    none, and HookedTransformer's blocks are all alike, so those configs are refused by name."""
    require(hf, "decoder_sparse_step", (1, None))
    if hf.get("mlp_only_layers"):
        arch = (hf.get("architectures") or ["?"])[0]
        raise UnsupportedConfigError(
            f"{arch}: config field mlp_only_layers={hf['mlp_only_layers']!r} makes those layers dense MLPs among "
            "mixture-of-experts ones, which is not implemented (every block here has the same MLP); only [] loads."
        )


def expert_weights(
    cfg: HookedTransformerConfig, moe: str, names: tuple[str, str, str] = ("gate_proj", "up_proj", "down_proj")
) -> WeightTable:
    """One checkpoint tensor per expert and matrix, `{moe}.experts.{e}.{gate,up,down}.weight` ([out, in])."""
    gate, up, down = names
    table: WeightTable = {}
    for e in range(cfg.num_experts):
        table[f"blocks.{{i}}.mlp.experts.{e}.W_gate"] = Transpose(f"{moe}.experts.{e}.{gate}.weight")
        table[f"blocks.{{i}}.mlp.experts.{e}.W_in"] = Transpose(f"{moe}.experts.{e}.{up}.weight")
        table[f"blocks.{{i}}.mlp.experts.{e}.W_out"] = Transpose(f"{moe}.experts.{e}.{down}.weight")
    return table


def unfuse_experts(state: dict[str, Any], names: tuple[str, str, str] = ("gate_proj", "up_proj", "down_proj")) -> dict:
    """A live transformers 5 model's state dict under checkpoint names: each layer's fused
    `mlp.experts.gate_up_proj` / `mlp.experts.down_proj` split into one tensor per expert (views)."""
    gate, up, down = names
    out = {}
    for name, tensor in state.items():
        match = re.fullmatch(r"(.*\.mlp\.experts)\.(gate_up_proj|down_proj)", name)
        if match is None:
            out[name] = tensor
        elif match.group(2) == "gate_up_proj":
            gates, ups = tensor.chunk(2, dim=1)
            for e in range(tensor.shape[0]):
                out[f"{match.group(1)}.{e}.{gate}.weight"], out[f"{match.group(1)}.{e}.{up}.weight"] = gates[e], ups[e]
        else:
            for e in range(tensor.shape[0]):
                out[f"{match.group(1)}.{e}.{down}.weight"] = tensor[e]
    return out
