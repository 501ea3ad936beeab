"""Falcon (Hugging Face `modeling_falcon.py`): LayerNorms with biases, rotary positions, a GELU MLP, one
fused q/k/v projection, and biases on every projection or none (`bias`). Two layouts:

- the original (Falcon-7B, `new_decoder_architecture=False`): multi-query attention (`multi_query`: all query
  heads, then one key and one value head; otherwise q, k and v interleave within each head), attention and
  MLP side by side reading one norm (`parallel_attn`) or in sequence with a norm each;
- the new decoder architecture (Falcon-40B/180B, Falcon 2 11B): grouped-query attention whose fused
  projection is laid out per key/value group ([its query heads, key, value]), attention and MLP side by side
  reading one norm each (ln_attn, ln_mlp) or one shared norm (`num_ln_in_parallel_attn=1`).

Falcon-RW's ALiBi variant (`alibi=True`) scales its position bias together with the scores, unlike BLOOM's
ALiBi implemented here; it is refused.
"""

from __future__ import annotations

from typing import Any

from hooked.config import HookedTransformerConfig
from hooked.loading.adapter import H_LAYERS, Adapter, WeightTable, register, require, rotary_fields
from hooked.loading.transforms import Copy, GroupedQKV, Heads, Transpose

ACTS = ("gelu", "gelu_pytorch_tanh", "gelu_new", "relu", "silu")


def falcon_config(hf: dict[str, Any]) -> dict[str, Any]:
    require(hf, "alibi", (False, None))
    new = bool(hf.get("new_decoder_architecture"))
    if new:  # transformers' new-architecture block runs attention and MLP side by side whatever this says
        require(hf, "parallel_attn", (True,))
    n_heads, bias = hf["num_attention_heads"], bool(hf.get("bias", False))
    d_head = hf["hidden_size"] // n_heads
    n_kv = (hf.get("num_kv_heads") or n_heads) if new else (1 if hf.get("multi_query", True) else n_heads)
    return {
        "d_model": hf["hidden_size"],
        "n_layers": hf["num_hidden_layers"],
        "n_heads": n_heads,
        "n_key_value_heads": n_kv,
        "d_mlp": hf.get("ffn_hidden_size") or 4 * hf["hidden_size"],
        "d_vocab": hf["vocab_size"],
        "n_ctx": hf["max_position_embeddings"],
        "act_fn": require(hf, "activation", ACTS),
        "normalization_type": "LN",
        "eps": hf["layer_norm_epsilon"],
        **rotary_fields(hf, d_head),
        "parallel_attn_mlp": new or bool(hf.get("parallel_attn", True)),
        "attn_qkv_bias": bias,
        "attn_out_bias": bias,
        "mlp_bias": bias,
        "tie_word_embeddings": bool(hf.get("tie_word_embeddings", True)),
    }


def falcon_weights(cfg: HookedTransformerConfig, hf: dict[str, Any]) -> WeightTable:
    h = "transformer.h.{i}"
    qkv, attn, mlp = f"{h}.self_attention.query_key_value", f"{h}.self_attention", f"{h}.mlp"
    embed = "transformer.word_embeddings.weight"
    # The norms: a parallel block's one shared norm, or one each (named by layout). transformers' default for
    # the new architecture is two.
    new = bool(hf.get("new_decoder_architecture"))
    if new and (hf.get("num_ln_in_parallel_attn") or 2) == 2:
        ln1, ln2 = f"{h}.ln_attn", f"{h}.ln_mlp"
    elif cfg.parallel_attn_mlp:
        ln1 = ln2 = f"{h}.input_layernorm"
    else:
        ln1, ln2 = f"{h}.input_layernorm", f"{h}.post_attention_layernorm"
    table: WeightTable = {
        "embed.W_E": Copy(embed),
        "blocks.{i}.ln1.w": Copy(f"{ln1}.weight"),
        "blocks.{i}.ln1.b": Copy(f"{ln1}.bias"),
        "blocks.{i}.ln2.w": Copy(f"{ln2}.weight"),
        "blocks.{i}.ln2.b": Copy(f"{ln2}.bias"),
        "blocks.{i}.attn.W_O": Heads(f"{attn}.dense.weight", "m (n h) -> n h m", n="n_heads"),
        "blocks.{i}.mlp.W_in": Transpose(f"{mlp}.dense_h_to_4h.weight"),
        "blocks.{i}.mlp.W_out": Transpose(f"{mlp}.dense_4h_to_h.weight"),
        "ln_final.w": Copy("transformer.ln_f.weight"),
        "ln_final.b": Copy("transformer.ln_f.bias"),
        "unembed.W_U": Transpose(embed if cfg.tie_word_embeddings else "lm_head.weight"),
    }
    # Every layout is per key/value group [its query heads, key, value]: the original multi-query one is a
    # single group, the original multi-head one a group per head.
    for index, name in enumerate("QKV"):
        table[f"blocks.{{i}}.attn.W_{name}"] = GroupedQKV(f"{qkv}.weight", index)
        if cfg.attn_qkv_bias:
            table[f"blocks.{{i}}.attn.b_{name}"] = GroupedQKV(f"{qkv}.bias", index)
    if cfg.attn_out_bias:
        table["blocks.{i}.attn.b_O"] = Copy(f"{attn}.dense.bias")
    if cfg.mlp_bias:
        table["blocks.{i}.mlp.b_in"] = Copy(f"{mlp}.dense_h_to_4h.bias")
        table["blocks.{i}.mlp.b_out"] = Copy(f"{mlp}.dense_4h_to_h.bias")
    return table


IGNORED = (r"lm_head\.weight",)  # a tied copy

register(
    "FalconForCausalLM",
    Adapter(
        falcon_config,
        falcon_weights,
        IGNORED,
        model_type="falcon",
        prefix="transformer.",
        layer_index=H_LAYERS,
        weights_read_hf=True,
    ),
)
