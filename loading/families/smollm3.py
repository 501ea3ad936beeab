"""SmolLM3 (Hugging Face `modeling_smollm3.py`): Llama whose layers listed as 0 in `no_rope_layers` (every
4th by default) use no positional encoding (NoPE), with an optional sliding window on the layers that
`layer_types` names (only with `use_sliding_window`)."""

from __future__ import annotations

from typing import Any

from hooked.loading.adapter import Adapter, attn_type_fields, register
from hooked.loading.families.llama import IGNORED, llama_config, llama_weights


def smollm3_config(hf: dict[str, Any]) -> dict[str, Any]:
    n_layers, interval = hf["num_hidden_layers"], hf.get("no_rope_layer_interval") or 4
    uses_rope = hf.get("no_rope_layers") or [int((i + 1) % interval != 0) for i in range(n_layers)]
    window = hf.get("sliding_window") if hf.get("use_sliding_window") else None
    # Without layer_types, transformers slides the NoPE layers (when a window is in use).
    default = ["sliding_attention" if window and not rope else "full_attention" for rope in uses_rope]
    return {
        **llama_config(hf, theta=2000000.0),
        **attn_type_fields({**hf, "sliding_window": window}, default),
        "nope_layers": tuple(i for i, rope in enumerate(uses_rope) if not rope),
        "tie_word_embeddings": bool(hf.get("tie_word_embeddings", True)),
    }


register("SmolLM3ForCausalLM", Adapter(smollm3_config, llama_weights, IGNORED, model_type="smollm3", prefix="model."))
