"""GPT-Neo (Hugging Face `modeling_gpt_neo.py`): GPT-2's block with separate q/k/v projections (no
biases), unscaled attention scores, and layers alternating global attention with local attention
over the last `window_size` tokens."""

from __future__ import annotations

from typing import Any

from hooked.config import HookedTransformerConfig
from hooked.loading.adapter import H_LAYERS, Adapter, WeightTable, register, require
from hooked.loading.transforms import Copy, Heads, Transpose

ACTS = ("gelu_new", "gelu", "gelu_fast", "gelu_pytorch_tanh", "relu", "silu")


def gpt_neo_config(hf: dict[str, Any]) -> dict[str, Any]:
    layers = hf["attention_layers"]
    for kind in set(layers):
        require({**hf, "attention_layers": kind}, "attention_layers", ("global", "local"))
    return {
        "d_model": hf["hidden_size"],
        "n_layers": hf["num_layers"],
        "n_heads": hf["num_heads"],
        "d_mlp": hf.get("intermediate_size") or 4 * hf["hidden_size"],
        "d_vocab": hf["vocab_size"],
        "n_ctx": hf["max_position_embeddings"],
        "act_fn": require(hf, "activation_function", ACTS),
        "normalization_type": "LN",
        "eps": hf["layer_norm_epsilon"],
        "positional_embedding_type": "standard",
        "attn_scale": 1.0,  # GPT-Neo does not scale its attention scores
        "attn_qkv_bias": False,
        "sliding_window": hf["window_size"] if "local" in layers else None,
        "attn_types": tuple(layers),
        "tie_word_embeddings": bool(hf.get("tie_word_embeddings", True)),
    }


def gpt_neo_weights(cfg: HookedTransformerConfig) -> WeightTable:
    h, attn = "transformer.h.{i}", "transformer.h.{i}.attn.attention"
    return {
        "embed.W_E": Copy("transformer.wte.weight"),
        "pos_embed.W_pos": Copy("transformer.wpe.weight"),
        "blocks.{i}.ln1.w": Copy(f"{h}.ln_1.weight"),
        "blocks.{i}.ln1.b": Copy(f"{h}.ln_1.bias"),
        "blocks.{i}.attn.W_Q": Heads(f"{attn}.q_proj.weight", "(n h) m -> n m h", n="n_heads"),
        "blocks.{i}.attn.W_K": Heads(f"{attn}.k_proj.weight", "(n h) m -> n m h", n="n_heads"),
        "blocks.{i}.attn.W_V": Heads(f"{attn}.v_proj.weight", "(n h) m -> n m h", n="n_heads"),
        "blocks.{i}.attn.W_O": Heads(f"{attn}.out_proj.weight", "m (n h) -> n h m", n="n_heads"),
        "blocks.{i}.attn.b_O": Copy(f"{attn}.out_proj.bias"),
        "blocks.{i}.ln2.w": Copy(f"{h}.ln_2.weight"),
        "blocks.{i}.ln2.b": Copy(f"{h}.ln_2.bias"),
        "blocks.{i}.mlp.W_in": Transpose(f"{h}.mlp.c_fc.weight"),
        "blocks.{i}.mlp.b_in": Copy(f"{h}.mlp.c_fc.bias"),
        "blocks.{i}.mlp.W_out": Transpose(f"{h}.mlp.c_proj.weight"),
        "blocks.{i}.mlp.b_out": Copy(f"{h}.mlp.c_proj.bias"),
        "ln_final.w": Copy("transformer.ln_f.weight"),
        "ln_final.b": Copy("transformer.ln_f.bias"),
        "unembed.W_U": Transpose("transformer.wte.weight" if cfg.tie_word_embeddings else "lm_head.weight"),
    }


# Old checkpoints store the (causal and local) mask buffers; a tied checkpoint may also store lm_head.
IGNORED = (r"transformer\.h\.\d+\.attn\.attention\.(bias|masked_bias)", r"lm_head\.weight")

register(
    "GPTNeoForCausalLM",
    Adapter(
        gpt_neo_config, gpt_neo_weights, IGNORED, model_type="gpt_neo", prefix="transformer.", layer_index=H_LAYERS
    ),
)
