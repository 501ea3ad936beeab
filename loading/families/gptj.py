"""GPT-J (Hugging Face `modeling_gptj.py`): LayerNorm, rotary on the first `rotary_dim` dims of each
head as adjacent pairs (2i, 2i + 1), no attention biases, a biased unembedding, and attention and MLP
in parallel reading one norm (loaded as both ln1 and ln2)."""

from __future__ import annotations

from typing import Any

from hooked.config import HookedTransformerConfig
from hooked.loading.adapter import H_LAYERS, Adapter, WeightTable, register, require
from hooked.loading.transforms import Copy, Heads, Transpose

ACTS = ("gelu_new", "gelu", "gelu_fast", "gelu_pytorch_tanh", "relu", "silu")


def gptj_config(hf: dict[str, Any]) -> dict[str, Any]:
    if hf.get("rotary_dim") is None:  # the reference then builds tables of d_model dims for d_head-dim heads
        require(hf, "rotary_dim", ("an integer",))
    return {
        "d_model": hf["n_embd"],
        "n_layers": hf["n_layer"],
        "n_heads": hf["n_head"],
        "d_mlp": hf.get("n_inner") or 4 * hf["n_embd"],
        "d_vocab": hf["vocab_size"],
        "n_ctx": hf["n_positions"],
        "act_fn": require(hf, "activation_function", ACTS),
        "normalization_type": "LN",
        "eps": hf["layer_norm_epsilon"],
        "positional_embedding_type": "rotary",
        "rotary_dim": hf["rotary_dim"],
        "rotary_base": 10000.0,  # fixed in the reference
        "rotary_adjacent_pairs": True,
        "attn_qkv_bias": False,
        "attn_out_bias": False,
        "parallel_attn_mlp": True,
        "unembed_bias": True,
        "tie_word_embeddings": bool(hf.get("tie_word_embeddings", False)),
    }


def gptj_weights(cfg: HookedTransformerConfig) -> WeightTable:
    h = "transformer.h.{i}"
    return {
        "embed.W_E": Copy("transformer.wte.weight"),
        "blocks.{i}.ln1.w": Copy(f"{h}.ln_1.weight"),
        "blocks.{i}.ln1.b": Copy(f"{h}.ln_1.bias"),
        "blocks.{i}.attn.W_Q": Heads(f"{h}.attn.q_proj.weight", "(n h) m -> n m h", n="n_heads"),
        "blocks.{i}.attn.W_K": Heads(f"{h}.attn.k_proj.weight", "(n h) m -> n m h", n="n_heads"),
        "blocks.{i}.attn.W_V": Heads(f"{h}.attn.v_proj.weight", "(n h) m -> n m h", n="n_heads"),
        "blocks.{i}.attn.W_O": Heads(f"{h}.attn.out_proj.weight", "m (n h) -> n h m", n="n_heads"),
        "blocks.{i}.ln2.w": Copy(f"{h}.ln_1.weight"),  # the one norm, read by the MLP too
        "blocks.{i}.ln2.b": Copy(f"{h}.ln_1.bias"),
        "blocks.{i}.mlp.W_in": Transpose(f"{h}.mlp.fc_in.weight"),
        "blocks.{i}.mlp.b_in": Copy(f"{h}.mlp.fc_in.bias"),
        "blocks.{i}.mlp.W_out": Transpose(f"{h}.mlp.fc_out.weight"),
        "blocks.{i}.mlp.b_out": Copy(f"{h}.mlp.fc_out.bias"),
        "ln_final.w": Copy("transformer.ln_f.weight"),
        "ln_final.b": Copy("transformer.ln_f.bias"),
        "unembed.W_U": Transpose("transformer.wte.weight" if cfg.tie_word_embeddings else "lm_head.weight"),
        "unembed.b_U": Copy("lm_head.bias"),
    }


# Old checkpoints store the causal-mask buffers; a tied checkpoint may also store lm_head.weight.
IGNORED = (r"transformer\.h\.\d+\.attn\.(bias|masked_bias)", r"lm_head\.weight")

register(
    "GPTJForCausalLM",
    Adapter(gptj_config, gptj_weights, IGNORED, model_type="gptj", prefix="transformer.", layer_index=H_LAYERS),
)
