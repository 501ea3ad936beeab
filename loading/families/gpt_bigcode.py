"""GPTBigCode (Hugging Face `modeling_gpt_bigcode.py`; StarCoder, SantaCoder, WizardCoder): GPT-2's block
with learned positions and LayerNorms, multi-query attention (`multi_query`: one key/value head), and its
projections stored as nn.Linear ([out, in]) rather than GPT-2's Conv1D. The fused c_attn holds all query
heads, then the key head, then the value head; without multi_query, q, k and v interleave within each head.
Softmax in float32 (`attention_softmax_in_fp32`) is what our float32 models compute anyway; in half
precision ours runs in float32 too."""

from __future__ import annotations

from typing import Any

from hooked.config import HookedTransformerConfig
from hooked.loading.adapter import H_LAYERS, Adapter, WeightTable, register, require
from hooked.loading.transforms import Copy, Heads, HeadsCopied, Split, Transpose

QKV = ("n_heads*d_head", "n_key_value_heads*d_head", "n_key_value_heads*d_head")
ACTS = ("gelu_pytorch_tanh", "gelu", "gelu_new", "gelu_fast", "relu", "silu")


def gpt_bigcode_config(hf: dict[str, Any]) -> dict[str, Any]:
    require(hf, "add_cross_attention", (False, None))
    scale = require(hf, "scale_attn_weights", (True, False), default=True)
    d_head = hf["n_embd"] // hf["n_head"]
    return {
        "d_model": hf["n_embd"],
        "n_layers": hf["n_layer"],
        "n_heads": hf["n_head"],
        "n_key_value_heads": 1 if hf.get("multi_query", True) else hf["n_head"],
        "d_mlp": hf.get("n_inner") or 4 * hf["n_embd"],
        "d_vocab": hf["vocab_size"],
        "n_ctx": hf["n_positions"],
        "act_fn": require(hf, "activation_function", ACTS),
        "normalization_type": "LN",
        "eps": hf["layer_norm_epsilon"],
        "positional_embedding_type": "standard",
        "attn_scale": d_head**0.5 if scale else 1.0,
        "tie_word_embeddings": bool(hf.get("tie_word_embeddings", True)),
    }


def gpt_bigcode_weights(cfg: HookedTransformerConfig) -> WeightTable:
    h = "transformer.h.{i}"
    qkv_w, qkv_b = f"{h}.attn.c_attn.weight", f"{h}.attn.c_attn.bias"
    table: WeightTable = {
        "embed.W_E": Copy("transformer.wte.weight"),
        "pos_embed.W_pos": Copy("transformer.wpe.weight"),
        "blocks.{i}.ln1.w": Copy(f"{h}.ln_1.weight"),
        "blocks.{i}.ln1.b": Copy(f"{h}.ln_1.bias"),
        "blocks.{i}.ln2.w": Copy(f"{h}.ln_2.weight"),
        "blocks.{i}.ln2.b": Copy(f"{h}.ln_2.bias"),
        "blocks.{i}.attn.W_O": Heads(f"{h}.attn.c_proj.weight", "m (n h) -> n h m", n="n_heads"),
        "blocks.{i}.attn.b_O": Copy(f"{h}.attn.c_proj.bias"),
        "blocks.{i}.mlp.W_in": Transpose(f"{h}.mlp.c_fc.weight"),
        "blocks.{i}.mlp.b_in": Copy(f"{h}.mlp.c_fc.bias"),
        "blocks.{i}.mlp.W_out": Transpose(f"{h}.mlp.c_proj.weight"),
        "blocks.{i}.mlp.b_out": Copy(f"{h}.mlp.c_proj.bias"),
        "ln_final.w": Copy("transformer.ln_f.weight"),
        "ln_final.b": Copy("transformer.ln_f.bias"),
        "unembed.W_U": Transpose("transformer.wte.weight" if cfg.tie_word_embeddings else "lm_head.weight"),
    }
    multi_query = cfg.n_key_value_heads == 1 < cfg.n_heads
    for index, name in enumerate("QKV"):
        heads = "n_heads" if name == "Q" else "n_key_value_heads"
        if multi_query:
            w = Split(qkv_w, QKV, index, "(n h) m -> n m h", n=heads)
            b = Split(qkv_b, QKV, index, "(n h) -> n h", n=heads)
        else:
            w = HeadsCopied(qkv_w, "(n three h) m -> three n m h", index, three=3, n="n_heads")
            b = HeadsCopied(qkv_b, "(n three h) -> three n h", index, three=3, n="n_heads")
        table[f"blocks.{{i}}.attn.W_{name}"], table[f"blocks.{{i}}.attn.b_{name}"] = w, b
    return table


IGNORED = (r"(transformer\.)?h\.\d+\.attn\.(bias|masked_bias)", r"lm_head\.weight")  # old mask buffers; tied copy

register(
    "GPTBigCodeForCausalLM",
    Adapter(
        gpt_bigcode_config,
        gpt_bigcode_weights,
        IGNORED,
        model_type="gpt_bigcode",
        prefix="transformer.",
        layer_index=H_LAYERS,
    ),
)
