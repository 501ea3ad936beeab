"""GPT-2 (Hugging Face `modeling_gpt2.py`): LayerNorm, learned positions, fused qkv stored as Conv1D
([in, out], already our `x @ W` layout), tied unembedding."""

from __future__ import annotations

from typing import Any

from hooked.config import HookedTransformerConfig
from hooked.loading.adapter import H_LAYERS, Adapter, WeightTable, register, require
from hooked.loading.transforms import Copy, Heads, Transpose


def gpt2_config(hf: dict[str, Any]) -> dict[str, Any]:
    # Scores computed in float32 (reorder_and_upcast_attn) are what our float32 models compute anyway; in half
    # precision ours are computed in the weights' dtype, a difference of rounding only.
    require(hf, "reorder_and_upcast_attn", (False, True), default=False)
    scale = require(hf, "scale_attn_weights", (True, False), default=True)
    d_head = hf["n_embd"] // hf["n_head"]
    return {
        "d_model": hf["n_embd"],
        "n_layers": hf["n_layer"],
        "n_heads": hf["n_head"],
        "d_mlp": hf.get("n_inner") or 4 * hf["n_embd"],
        "d_vocab": hf["vocab_size"],
        "n_ctx": hf["n_positions"],
        "act_fn": require(hf, "activation_function", ("gelu_new", "gelu", "gelu_pytorch_tanh", "relu", "silu")),
        "normalization_type": "LN",
        "eps": hf["layer_norm_epsilon"],
        "positional_embedding_type": "standard",
        "attn_scale": d_head**0.5 if scale else 1.0,
        "scale_attn_by_inverse_layer_idx": bool(require(hf, "scale_attn_by_inverse_layer_idx", (False, True), False)),
        "tie_word_embeddings": bool(hf.get("tie_word_embeddings", True)),
    }


def gpt2_weights(cfg: HookedTransformerConfig) -> WeightTable:
    h = "transformer.h.{i}"
    qkv_w, qkv_b = f"{h}.attn.c_attn.weight", f"{h}.attn.c_attn.bias"
    table: WeightTable = {
        "embed.W_E": Copy("transformer.wte.weight"),
        "pos_embed.W_pos": Copy("transformer.wpe.weight"),
        "blocks.{i}.ln1.w": Copy(f"{h}.ln_1.weight"),
        "blocks.{i}.ln1.b": Copy(f"{h}.ln_1.bias"),
        "blocks.{i}.ln2.w": Copy(f"{h}.ln_2.weight"),
        "blocks.{i}.ln2.b": Copy(f"{h}.ln_2.bias"),
        "blocks.{i}.attn.W_O": Heads(f"{h}.attn.c_proj.weight", "(n h) m -> n h m", n="n_heads"),
        "blocks.{i}.attn.b_O": Copy(f"{h}.attn.c_proj.bias"),
        "blocks.{i}.mlp.W_in": Copy(f"{h}.mlp.c_fc.weight"),
        "blocks.{i}.mlp.b_in": Copy(f"{h}.mlp.c_fc.bias"),
        "blocks.{i}.mlp.W_out": Copy(f"{h}.mlp.c_proj.weight"),
        "blocks.{i}.mlp.b_out": Copy(f"{h}.mlp.c_proj.bias"),
        "ln_final.w": Copy("transformer.ln_f.weight"),
        "ln_final.b": Copy("transformer.ln_f.bias"),
        "unembed.W_U": Transpose("transformer.wte.weight" if cfg.tie_word_embeddings else "lm_head.weight"),
    }
    for index, name in enumerate("QKV"):
        table[f"blocks.{{i}}.attn.W_{name}"] = Heads(qkv_w, "m (three n h) -> three n m h", index, three=3, n="n_heads")
        table[f"blocks.{{i}}.attn.b_{name}"] = Heads(qkv_b, "(three n h) -> three n h", index, three=3, n="n_heads")
    return table


# Old checkpoints store the causal-mask buffers; a tied checkpoint may also store lm_head.
IGNORED = (r"(transformer\.)?h\.\d+\.attn\.(bias|masked_bias)", r"lm_head\.weight")

register(
    "GPT2LMHeadModel",
    Adapter(gpt2_config, gpt2_weights, IGNORED, model_type="gpt2", prefix="transformer.", layer_index=H_LAYERS),
)
