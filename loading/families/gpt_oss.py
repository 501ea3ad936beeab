"""GPT-OSS (Hugging Face `modeling_gpt_oss.py`): a Llama-style block with biases on every attention
projection, attention sinks (a learned logit per head in each softmax's denominator: `attn.sinks`, see
SinkAttention), sliding-window and full layers alternating (`layer_types`), and a mixture of experts whose
router has a bias and takes the softmax of the top-k logits. Its experts are clamped SwiGLUs with biases:
post = glu(min(gate, limit)) * (clamp(up, -limit, limit) + 1), glu(x) = x * sigmoid(alpha * x), which with
GPT-OSS's alpha 1.702 is quick_gelu (another alpha is refused).

Checkpoints (and live models) stack the experts as `x @ W`: `mlp.experts.gate_up_proj` [experts, d_model,
2 * d_mlp], gate and up columns interleaved (gate at even columns), with `gate_up_proj_bias`, and
`down_proj` [experts, d_mlp, d_model] with `down_proj_bias`. The released checkpoints keep the experts in
MXFP4 (`quantization_config`), which is refused: dequantize them with transformers first.

Released checkpoints rotate with yarn (factor 32 over an original 4096 positions), read by the rotary
settings all families share; parity is tested with it and with the default rotary.
"""

from __future__ import annotations

from typing import Any

from hooked.config import HookedTransformerConfig
from hooked.loading.adapter import Adapter, UnsupportedConfigError, WeightTable, attn_type_fields, register, require
from hooked.loading.families.experts import moe_fields
from hooked.loading.families.llama import IGNORED, llama_config, llama_weights
from hooked.loading.transforms import Copy, Pick, Transpose

MOE = "model.layers.{i}.mlp"


def gpt_oss_config(hf: dict[str, Any]) -> dict[str, Any]:
    if hf.get("quantization_config"):
        method = hf["quantization_config"].get("quant_method", "?")
        raise UnsupportedConfigError(
            f"GptOssForCausalLM: the checkpoint is quantized ({method}); quantized experts are not implemented. "
            "Dequantize it with transformers (from_pretrained(..., quantization_config=Mxfp4Config(dequantize=True)))"
            " and save_pretrained it, or pass that model as hf_model=."
        )
    require(hf, "swiglu_alpha", (1.702,), default=1.702)
    n_layers = hf["num_hidden_layers"]
    default_types = ["sliding_attention" if i % 2 == 0 else "full_attention" for i in range(n_layers)]
    biased = {**hf, "attention_bias": hf.get("attention_bias", True)}  # transformers' default: biases
    fields = {**llama_config(biased), **attn_type_fields(hf, default_types)}
    return {
        **fields,
        **moe_fields(hf, "intermediate_size", norm_topk_prob=True),
        "act_fn": "quick_gelu",
        "gated_mlp_limit": float(hf.get("swiglu_limit", 7.0)),
        "mlp_bias": True,
        "router_bias": True,
        "attn_sinks": True,
    }


def gpt_oss_weights(cfg: HookedTransformerConfig) -> WeightTable:
    table = {name: t for name, t in llama_weights(cfg).items() if ".mlp." not in name}
    table["blocks.{i}.attn.sinks"] = Copy("model.layers.{i}.self_attn.sinks")
    table["blocks.{i}.mlp.W_router"] = Transpose(f"{MOE}.router.weight")
    table["blocks.{i}.mlp.b_router"] = Copy(f"{MOE}.router.bias")
    gate, up, every = slice(0, None, 2), slice(1, None, 2), slice(None)
    for e in range(cfg.num_experts):
        expert, stacked = f"blocks.{{i}}.mlp.experts.{e}", f"{MOE}.experts"
        table[f"{expert}.W_gate"] = Pick(f"{stacked}.gate_up_proj", (e, every, gate))
        table[f"{expert}.W_in"] = Pick(f"{stacked}.gate_up_proj", (e, every, up))
        table[f"{expert}.b_gate"] = Pick(f"{stacked}.gate_up_proj_bias", (e, gate))
        table[f"{expert}.b_in"] = Pick(f"{stacked}.gate_up_proj_bias", (e, up))
        table[f"{expert}.W_out"] = Pick(f"{stacked}.down_proj", (e,))
        table[f"{expert}.b_out"] = Pick(f"{stacked}.down_proj_bias", (e,))
    return table


register("GptOssForCausalLM", Adapter(gpt_oss_config, gpt_oss_weights, IGNORED, model_type="gpt_oss", prefix="model."))
