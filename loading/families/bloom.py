"""BLOOM (Hugging Face `modeling_bloom.py`): ALiBi instead of positions, a LayerNorm ending the
token embedding (`embed.ln`, before `hook_embed`), a fused qkv projection that interleaves q, k and v within each head,
biases everywhere, BLOOM's tanh GELU (`gelu_fast`), and a tied unembedding.

ALiBi extrapolates, so there is no learned context length: n_ctx is the training length
(`seq_length`, else 2048); pass `n_ctx=` to from_pretrained for longer inputs.
"""

from __future__ import annotations

from typing import Any

from hooked.config import HookedTransformerConfig
from hooked.loading.adapter import H_LAYERS, Adapter, WeightTable, register, require
from hooked.loading.transforms import Copy, Heads, HeadsCopied, Transpose


def bloom_config(hf: dict[str, Any]) -> dict[str, Any]:
    require(hf, "apply_residual_connection_post_layernorm", (False,), default=False)
    if hf.get("pretraining_tp", 1) > 1:  # the slow path splits the output matmuls, which rounds differently
        require(hf, "slow_but_exact", (False,), default=False)
    return {
        "d_model": hf["hidden_size"],
        "n_layers": hf["n_layer"],
        "n_heads": hf["n_head"],
        "d_vocab": hf["vocab_size"],
        "n_ctx": hf.get("seq_length") or 2048,
        "act_fn": "gelu_fast",
        "normalization_type": "LN",
        "eps": hf["layer_norm_epsilon"],
        "positional_embedding_type": "alibi",
        "post_embedding_ln": True,
        "tie_word_embeddings": bool(hf.get("tie_word_embeddings", True)),
    }


def bloom_weights(cfg: HookedTransformerConfig) -> WeightTable:
    h = "transformer.h.{i}"
    qkv = f"{h}.self_attention.query_key_value"
    table: WeightTable = {
        "embed.W_E": Copy("transformer.word_embeddings.weight"),
        "embed.ln.w": Copy("transformer.word_embeddings_layernorm.weight"),
        "embed.ln.b": Copy("transformer.word_embeddings_layernorm.bias"),
        "blocks.{i}.ln1.w": Copy(f"{h}.input_layernorm.weight"),
        "blocks.{i}.ln1.b": Copy(f"{h}.input_layernorm.bias"),
        "blocks.{i}.attn.W_O": Heads(f"{h}.self_attention.dense.weight", "m (n h) -> n h m", n="n_heads"),
        "blocks.{i}.attn.b_O": Copy(f"{h}.self_attention.dense.bias"),
        "blocks.{i}.ln2.w": Copy(f"{h}.post_attention_layernorm.weight"),
        "blocks.{i}.ln2.b": Copy(f"{h}.post_attention_layernorm.bias"),
        "blocks.{i}.mlp.W_in": Transpose(f"{h}.mlp.dense_h_to_4h.weight"),
        "blocks.{i}.mlp.b_in": Copy(f"{h}.mlp.dense_h_to_4h.bias"),
        "blocks.{i}.mlp.W_out": Transpose(f"{h}.mlp.dense_4h_to_h.weight"),
        "blocks.{i}.mlp.b_out": Copy(f"{h}.mlp.dense_4h_to_h.bias"),
        "ln_final.w": Copy("transformer.ln_f.weight"),
        "ln_final.b": Copy("transformer.ln_f.bias"),
        "unembed.W_U": Transpose("transformer.word_embeddings.weight" if cfg.tie_word_embeddings else "lm_head.weight"),
    }
    for index, name in enumerate("QKV"):
        # Rows are ordered head by head, and q, k, v within each head.
        table[f"blocks.{{i}}.attn.W_{name}"] = HeadsCopied(
            f"{qkv}.weight", "(n three h) m -> three n m h", index, three=3, n="n_heads"
        )
        table[f"blocks.{{i}}.attn.b_{name}"] = HeadsCopied(
            f"{qkv}.bias", "(n three h) -> three n h", index, three=3, n="n_heads"
        )
    return table


IGNORED = (r"lm_head\.weight",)  # a tied checkpoint may store it

register(
    "BloomForCausalLM",
    Adapter(bloom_config, bloom_weights, IGNORED, model_type="bloom", prefix="transformer.", layer_index=H_LAYERS),
)
