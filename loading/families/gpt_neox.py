"""GPT-NeoX and Pythia (Hugging Face `modeling_gpt_neox.py`): LayerNorm, partial rotary, a fused qkv
projection that interleaves q, k and v within each head, and attention and MLP in parallel
(`use_parallel_residual`, each with its own norm) or in sequence."""

from __future__ import annotations

from typing import Any

from hooked.config import HookedTransformerConfig
from hooked.loading.adapter import Adapter, WeightTable, register, require, rotary_fields, sizes
from hooked.loading.transforms import Copy, Heads, HeadsCopied, Transpose

ACTS = ("gelu", "gelu_new", "gelu_fast", "gelu_pytorch_tanh", "relu", "silu")
# Outside rope_parameters, transformers (4 and 5) reads GPT-NeoX's rotary base and fraction from these
# fields; the rope_theta / partial_rotary_factor copies that 4.x also writes are ignored by it.
LEGACY_ROPE = {"rope_theta": "rotary_emb_base", "partial_rotary_factor": "rotary_pct"}


def gpt_neox_config(hf: dict[str, Any]) -> dict[str, Any]:
    fields = sizes(hf)
    d_head = fields["d_head"]
    bias = bool(hf.get("attention_bias", True))
    return {
        **fields,
        "act_fn": require(hf, "hidden_act", ACTS),
        "normalization_type": "LN",
        "eps": hf["layer_norm_eps"],
        **rotary_fields(hf, d_head, partial=0.25, legacy=LEGACY_ROPE),
        "attn_qkv_bias": bias,
        "attn_out_bias": bias,
        "parallel_attn_mlp": bool(require(hf, "use_parallel_residual", (True, False), default=True)),
        "tie_word_embeddings": bool(hf.get("tie_word_embeddings", False)),
    }


def gpt_neox_weights(cfg: HookedTransformerConfig) -> WeightTable:
    layer = "gpt_neox.layers.{i}"
    qkv = f"{layer}.attention.query_key_value"
    table: WeightTable = {
        "embed.W_E": Copy("gpt_neox.embed_in.weight"),
        "blocks.{i}.ln1.w": Copy(f"{layer}.input_layernorm.weight"),
        "blocks.{i}.ln1.b": Copy(f"{layer}.input_layernorm.bias"),
        "blocks.{i}.attn.W_O": Heads(f"{layer}.attention.dense.weight", "m (n h) -> n h m", n="n_heads"),
        "blocks.{i}.ln2.w": Copy(f"{layer}.post_attention_layernorm.weight"),
        "blocks.{i}.ln2.b": Copy(f"{layer}.post_attention_layernorm.bias"),
        "blocks.{i}.mlp.W_in": Transpose(f"{layer}.mlp.dense_h_to_4h.weight"),
        "blocks.{i}.mlp.b_in": Copy(f"{layer}.mlp.dense_h_to_4h.bias"),
        "blocks.{i}.mlp.W_out": Transpose(f"{layer}.mlp.dense_4h_to_h.weight"),
        "blocks.{i}.mlp.b_out": Copy(f"{layer}.mlp.dense_4h_to_h.bias"),
        "ln_final.w": Copy("gpt_neox.final_layer_norm.weight"),
        "ln_final.b": Copy("gpt_neox.final_layer_norm.bias"),
        "unembed.W_U": Transpose("gpt_neox.embed_in.weight" if cfg.tie_word_embeddings else "embed_out.weight"),
    }
    for index, name in enumerate("QKV"):
        # Rows are ordered head by head, and q, k, v within each head.
        table[f"blocks.{{i}}.attn.W_{name}"] = HeadsCopied(
            f"{qkv}.weight", "(n three h) m -> three n m h", index, three=3, n="n_heads"
        )
        if cfg.attn_qkv_bias:
            table[f"blocks.{{i}}.attn.b_{name}"] = HeadsCopied(
                f"{qkv}.bias", "(n three h) -> three n h", index, three=3, n="n_heads"
            )
    if cfg.attn_out_bias:
        table["blocks.{i}.attn.b_O"] = Copy(f"{layer}.attention.dense.bias")
    return table


# Old checkpoints store causal-mask buffers and rotary frequencies; a tied checkpoint may store embed_out.
IGNORED = (
    r"gpt_neox\.layers\.\d+\.attention\.(bias|masked_bias|rotary_emb\.inv_freq)",
    r"embed_out\.weight",
)


def live_names(state: dict[str, Any]) -> dict[str, Any]:
    """A live transformers 5 model names the unembedding lm_head; its files (and old ones) say embed_out."""
    return {("embed_out.weight" if name == "lm_head.weight" else name): t for name, t in state.items()}


register(
    "GPTNeoXForCausalLM",
    Adapter(
        gpt_neox_config,
        gpt_neox_weights,
        IGNORED,
        model_type="gpt_neox",
        prefix="gpt_neox.",
        outside_prefix=("embed_out.",),
        live=live_names,
    ),
)
