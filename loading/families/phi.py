"""Phi-1, Phi-1.5 and Phi-2 (Hugging Face `modeling_phi.py`): LayerNorm, partial rotary, biases
everywhere (the unembedding too), a dense GELU MLP, and attention and MLP in parallel reading one
norm (loaded as both ln1 and ln2). With `qk_layernorm`, each head's queries and keys pass a LayerNorm
(weight and bias shared by the heads) before rotary."""

from __future__ import annotations

from typing import Any

from hooked.config import HookedTransformerConfig
from hooked.loading.adapter import Adapter, WeightTable, register, require, rotary_fields, sizes
from hooked.loading.transforms import Copy, Heads, Transpose

ACTS = ("gelu_new", "gelu", "gelu_fast", "gelu_pytorch_tanh", "relu", "silu")


def phi_config(hf: dict[str, Any]) -> dict[str, Any]:
    qk_layernorm = bool(require(hf, "qk_layernorm", (False, True), default=False))
    fields = sizes(hf)
    d_head = fields["d_head"]
    return {
        **fields,
        "act_fn": require(hf, "hidden_act", ACTS),
        "normalization_type": "LN",
        "eps": hf["layer_norm_eps"],
        **rotary_fields(hf, d_head, partial=0.5),  # transformers' default: rotary on half of each head
        "parallel_attn_mlp": True,
        "unembed_bias": True,
        "tie_word_embeddings": bool(hf.get("tie_word_embeddings", False)),
        "qk_norm": "shared" if qk_layernorm else None,
        "qk_norm_bias": qk_layernorm,
    }


def phi_weights(cfg: HookedTransformerConfig) -> WeightTable:
    layer, attn, mlp = "model.layers.{i}", "model.layers.{i}.self_attn", "model.layers.{i}.mlp"
    table: WeightTable = {
        "embed.W_E": Copy("model.embed_tokens.weight"),
        "blocks.{i}.ln1.w": Copy(f"{layer}.input_layernorm.weight"),
        "blocks.{i}.ln1.b": Copy(f"{layer}.input_layernorm.bias"),
        "blocks.{i}.attn.W_O": Heads(f"{attn}.dense.weight", "m (n h) -> n h m", n="n_heads"),
        "blocks.{i}.attn.b_O": Copy(f"{attn}.dense.bias"),
        "blocks.{i}.ln2.w": Copy(f"{layer}.input_layernorm.weight"),  # the one norm, read by the MLP too
        "blocks.{i}.ln2.b": Copy(f"{layer}.input_layernorm.bias"),
        "blocks.{i}.mlp.W_in": Transpose(f"{mlp}.fc1.weight"),
        "blocks.{i}.mlp.b_in": Copy(f"{mlp}.fc1.bias"),
        "blocks.{i}.mlp.W_out": Transpose(f"{mlp}.fc2.weight"),
        "blocks.{i}.mlp.b_out": Copy(f"{mlp}.fc2.bias"),
        "ln_final.w": Copy("model.final_layernorm.weight"),
        "ln_final.b": Copy("model.final_layernorm.bias"),
        "unembed.W_U": Transpose("model.embed_tokens.weight" if cfg.tie_word_embeddings else "lm_head.weight"),
        "unembed.b_U": Copy("lm_head.bias"),
    }
    for name, proj, heads in (
        ("Q", "q_proj", "n_heads"),
        ("K", "k_proj", "n_key_value_heads"),
        ("V", "v_proj", "n_key_value_heads"),
    ):
        table[f"blocks.{{i}}.attn.W_{name}"] = Heads(f"{attn}.{proj}.weight", "(n h) m -> n m h", n=heads)
        table[f"blocks.{{i}}.attn.b_{name}"] = Heads(f"{attn}.{proj}.bias", "(n h) -> n h", n=heads)
    if cfg.qk_norm is not None:
        for name in ("q", "k"):
            table[f"blocks.{{i}}.attn.{name}_norm.w"] = Copy(f"{attn}.{name}_layernorm.weight")
            table[f"blocks.{{i}}.attn.{name}_norm.b"] = Copy(f"{attn}.{name}_layernorm.bias")
    return table


IGNORED = (r"model\.layers\.\d+\.self_attn\.rotary_emb\.inv_freq", r"lm_head\.weight")  # lm_head: tied copy

register("PhiForCausalLM", Adapter(phi_config, phi_weights, IGNORED, model_type="phi", prefix="model."))
