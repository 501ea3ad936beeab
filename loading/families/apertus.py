"""Apertus (Hugging Face `modeling_apertus.py`; swiss-ai/Apertus-8B and -70B): Llama with a plain MLP (up_proj,
down_proj) whose activation is xIELU, with four numbers of its own per layer (`XIELUMLP`), RMSNorms on
queries and keys (one weight for all heads, as Qwen3), and its norms named attention_layernorm and
feedforward_layernorm."""

from __future__ import annotations

from typing import Any

from hooked.config import HookedTransformerConfig
from hooked.loading.adapter import Adapter, WeightTable, register, require
from hooked.loading.families.llama import IGNORED, llama_config, llama_weights
from hooked.loading.transforms import Copy, Transpose


def apertus_config(hf: dict[str, Any]) -> dict[str, Any]:
    act = require(hf, "hidden_act", ("xielu", "relu", "gelu", "silu", "gelu_pytorch_tanh"))
    fields = llama_config({**hf, "hidden_act": "silu"})  # the activation is checked here, not as Llama's
    return {**fields, "act_fn": act, "gated_mlp": False, "mlp_bias": False, "qk_norm": "shared"}


def apertus_weights(cfg: HookedTransformerConfig) -> WeightTable:
    layer, attn, mlp = "model.layers.{i}", "model.layers.{i}.self_attn", "model.layers.{i}.mlp"
    table = {
        name: t for name, t in llama_weights(cfg).items() if not name.startswith(("blocks.{i}.mlp", "blocks.{i}.ln"))
    }
    table |= {
        "blocks.{i}.ln1.w": Copy(f"{layer}.attention_layernorm.weight"),
        "blocks.{i}.ln2.w": Copy(f"{layer}.feedforward_layernorm.weight"),
        "blocks.{i}.attn.q_norm.w": Copy(f"{attn}.q_norm.weight"),
        "blocks.{i}.attn.k_norm.w": Copy(f"{attn}.k_norm.weight"),
        "blocks.{i}.mlp.W_in": Transpose(f"{mlp}.up_proj.weight"),
        "blocks.{i}.mlp.W_out": Transpose(f"{mlp}.down_proj.weight"),
    }
    if cfg.act_fn == "xielu":
        for name in ("alpha_p", "alpha_n", "beta", "eps"):
            table[f"blocks.{{i}}.mlp.xielu_{name}"] = Copy(f"{mlp}.act_fn.{name}")
    return table


register("ApertusForCausalLM", Adapter(apertus_config, apertus_weights, IGNORED, model_type="apertus", prefix="model."))
