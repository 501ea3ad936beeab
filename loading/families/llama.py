"""Llama and its close relatives Mistral and Qwen2 (Hugging Face `modeling_llama.py` and siblings):
RMSNorm, rotary positions, grouped-query attention, SwiGLU MLP; Mistral's sliding window on every
layer, Qwen2's (with use_sliding_window) on the layers from max_window_layers on."""

from __future__ import annotations

from typing import Any

from hooked.config import HookedTransformerConfig
from hooked.loading.adapter import Adapter, WeightTable, attn_type_fields, register, require, rotary_fields, sizes
from hooked.loading.transforms import Copy, Heads, Transpose

ACTS = ("silu", "gelu", "gelu_new", "gelu_pytorch_tanh", "relu")


def llama_config(hf: dict[str, Any], theta: float = 10000.0, **rotary: Any) -> dict[str, Any]:
    """`theta`: the family's rotary base where a config gives none (transformers' default); `rotary`:
    `rotary_fields`'s other arguments (the scalings a family accepts)."""
    fields = sizes(hf)
    d_head = fields["d_head"]
    return {
        **fields,
        "act_fn": require(hf, "hidden_act", ACTS),
        "gated_mlp": True,
        "normalization_type": "RMS",
        "eps": hf["rms_norm_eps"],
        **rotary_fields(hf, d_head, theta, **rotary),
        "attn_qkv_bias": bool(hf.get("attention_bias", False)),
        "attn_out_bias": bool(hf.get("attention_bias", False)),
        "mlp_bias": bool(hf.get("mlp_bias", False)),
        "tie_word_embeddings": bool(hf.get("tie_word_embeddings", False)),
    }


def mistral_config(hf: dict[str, Any]) -> dict[str, Any]:
    return {**llama_config(hf), "sliding_window": hf.get("sliding_window")}


def qwen_attn_types(hf: dict[str, Any]) -> dict[str, Any]:
    """Qwen2 and Qwen3's `attn_type_fields`: transformers ignores sliding_window unless use_sliding_window,
    and without layer_types makes the layers from max_window_layers on sliding-window ones."""
    window = hf.get("sliding_window") if hf.get("use_sliding_window") else None
    first = hf.get("max_window_layers", 28)
    default = [
        "sliding_attention" if window is not None and i >= first else "full_attention"
        for i in range(hf["num_hidden_layers"])
    ]
    return attn_type_fields({**hf, "sliding_window": window}, default)


def qwen2_config(hf: dict[str, Any]) -> dict[str, Any]:
    # Qwen2 hard-codes biases on q/k/v and none on the output projection or the MLP.
    fields = {**llama_config(hf), **qwen_attn_types(hf)}
    return {**fields, "attn_qkv_bias": True, "attn_out_bias": False, "mlp_bias": False}


def llama_weights(cfg: HookedTransformerConfig) -> WeightTable:
    layer, attn, mlp = "model.layers.{i}", "model.layers.{i}.self_attn", "model.layers.{i}.mlp"
    table: WeightTable = {
        "embed.W_E": Copy("model.embed_tokens.weight"),
        "blocks.{i}.ln1.w": Copy(f"{layer}.input_layernorm.weight"),
        "blocks.{i}.attn.W_Q": Heads(f"{attn}.q_proj.weight", "(n h) m -> n m h", n="n_heads"),
        "blocks.{i}.attn.W_K": Heads(f"{attn}.k_proj.weight", "(n h) m -> n m h", n="n_key_value_heads"),
        "blocks.{i}.attn.W_V": Heads(f"{attn}.v_proj.weight", "(n h) m -> n m h", n="n_key_value_heads"),
        "blocks.{i}.attn.W_O": Heads(f"{attn}.o_proj.weight", "m (n h) -> n h m", n="n_heads"),
        "blocks.{i}.ln2.w": Copy(f"{layer}.post_attention_layernorm.weight"),
        "blocks.{i}.mlp.W_gate": Transpose(f"{mlp}.gate_proj.weight"),
        "blocks.{i}.mlp.W_in": Transpose(f"{mlp}.up_proj.weight"),
        "blocks.{i}.mlp.W_out": Transpose(f"{mlp}.down_proj.weight"),
        "ln_final.w": Copy("model.norm.weight"),
        "unembed.W_U": Transpose("model.embed_tokens.weight" if cfg.tie_word_embeddings else "lm_head.weight"),
    }
    if cfg.attn_qkv_bias:
        table["blocks.{i}.attn.b_Q"] = Heads(f"{attn}.q_proj.bias", "(n h) -> n h", n="n_heads")
        table["blocks.{i}.attn.b_K"] = Heads(f"{attn}.k_proj.bias", "(n h) -> n h", n="n_key_value_heads")
        table["blocks.{i}.attn.b_V"] = Heads(f"{attn}.v_proj.bias", "(n h) -> n h", n="n_key_value_heads")
    if cfg.attn_out_bias:
        table["blocks.{i}.attn.b_O"] = Copy(f"{attn}.o_proj.bias")
    if cfg.mlp_bias:
        table["blocks.{i}.mlp.b_gate"] = Copy(f"{mlp}.gate_proj.bias")
        table["blocks.{i}.mlp.b_in"] = Copy(f"{mlp}.up_proj.bias")
        table["blocks.{i}.mlp.b_out"] = Copy(f"{mlp}.down_proj.bias")
    return table


IGNORED = (r"model\.layers\.\d+\.self_attn\.rotary_emb\.inv_freq", r"lm_head\.weight")  # lm_head: tied copy

register("LlamaForCausalLM", Adapter(llama_config, llama_weights, IGNORED, model_type="llama", prefix="model."))
register("MistralForCausalLM", Adapter(mistral_config, llama_weights, IGNORED, model_type="mistral", prefix="model."))
register("Qwen2ForCausalLM", Adapter(qwen2_config, llama_weights, IGNORED, model_type="qwen2", prefix="model."))
