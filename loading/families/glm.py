"""GLM and GLM-4 (Hugging Face `modeling_glm.py`, `modeling_glm4.py`; the GLM-4-9B and GLM-4-0414 models).

GLM: Llama with biases on q, k and v only (`attention_bias`), rotary positions on adjacent pairs (2i, 2i + 1)
of part of each head (half by default), and gate and up projections fused in one matrix (gate first).
GLM-4: GLM with an RMSNorm after each sublayer too (post_self_attn_layernorm, post_mlp_layernorm), as Gemma 2.
"""

from __future__ import annotations

from typing import Any

from hooked.config import HookedTransformerConfig
from hooked.loading.adapter import Adapter, WeightTable, register, rotary_fields
from hooked.loading.families.llama import IGNORED, llama_config, llama_weights
from hooked.loading.families.phi3 import GATE_UP
from hooked.loading.transforms import Copy, Split


def glm_config(hf: dict[str, Any]) -> dict[str, Any]:
    fields = llama_config(hf)
    return {
        **fields,
        **rotary_fields(hf, fields["d_head"], partial=0.5),
        "rotary_adjacent_pairs": True,
        "attn_qkv_bias": bool(hf.get("attention_bias", True)),
        "attn_out_bias": False,
        "mlp_bias": False,
    }


def glm4_config(hf: dict[str, Any]) -> dict[str, Any]:
    return {**glm_config(hf), "block_norms": "pre_and_post"}


def glm_weights(cfg: HookedTransformerConfig) -> WeightTable:
    # Same as llama_weights except: the fused gate/up projection, and GLM-4's post-norms.
    layer, gate_up = "model.layers.{i}", "model.layers.{i}.mlp.gate_up_proj.weight"
    table = llama_weights(cfg)
    table["blocks.{i}.mlp.W_gate"] = Split(gate_up, GATE_UP, 0, "f m -> m f")
    table["blocks.{i}.mlp.W_in"] = Split(gate_up, GATE_UP, 1, "f m -> m f")
    if cfg.block_norms == "pre_and_post":
        table["blocks.{i}.ln1_post.w"] = Copy(f"{layer}.post_self_attn_layernorm.weight")
        table["blocks.{i}.ln2_post.w"] = Copy(f"{layer}.post_mlp_layernorm.weight")
    return table


register("GlmForCausalLM", Adapter(glm_config, glm_weights, IGNORED, model_type="glm", prefix="model."))
register("Glm4ForCausalLM", Adapter(glm4_config, glm_weights, IGNORED, model_type="glm4", prefix="model."))
