"""StarCoder2 (Hugging Face `modeling_starcoder2.py`): Mistral's attention (grouped-query, rotary, one
sliding window for every layer) with LayerNorms that have biases, biases on every projection (`use_bias`),
and a plain GELU MLP (c_fc, c_proj)."""

from __future__ import annotations

from typing import Any

from hooked.config import HookedTransformerConfig
from hooked.loading.adapter import Adapter, WeightTable, register, require, rotary_fields, sizes
from hooked.loading.families.llama import IGNORED, llama_weights
from hooked.loading.transforms import Copy, Transpose

ACTS = ("gelu_pytorch_tanh", "gelu", "gelu_new", "gelu_fast", "silu", "relu")


def starcoder2_config(hf: dict[str, Any]) -> dict[str, Any]:
    fields = sizes(hf)
    bias = bool(hf.get("use_bias", True))
    return {
        **fields,
        "act_fn": require(hf, "hidden_act", ACTS),
        "normalization_type": "LN",
        "eps": hf["norm_epsilon"],
        **rotary_fields(hf, fields["d_head"]),
        "attn_qkv_bias": bias,
        "attn_out_bias": bias,
        "mlp_bias": bias,
        "sliding_window": hf.get("sliding_window"),
        "tie_word_embeddings": bool(hf.get("tie_word_embeddings", True)),
    }


def starcoder2_weights(cfg: HookedTransformerConfig) -> WeightTable:
    # Same as llama_weights except: norm biases, and a plain MLP.
    layer, mlp = "model.layers.{i}", "model.layers.{i}.mlp"
    table = {name: t for name, t in llama_weights(cfg).items() if ".mlp." not in name}
    table |= {
        "blocks.{i}.ln1.b": Copy(f"{layer}.input_layernorm.bias"),
        "blocks.{i}.ln2.b": Copy(f"{layer}.post_attention_layernorm.bias"),
        "ln_final.b": Copy("model.norm.bias"),
        "blocks.{i}.mlp.W_in": Transpose(f"{mlp}.c_fc.weight"),
        "blocks.{i}.mlp.W_out": Transpose(f"{mlp}.c_proj.weight"),
    }
    if cfg.mlp_bias:
        table["blocks.{i}.mlp.b_in"] = Copy(f"{mlp}.c_fc.bias")
        table["blocks.{i}.mlp.b_out"] = Copy(f"{mlp}.c_proj.bias")
    return table


register(
    "Starcoder2ForCausalLM",
    Adapter(starcoder2_config, starcoder2_weights, IGNORED, model_type="starcoder2", prefix="model."),
)
