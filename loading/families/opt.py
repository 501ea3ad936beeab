"""OPT (Hugging Face `modeling_opt.py`): GPT-2's pre-norm block with separate q/k/v projections, a
ReLU MLP, and learned positions whose table is offset by 2 (position p is row p + 2; the first two
rows are never read for a real token and are dropped). Positions count real tokens, as ours do.

Refused: the post-norm variant (`do_layer_norm_before=False`) and the embedding projections it comes
with (`word_embed_proj_dim != hidden_size`): OPT-350m.
"""

from __future__ import annotations

from typing import Any

from hooked.config import HookedTransformerConfig
from hooked.loading.adapter import Adapter, WeightTable, register, require
from hooked.loading.transforms import Copy, Heads, RowsFrom, Transpose

ACTS = ("relu", "gelu", "gelu_new", "gelu_pytorch_tanh", "silu")
POSITION_OFFSET = 2


def opt_config(hf: dict[str, Any]) -> dict[str, Any]:
    require(hf, "do_layer_norm_before", (True,))
    require(hf, "_remove_final_layer_norm", (False,), default=False)
    require(hf, "layer_norm_elementwise_affine", (True,), default=True)
    require(hf, "word_embed_proj_dim", (hf["hidden_size"], None))
    bias = bool(require(hf, "enable_bias", (True, False), default=True))
    return {
        "d_model": hf["hidden_size"],
        "n_layers": hf["num_hidden_layers"],
        "n_heads": hf["num_attention_heads"],
        "d_mlp": hf["ffn_dim"],
        "d_vocab": hf["vocab_size"],
        "n_ctx": hf["max_position_embeddings"],
        "act_fn": require(hf, "activation_function", ACTS),
        "normalization_type": "LN",
        "eps": 1e-5,  # torch's LayerNorm default, which OPT uses
        "positional_embedding_type": "standard",
        "attn_qkv_bias": bias,
        "attn_out_bias": bias,
        "mlp_bias": bias,
        "tie_word_embeddings": bool(hf.get("tie_word_embeddings", True)),
    }


def opt_weights(cfg: HookedTransformerConfig) -> WeightTable:
    layer, attn = "model.decoder.layers.{i}", "model.decoder.layers.{i}.self_attn"
    table: WeightTable = {
        "embed.W_E": Copy("model.decoder.embed_tokens.weight"),
        "pos_embed.W_pos": RowsFrom("model.decoder.embed_positions.weight", POSITION_OFFSET),
        "blocks.{i}.ln1.w": Copy(f"{layer}.self_attn_layer_norm.weight"),
        "blocks.{i}.ln1.b": Copy(f"{layer}.self_attn_layer_norm.bias"),
        "blocks.{i}.attn.W_Q": Heads(f"{attn}.q_proj.weight", "(n h) m -> n m h", n="n_heads"),
        "blocks.{i}.attn.W_K": Heads(f"{attn}.k_proj.weight", "(n h) m -> n m h", n="n_heads"),
        "blocks.{i}.attn.W_V": Heads(f"{attn}.v_proj.weight", "(n h) m -> n m h", n="n_heads"),
        "blocks.{i}.attn.W_O": Heads(f"{attn}.out_proj.weight", "m (n h) -> n h m", n="n_heads"),
        "blocks.{i}.ln2.w": Copy(f"{layer}.final_layer_norm.weight"),
        "blocks.{i}.ln2.b": Copy(f"{layer}.final_layer_norm.bias"),
        "blocks.{i}.mlp.W_in": Transpose(f"{layer}.fc1.weight"),
        "blocks.{i}.mlp.W_out": Transpose(f"{layer}.fc2.weight"),
        "ln_final.w": Copy("model.decoder.final_layer_norm.weight"),
        "ln_final.b": Copy("model.decoder.final_layer_norm.bias"),
        "unembed.W_U": Transpose("model.decoder.embed_tokens.weight" if cfg.tie_word_embeddings else "lm_head.weight"),
    }
    if cfg.attn_qkv_bias:
        for name, proj in (("Q", "q_proj"), ("K", "k_proj"), ("V", "v_proj")):
            table[f"blocks.{{i}}.attn.b_{name}"] = Heads(f"{attn}.{proj}.bias", "(n h) -> n h", n="n_heads")
        table["blocks.{i}.attn.b_O"] = Copy(f"{attn}.out_proj.bias")
        table["blocks.{i}.mlp.b_in"] = Copy(f"{layer}.fc1.bias")
        table["blocks.{i}.mlp.b_out"] = Copy(f"{layer}.fc2.bias")
    return table


IGNORED = (r"lm_head\.weight",)  # a tied checkpoint may store it

register("OPTForCausalLM", Adapter(opt_config, opt_weights, IGNORED, model_type="opt", prefix="model.decoder."))
