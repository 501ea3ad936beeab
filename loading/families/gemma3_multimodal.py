"""Gemma 3 4B/12B/27B as released: `Gemma3ForConditionalGeneration` (Hugging Face `modeling_gemma3.py`), a
SigLIP vision tower and projector around a Gemma 3 language model, whose config is `text_config`.

Only the language model is loaded (with a warning saying so); the vision tensors are left out, so the model
takes text-only input, on which the wrapper computes exactly what its language model does. Transformers 5
saves the language model as `model.language_model.*`, transformers 4 (and the released checkpoints) as
`language_model.model.*` with `language_model.lm_head`; both are read under Gemma 3's own names.
"""

from __future__ import annotations

from typing import Any

from hooked.loading.adapter import Adapter, UnsupportedConfigError, register
from hooked.loading.families.gemma import gemma3_config, gemma_weights
from hooked.loading.families.llama import IGNORED


def gemma3_wrapper_config(hf: dict[str, Any]) -> dict[str, Any]:
    text = dict(hf.get("text_config") or {})
    tied = bool(hf.get("tie_word_embeddings", True))
    # Transformers 5 ties the LM head by the wrapper's tie_word_embeddings, 4 by text_config's.
    if bool(text.get("tie_word_embeddings", tied)) != tied:
        raise UnsupportedConfigError(
            f"Gemma3ForConditionalGeneration: tie_word_embeddings is {tied} but text_config's is "
            f"{text['tie_word_embeddings']}; transformers 5 reads the first and 4 the second, so the numbers depend "
            "on the version. Make them agree."
        )
    # The wrapper's forward applies no final soft cap in transformers 5 (some 4.x versions did): refused unless
    # null, as every released checkpoint has it.
    if text.get("final_logit_softcapping") is not None:
        raise UnsupportedConfigError(
            "Gemma3ForConditionalGeneration: text_config.final_logit_softcapping="
            f"{text['final_logit_softcapping']!r} is applied by some transformers versions and not by others; "
            "set it to null (as the released checkpoints do)."
        )
    return {**gemma3_config({**text, "architectures": hf.get("architectures")}), "tie_word_embeddings": tied}


RENAMES = (
    (r"^model\.language_model\.", "model."),  # transformers 5
    (r"^language_model\.model\.", "model."),  # transformers 4
    (r"^language_model\.lm_head\.", "lm_head."),
)
VISION = (r"(model\.)?(vision_tower|multi_modal_projector)\..*", "the vision tower and multimodal projector")

register(
    "Gemma3ForConditionalGeneration",
    Adapter(
        gemma3_wrapper_config,
        gemma_weights,
        IGNORED,
        model_type="gemma3",
        prefix="model.",
        layer_index=r"^\.?model\.layers\.(\d+)\.",  # not the vision encoder's layers
        renames=RENAMES,
        left_out=VISION,
    ),
)
