"""What a model family is to the loader: a config mapping and a weight table.

A family adapter maps the Hugging Face config to `HookedTransformerConfig` fields and names, for
each canonical parameter, the checkpoint tensor it comes from and the transform that reshapes it.
The registry is keyed by the checkpoint's `architectures[0]`.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from hooked.config import HookedTransformerConfig, RopeScaling
from hooked.loading.transforms import Transform

WeightTable = dict[str, Transform]  # canonical parameter name (with {i} for the layer) -> transform


class UnsupportedConfigError(ValueError):
    """A config field would change the numbers in a way the adapter does not implement."""


@dataclass(frozen=True)
class Adapter:
    config: Callable[[dict[str, Any]], dict[str, Any]]  # HF config dict -> HookedTransformerConfig kwargs
    # Our config -> the weight table; with weights_read_hf, (our config, HF config dict) -> the table.
    weights: Callable[[HookedTransformerConfig], WeightTable] | Callable[[HookedTransformerConfig, dict], WeightTable]
    ignored: tuple[str, ...] = ()  # regexes of checkpoint tensors that hold no weights (old buffers)
    prefix: str = ""  # prefix of the base model's tensors, added when a checkpoint omits it
    # Tensors outside the base model (the LM head), which never carry `prefix`.
    outside_prefix: tuple[str, ...] = ("lm_head.",)
    # Finds a tensor's layer index in its name (tensors of layers beyond first_n_layers are skipped).
    layer_index: str = r"\.layers\.(\d+)\."
    # A live model's state dict (hf_model=) under checkpoint names, where transformers lays them out differently.
    live: Callable[[dict[str, Any]], dict[str, Any]] | None = None
    # The config's `model_type` (transformers builds the model from it, not from the architecture name);
    # a config naming this architecture with another model_type is refused. Empty: not checked.
    model_type: str = ""
    # Checkpoint tensor names rewritten before the table applies, (regex, replacement) pairs, the first that
    # matches: a multimodal wrapper's language model read under the text model's own names.
    renames: tuple[tuple[str, str], ...] = ()
    # (regex, what they are) of tensors of parts the model leaves out (a vision tower): not loaded, and said so
    # with a warning naming them.
    left_out: tuple[str, str] | None = None
    # Constants the reference multiplies a weight's output by (Granite's residual_multiplier), folded into the
    # parameter at load: HF config -> {canonical name as in the weight table: factor}. A factor on a tied W_U
    # unties it (the product is a copy).
    multipliers: Callable[[dict[str, Any]], dict[str, float]] | None = None
    # `weights` is called as weights(cfg, hf): tensor names depend on an HF field that our config has no use
    # for (Falcon's norm names).
    weights_read_hf: bool = False
    # Keyword arguments for `weights` from the Hugging Face config, for layouts the canonical config does not
    # show (OPT-350m's embedding projections, folded into W_E and W_U). None: `weights(cfg)` alone.
    table_options: Callable[[dict[str, Any]], dict[str, Any]] | None = None

    def renamed(self, name: str) -> str:
        """`name` as the weight table knows it (see `renames`)."""
        for pattern, replacement in self.renames:
            new, count = re.subn(pattern, replacement, name, count=1)
            if count:
                return new
        return name


H_LAYERS = r"\.h\.(\d+)\."  # GPT-2-style checkpoints number their blocks `transformer.h.{i}`

ADAPTERS: dict[str, Adapter] = {}


def register(architecture: str, adapter: Adapter) -> None:
    ADAPTERS[architecture] = adapter


def require(hf: dict[str, Any], field: str, allowed: tuple, default: Any = None) -> Any:
    """The value of `field`, which must be one of `allowed`; otherwise a clear error naming it."""
    value = hf.get(field, default)
    if value not in allowed:
        arch = (hf.get("architectures") or ["?"])[0]
        raise UnsupportedConfigError(
            f"{arch}: config field {field}={value!r} is not supported (supported: {', '.join(map(repr, allowed))}); "
            "loading it anyway would give numbers that differ from Hugging Face's."
        )
    return value


def sizes(hf: dict[str, Any]) -> dict[str, Any]:
    """The model's sizes from the field names most families share (Llama's: hidden_size, num_hidden_layers,
    num_attention_heads, num_key_value_heads, head_dim, intermediate_size, vocab_size, max_position_embeddings)."""
    n_heads = hf["num_attention_heads"]
    return {
        "d_model": hf["hidden_size"],
        "n_layers": hf["num_hidden_layers"],
        "n_heads": n_heads,
        "n_key_value_heads": hf.get("num_key_value_heads") or n_heads,
        "d_head": hf.get("head_dim") or hf["hidden_size"] // n_heads,
        "d_mlp": hf["intermediate_size"],
        "d_vocab": hf["vocab_size"],
        "n_ctx": hf["max_position_embeddings"],
    }


# Where transformers 4 kept each rotary setting that transformers 5 keeps in `rope_parameters`: top-level
# fields, plus the dict `rope_scaling` with the scaling type and factors.
LEGACY_ROPE = {"rope_theta": "rope_theta", "partial_rotary_factor": "partial_rotary_factor"}


def _typed(params: dict[str, Any]) -> dict[str, Any]:
    """Rotary parameters with their type under "rope_type" (older configs say "type"), "default" if neither."""
    params = dict(params)
    kind = params.pop("type", "default")
    return {**params, "rope_type": params.get("rope_type", kind)}


def rope_parameters(
    hf: dict[str, Any],
    new: dict[str, Any] | None,
    legacy: dict[str, str] = LEGACY_ROPE,
    scaling: str | None = "rope_scaling",
    **defaults: Any,
) -> dict[str, Any]:
    """One rotary setting as a flat transformers-5 `rope_parameters` dict, from a config written by
    transformers 5 (`new`, usually `hf["rope_parameters"]`) or by transformers 4 (`legacy`: each key's
    top-level field; `scaling`: the field holding the scaling dict, where a null one means no scaling).
    Transformers 4 reads only the older fields and 5 mostly `rope_parameters`, so a config holding both
    that disagree gives different numbers in each: that raises, naming the fields. `defaults` (the
    family's transformers defaults) fill what neither gives."""
    old = _typed(hf[scaling] or {}) if scaling is not None and scaling in hf else {}
    old.update({key: hf[field] for key, field in legacy.items() if hf.get(field) is not None})
    new = _typed(new) if new else {}
    clash = sorted(key for key in new.keys() & old.keys() if new[key] != old[key])
    if clash:
        arch = (hf.get("architectures") or ["?"])[0]
        said = "; ".join(f"{key}: {new[key]!r} there, {old[key]!r} in {legacy.get(key, scaling)}" for key in clash)
        raise UnsupportedConfigError(
            f"{arch}: config fields rope_parameters (read by transformers 5) and {', '.join(legacy.values())}"
            f"{', ' + scaling if scaling else ''} (read by transformers 4) disagree ({said}), so the numbers "
            "depend on the transformers version; remove the stale fields."
        )
    return {"rope_type": "default", **defaults, **old, **new}


ROPE_TYPES = ("default", "linear", "llama3", "yarn", "dynamic")


def rotary_fields(
    hf: dict[str, Any],
    d_head: int,
    theta: float = 10000.0,
    partial: float = 1.0,
    legacy: dict[str, str] = LEGACY_ROPE,
    rope_types: tuple[str, ...] = ROPE_TYPES,
    scaling: Callable[[dict[str, Any], dict[str, Any]], RopeScaling] | None = None,
) -> dict[str, Any]:
    """Rotary settings from either the transformers-5 `rope_parameters` or the older fields (see
    `rope_parameters`); `theta` and `partial` are the family's defaults when a config gives neither,
    `rope_types` the scalings it accepts and `scaling` (default `rope_scaling`) reads them."""
    params = rope_parameters(hf, hf.get("rope_parameters"), legacy, rope_theta=theta, partial_rotary_factor=partial)
    rope_type = params["rope_type"]
    require({"architectures": hf.get("architectures"), "rope_type": rope_type}, "rope_type", rope_types)
    return {
        "positional_embedding_type": "rotary",
        "rotary_base": float(params["rope_theta"]),
        "rotary_dim": int(d_head * params["partial_rotary_factor"]),
        "rope_scaling": None if rope_type == "default" else (scaling or rope_scaling)(hf, params),
    }


def rope_scaling(hf: dict[str, Any], params: dict[str, Any]) -> RopeScaling:
    """The linear, dynamic, llama3 or yarn scaling of `params` (a flat `rope_parameters` dict), with
    transformers' defaults (modeling_rope_utils), on which 4.57 and 5 agree, except that 5 derives a
    missing yarn factor as max_position_embeddings / original_max_position_embeddings (4.57 refuses such a
    config): that is done here. (Both read yarn's original context from the scaling dict only, never from a
    top-level original_max_position_embeddings.)"""
    kind, factor = params["rope_type"], params.get("factor")
    if kind == "linear":
        return RopeScaling("linear", float(factor))
    if kind == "dynamic":  # transformers scales from max_position_embeddings (not the original context)
        return RopeScaling("dynamic", float(factor), original_max_position_embeddings=hf["max_position_embeddings"])
    if kind == "llama3":
        fields = ("factor", "low_freq_factor", "high_freq_factor")
        original = params.get("original_max_position_embeddings") or hf["max_position_embeddings"]
        return RopeScaling("llama3", *(float(params[f]) for f in fields), int(original))
    # yarn
    original = int(params.get("original_max_position_embeddings") or hf["max_position_embeddings"])
    factor = float(factor) if factor is not None else hf["max_position_embeddings"] / original
    attention = params.get("attention_factor")
    if attention is None:  # YaRN's 0.1 ln(s) + 1, or DeepSeek's ratio of two such terms with their own weights
        mscale, mscale_all_dim = params.get("mscale"), params.get("mscale_all_dim")
        attention = (
            _mscale(factor, mscale) / _mscale(factor, mscale_all_dim) if mscale and mscale_all_dim else _mscale(factor)
        )
    return RopeScaling(
        "yarn",
        factor,
        original_max_position_embeddings=original,
        attention_factor=float(attention),
        beta_fast=float(params.get("beta_fast") or 32),
        beta_slow=float(params.get("beta_slow") or 1),
        truncate=bool(params.get("truncate", True)),
    )


def _mscale(factor: float, weight: float = 1.0) -> float:
    return 1.0 if factor <= 1 else 0.1 * weight * math.log(factor) + 1.0


LAYER_TYPES = {"full_attention": "global", "sliding_attention": "local"}


def attn_type_fields(hf: dict[str, Any], default: Sequence[str] = ()) -> dict[str, Any]:
    """`sliding_window` and per-layer `attn_types` from Hugging Face's `layer_types` ("full_attention" /
    "sliding_attention" for each layer). Older configs have none; `default` is then what transformers
    derives for the family. Like transformers, a null window means
    every layer attends globally."""
    layer_types = tuple(hf.get("layer_types") or default)
    unknown = sorted(set(layer_types) - set(LAYER_TYPES))
    if unknown:
        require({**hf, "layer_types": unknown[0]}, "layer_types", tuple(LAYER_TYPES))
    if "sliding_attention" not in layer_types or hf.get("sliding_window") is None:
        return {"sliding_window": None, "attn_types": None}
    return {"sliding_window": hf["sliding_window"], "attn_types": tuple(LAYER_TYPES[t] for t in layer_types)}
