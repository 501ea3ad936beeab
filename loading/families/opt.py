"""OPT (Hugging Face `modeling_opt.py`): GPT-2's pre-norm block with separate q/k/v projections, a
ReLU MLP, and learned positions whose table is offset by 2 (position p is row p + 2; the first two
rows are never read for a real token and are dropped). Positions count real tokens, as ours do.

OPT-350m differs in two ways. Its blocks are post-norm (`do_layer_norm_before=False`): each residual
sum is normalized, and there is no final norm (block_norms "post_residual", see components/block.py).
And its embeddings are narrower than the residual stream (`word_embed_proj_dim` < hidden_size), with
bias-free linear maps around the decoder: project_in is folded into W_E and project_out into W_U, so
W_E [d_vocab, d_model] and W_U [d_model, d_vocab] stay in the residual stream's width. hook_embed is
project_in's output (the projected token embedding, to which the positions are added), and
unembed.hook_in is project_out's input (the last block's output); project_out's own output, the narrow
vector the tied embedding reads, has no hook point of its own.
"""

from __future__ import annotations

from typing import Any

from hooked.config import HookedTransformerConfig
from hooked.loading.adapter import Adapter, WeightTable, register, require
from hooked.loading.transforms import Copy, Heads, Product, RowsFrom, Transpose

ACTS = ("relu", "gelu", "gelu_new", "gelu_pytorch_tanh", "silu")
POSITION_OFFSET = 2


def opt_config(hf: dict[str, Any]) -> dict[str, Any]:
    pre_norm = bool(require(hf, "do_layer_norm_before", (True, False), default=True))
    if pre_norm:
        require(hf, "_remove_final_layer_norm", (False,), default=False)
    require(hf, "layer_norm_elementwise_affine", (True,), default=True)
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
        "block_norms": "pre" if pre_norm else "post_residual",
        "attn_qkv_bias": bias,
        "attn_out_bias": bias,
        "mlp_bias": bias,
        # Folded projections make W_U a tensor of its own, whatever the checkpoint ties.
        "tie_word_embeddings": bool(hf.get("tie_word_embeddings", True)) and not projections(hf)["projected"],
    }


def projections(hf: dict[str, Any]) -> dict[str, bool]:
    """Whether the embeddings are narrower than the stream, with project_in / project_out around the decoder,
    and whether the checkpoint's unembedding is then its (narrow) token embedding."""
    projected = hf.get("word_embed_proj_dim") not in (None, hf["hidden_size"])
    return {"projected": projected, "tied": projected and bool(hf.get("tie_word_embeddings", True))}


def opt_weights(cfg: HookedTransformerConfig, projected: bool = False, tied: bool = False) -> WeightTable:
    layer, attn, decoder = "model.decoder.layers.{i}", "model.decoder.layers.{i}.self_attn", "model.decoder"
    embed = f"{decoder}.embed_tokens.weight"
    table: WeightTable = {
        "embed.W_E": Copy(embed),
        "pos_embed.W_pos": RowsFrom(f"{decoder}.embed_positions.weight", POSITION_OFFSET),
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
        "ln_final.w": Copy(f"{decoder}.final_layer_norm.weight"),
        "ln_final.b": Copy(f"{decoder}.final_layer_norm.bias"),
        "unembed.W_U": Transpose(embed if cfg.tie_word_embeddings else "lm_head.weight"),
    }
    if cfg.block_norms == "post_residual":  # the same norms, after the sums; no final norm
        for norm, post in (("ln1", "ln1_post"), ("ln2", "ln2_post")):
            for param in ("w", "b"):
                table[f"blocks.{{i}}.{post}.{param}"] = table.pop(f"blocks.{{i}}.{norm}.{param}")
        del table["ln_final.w"], table["ln_final.b"]
    if projected:  # x @ W_E = project_in(embed(x)); h @ W_U = project_out(h) @ (the unembedding)
        table["embed.W_E"] = Product(embed, f"{decoder}.project_in.weight", "v e, m e -> v m")
        unembed = embed if tied else "lm_head.weight"
        table["unembed.W_U"] = Product(f"{decoder}.project_out.weight", unembed, "e m, v e -> m v")
    if cfg.attn_qkv_bias:
        for name, proj in (("Q", "q_proj"), ("K", "k_proj"), ("V", "v_proj")):
            table[f"blocks.{{i}}.attn.b_{name}"] = Heads(f"{attn}.{proj}.bias", "(n h) -> n h", n="n_heads")
        table["blocks.{i}.attn.b_O"] = Copy(f"{attn}.out_proj.bias")
        table["blocks.{i}.mlp.b_in"] = Copy(f"{layer}.fc1.bias")
        table["blocks.{i}.mlp.b_out"] = Copy(f"{layer}.fc2.bias")
    return table


IGNORED = (r"lm_head\.weight",)  # a tied checkpoint may store it

register(
    "OPTForCausalLM",
    Adapter(opt_config, opt_weights, IGNORED, model_type="opt", prefix="model.decoder.", table_options=projections),
)
