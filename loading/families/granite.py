"""Granite 3.x (Hugging Face `modeling_granite.py`): Llama with four constants.

`embedding_multiplier` scales the token embedding (`embed_scale`, so hook_embed is after it);
`attention_multiplier` replaces 1/sqrt(d_head) as the score scale (`attn_scale` is its inverse);
`residual_multiplier` scales each sublayer's output before it joins the residual stream, and `logits_scaling`
divides the logits. The last two are folded into the weights at load (W_O, b_O, W_out, b_out times
residual_multiplier; W_U divided by logits_scaling, a copy where the checkpoint ties it to W_E), so the
block stays the residual equation: hook_attn_out and hook_mlp_out show the scaled outputs, what the
reference adds to the stream, and resid_mid = resid_pre + attn_out, resid_post = resid_mid + mlp_out hold
exactly. These parameters are therefore the checkpoint's times those constants.
"""

from __future__ import annotations

from typing import Any

from hooked.loading.adapter import Adapter, register
from hooked.loading.families.llama import IGNORED, llama_config, llama_weights

OUTPUTS = ("blocks.{i}.attn.W_O", "blocks.{i}.attn.b_O", "blocks.{i}.mlp.W_out", "blocks.{i}.mlp.b_out")


def granite_config(hf: dict[str, Any]) -> dict[str, Any]:
    return {
        **llama_config(hf),
        "embed_scale": float(hf.get("embedding_multiplier", 1.0)),
        "attn_scale": 1.0 / float(hf.get("attention_multiplier", 1.0)),
    }


def granite_multipliers(hf: dict[str, Any]) -> dict[str, float]:
    residual = float(hf.get("residual_multiplier", 1.0))
    return {**dict.fromkeys(OUTPUTS, residual), "unembed.W_U": 1.0 / float(hf.get("logits_scaling", 1.0))}


register(
    "GraniteForCausalLM",
    Adapter(
        granite_config, llama_weights, IGNORED, model_type="granite", prefix="model.", multipliers=granite_multipliers
    ),
)
