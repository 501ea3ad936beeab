"""SAELens's on-disk format: a folder with `cfg.json` and `sae_weights.safetensors` (sae-lens 6, `SAE.save_model`).

`cfg.json` names the architecture and the hook (`metadata.hook_name`, and `metadata.hook_name_out` for a
transcoder; sae-lens 5 kept `hook_name` at the top level, also read); the safetensors file holds W_enc
[d_in, d_sae], W_dec [d_sae, d_out], b_enc, b_dec, and `threshold` (JumpReLU) or `W_skip` (skip
transcoders). Anything that would change the numbers and is not implemented here (an input
normalization, an SAE of one head) is refused by name, never ignored.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

from hooked.dictionaries.sae import SAE, BatchTopKSAE, JumpReLUSAE, TopKSAE

CONFIG_FILE, WEIGHTS_FILE = "cfg.json", "sae_weights.safetensors"

# SAELens's architecture name -> the class that computes it here.
ARCHITECTURES: dict[str, type[SAE]] = {
    "standard": SAE,
    "jumprelu": JumpReLUSAE,
    "topk": TopKSAE,
    "batchtopk": BatchTopKSAE,
    "transcoder": SAE,
    "skip_transcoder": SAE,
    "jumprelu_transcoder": JumpReLUSAE,
    "jumprelu_skip_transcoder": JumpReLUSAE,
}
_DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16, "float64": torch.float64}


def load_sae(folder: str | Path, device: torch.device | str | None = None, dtype: torch.dtype | None = None) -> SAE:
    """The SAE (or transcoder) SAELens saved in `folder`, on `device`, in `dtype` (default: the file's)."""
    folder = Path(folder)
    for name in (CONFIG_FILE, WEIGHTS_FILE):
        if not (folder / name).is_file():
            raise FileNotFoundError(
                f"{folder} has no {name}; an SAELens SAE folder holds {CONFIG_FILE} and {WEIGHTS_FILE}."
            )
    try:
        cfg = json.loads((folder / CONFIG_FILE).read_text())
    except json.JSONDecodeError as error:
        raise ValueError(f"{folder / CONFIG_FILE} is not valid JSON: {error}") from error
    architecture = cfg.get("architecture", "standard")
    if architecture not in ARCHITECTURES:
        raise ValueError(
            f"{folder}: SAE architecture {architecture!r} is not implemented here; known: {sorted(ARCHITECTURES)}. "
            "Load it with SAELens (SAE.load_from_disk) on a model built through hooked.compat instead."
        )
    _refuse_unimplemented(cfg, folder)
    metadata = cfg.get("metadata") or {}
    hook_name = metadata.get("hook_name") or cfg.get("hook_name")
    if not hook_name:
        raise ValueError(f"{folder / CONFIG_FILE} names no hook (metadata.hook_name); the SAE cannot be placed.")
    options = {"hook_name_out": metadata.get("hook_name_out") or cfg.get("hook_name_out")}
    if "apply_b_dec_to_input" in cfg:
        options["apply_b_dec_to_input"] = bool(cfg["apply_b_dec_to_input"])
    if issubclass(ARCHITECTURES[architecture], TopKSAE):
        options["k"] = cfg["k"]
        options["rescale_acts_by_decoder_norm"] = bool(cfg.get("rescale_acts_by_decoder_norm", False))
    weights = load_file(folder / WEIGHTS_FILE, device=str(device) if device is not None else "cpu")
    if dtype is not None:
        weights = {name: tensor.to(dtype) for name, tensor in weights.items()}
    sae = ARCHITECTURES[architecture].from_state_dict(weights, **{"hook_name": hook_name, **options})
    for field, value in (("d_in", sae.d_in), ("d_sae", sae.d_sae)):
        if field in cfg and cfg[field] != value:
            raise ValueError(f"{folder}: cfg.json says {field}={cfg[field]} but the weights give {field}={value}.")
    return sae


def _refuse_unimplemented(cfg: dict, folder: Path) -> None:
    normalization = cfg.get("normalize_activations", "none") or "none"
    if normalization != "none":
        raise ValueError(
            f"{folder}: normalize_activations={normalization!r} rescales the input at run time, which is not "
            "implemented here; fold it into the weights with SAELens first, or load it with SAELens."
        )
    head = (cfg.get("metadata") or {}).get("hook_head_index", cfg.get("hook_head_index"))
    if head is not None:
        raise ValueError(
            f"{folder}: hook_head_index={head} (an SAE of one attention head) is not implemented here; an SAE over "
            "all heads of hook_z (reshape_activations='hook_z') is."
        )
    reshape = cfg.get("reshape_activations", "none") or "none"
    if reshape not in ("none", "hook_z"):
        raise ValueError(f"{folder}: reshape_activations={reshape!r} is not one of 'none', 'hook_z'.")


def save_sae(sae: SAE, folder: str | Path) -> Path:
    """Write `sae` in SAELens's format (what `SAE.load_from_disk` of sae-lens 6 reads); returns the folder."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    architecture = sae.architecture
    if sae.is_transcoder and architecture in ("standard", "jumprelu"):
        prefix = "" if architecture == "standard" else "jumprelu_"
        architecture = f"{prefix}{'skip_' if sae.W_skip is not None else ''}transcoder"
    dtype = next(name for name, value in _DTYPES.items() if value == sae.dtype)
    cfg = {
        "architecture": architecture,
        "d_in": sae.d_in,
        "d_sae": sae.d_sae,
        "dtype": dtype,
        "device": str(sae.device),
        "apply_b_dec_to_input": sae.apply_b_dec_to_input,
        "normalize_activations": "none",
        "reshape_activations": "hook_z" if sae.hook_name.endswith("hook_z") else "none",
        "metadata": {"hook_name": sae.hook_name, **({"hook_name_out": sae.hook_name_out} if sae.is_transcoder else {})},
    }
    if sae.is_transcoder:
        cfg["d_out"] = sae.d_out
    if isinstance(sae, TopKSAE):
        cfg["k"] = sae.k
        cfg["rescale_acts_by_decoder_norm"] = sae.rescale_acts_by_decoder_norm
    (folder / CONFIG_FILE).write_text(json.dumps(cfg, indent=2))
    save_file({name: tensor.detach().contiguous() for name, tensor in sae.state_dict().items()}, folder / WEIGHTS_FILE)
    return folder
