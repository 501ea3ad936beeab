"""StableLM (Hugging Face `modeling_stablelm.py`): LayerNorm, partial rotary, a SwiGLU MLP without
biases, optional q/k/v biases, optional per-head LayerNorms on queries and keys (`qk_layernorm`,
StableLM 2 12B), and attention and MLP in sequence or in parallel (`use_parallel_residual`, one norm
for both, loaded as ln1 and ln2)."""

from __future__ import annotations

from typing import Any

from hooked.config import HookedTransformerConfig
from hooked.loading.adapter import Adapter, WeightTable, register, require, rotary_fields, sizes
from hooked.loading.transforms import Copy, Heads, Transpose

ACTS = ("silu", "gelu", "gelu_new", "gelu_pytorch_tanh", "relu")


def stablelm_config(hf: dict[str, Any]) -> dict[str, Any]:
    fields = sizes(hf)
    d_head = fields["d_head"]
    return {
        **fields,
        "act_fn": require(hf, "hidden_act", ACTS),
        "gated_mlp": True,
        "normalization_type": "LN",
        "eps": hf["layer_norm_eps"],
        **rotary_fields(hf, d_head, partial=0.25),  # transformers' default: rotary on a quarter of each head
        "attn_qkv_bias": bool(hf.get("use_qkv_bias", False)),
        "attn_out_bias": False,
        "mlp_bias": False,
        "qk_norm": "per_head" if require(hf, "qk_layernorm", (True, False), default=False) else None,
        "parallel_attn_mlp": bool(require(hf, "use_parallel_residual", (True, False), default=False)),
        "tie_word_embeddings": bool(hf.get("tie_word_embeddings", False)),
    }


def stablelm_weights(cfg: HookedTransformerConfig) -> WeightTable:
    layer, attn, mlp = "model.layers.{i}", "model.layers.{i}.self_attn", "model.layers.{i}.mlp"
    # A parallel block's MLP reads the attention's norm: the same tensor loads as ln2.
    ln2 = f"{layer}.input_layernorm" if cfg.parallel_attn_mlp else f"{layer}.post_attention_layernorm"
    table: WeightTable = {
        "embed.W_E": Copy("model.embed_tokens.weight"),
        "blocks.{i}.ln1.w": Copy(f"{layer}.input_layernorm.weight"),
        "blocks.{i}.ln1.b": Copy(f"{layer}.input_layernorm.bias"),
        "blocks.{i}.attn.W_Q": Heads(f"{attn}.q_proj.weight", "(n h) m -> n m h", n="n_heads"),
        "blocks.{i}.attn.W_K": Heads(f"{attn}.k_proj.weight", "(n h) m -> n m h", n="n_key_value_heads"),
        "blocks.{i}.attn.W_V": Heads(f"{attn}.v_proj.weight", "(n h) m -> n m h", n="n_key_value_heads"),
        "blocks.{i}.attn.W_O": Heads(f"{attn}.o_proj.weight", "m (n h) -> n h m", n="n_heads"),
        "blocks.{i}.ln2.w": Copy(f"{ln2}.weight"),
        "blocks.{i}.ln2.b": Copy(f"{ln2}.bias"),
        "blocks.{i}.mlp.W_gate": Transpose(f"{mlp}.gate_proj.weight"),
        "blocks.{i}.mlp.W_in": Transpose(f"{mlp}.up_proj.weight"),
        "blocks.{i}.mlp.W_out": Transpose(f"{mlp}.down_proj.weight"),
        "ln_final.w": Copy("model.norm.weight"),
        "ln_final.b": Copy("model.norm.bias"),
        "unembed.W_U": Transpose("model.embed_tokens.weight" if cfg.tie_word_embeddings else "lm_head.weight"),
    }
    if cfg.attn_qkv_bias:
        table["blocks.{i}.attn.b_Q"] = Heads(f"{attn}.q_proj.bias", "(n h) -> n h", n="n_heads")
        table["blocks.{i}.attn.b_K"] = Heads(f"{attn}.k_proj.bias", "(n h) -> n h", n="n_key_value_heads")
        table["blocks.{i}.attn.b_V"] = Heads(f"{attn}.v_proj.bias", "(n h) -> n h", n="n_key_value_heads")
    if cfg.qk_norm is not None:  # one weight per head, stored per head
        for head in range(cfg.n_heads):
            table[f"blocks.{{i}}.attn.q_norm.w.{head}"] = Copy(f"{attn}.q_layernorm.norms.{head}.weight")
        for head in range(cfg.n_key_value_heads):
            table[f"blocks.{{i}}.attn.k_norm.w.{head}"] = Copy(f"{attn}.k_layernorm.norms.{head}.weight")
    return table


IGNORED = (r"model\.layers\.\d+\.self_attn\.rotary_emb\.inv_freq", r"lm_head\.weight")  # lm_head: tied copy

register(
    "StableLmForCausalLM", Adapter(stablelm_config, stablelm_weights, IGNORED, model_type="stablelm", prefix="model.")
)
