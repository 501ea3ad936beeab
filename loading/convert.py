"""Converting a checkpoint into a model: the family's config mapping and weight table, applied tensor by tensor.

The Hugging Face model is never built. Each canonical parameter is produced from its checkpoint
tensor by the family's weight table; every checkpoint tensor must be consumed or explicitly
ignored, and every parameter produced, or loading fails before a model is returned. The model class
is handed in (`cls(cfg)`, as transformers' `from_pretrained` builds its class), so this layer never
imports the model and a subclass loads as itself.
"""

from __future__ import annotations

import math
import re
import warnings
from collections import Counter
from typing import Any, TypeVar

import torch
from torch import nn

from hooked.config import HookedTransformerConfig
from hooked.loading.adapter import ADAPTERS, Adapter
from hooked.loading.checkpoint import Checkpoint, rename
from hooked.progress import progress_bar

M = TypeVar("M", bound=nn.Module)


class UnsupportedArchitectureError(ValueError):
    pass


class CheckpointMismatchError(ValueError):
    """The checkpoint's tensors do not match what its config says the model is."""


# Architectures that are no transformer of the kind HookedTransformer is (state-space and hybrid models): said so,
# rather than listed among the ones not written yet.
NOT_TRANSFORMERS = {
    "MambaForCausalLM": "a state-space model (Mamba)",
    "Mamba2ForCausalLM": "a state-space model (Mamba-2)",
    "FalconMambaForCausalLM": "a state-space model (Falcon Mamba)",
    "RwkvForCausalLM": "a recurrent model (RWKV)",
    "JambaForCausalLM": "a hybrid of attention and Mamba layers (Jamba)",
    "Zamba2ForCausalLM": "a hybrid of attention and Mamba layers (Zamba 2)",
    "FalconH1ForCausalLM": "a hybrid of attention and Mamba layers (Falcon-H1)",
    "RecurrentGemmaForCausalLM": "a hybrid of attention and recurrent layers (RecurrentGemma)",
}


# Transformers whose blocks the canonical one cannot express yet: refused with the reason, rather than listed among
# the ones not written yet.
NOT_YET = {
    "DeepseekV2ForCausalLM": (
        "multi-head latent attention (queries, keys and values decompressed from low-rank latents, value heads "
        "narrower than query/key heads, a rotary key part shared by all heads) and dense MLPs in its first "
        "layers (first_k_dense_replace) before mixture-of-experts ones with group-limited routing"
    ),
    "DeepseekV3ForCausalLM": (
        "multi-head latent attention (as DeepSeek-V2's) and dense MLPs in its first layers (first_k_dense_replace) "
        "before mixture-of-experts ones routed by sigmoid scores with a correction bias, within expert groups"
    ),
    "Llama4ForCausalLM": (
        "chunked local attention on three layers in four and position-free (NoPE) layers with attention "
        "temperature tuning between them, and mixture-of-experts layers interleaved with dense ones "
        "(interleave_moe_layer_step) whose router scales each token's input, not the expert's output"
    ),
}


def adapter_for(hf_config: dict[str, Any]) -> tuple[str, Adapter]:
    architecture = (hf_config.get("architectures") or [None])[0]
    if architecture in NOT_TRANSFORMERS:
        raise UnsupportedArchitectureError(
            f"{architecture} is {NOT_TRANSFORMERS[architecture]}, not a transformer: HookedTransformer's blocks are "
            "attention and MLP layers only, so it cannot be loaded."
        )
    if architecture in NOT_YET:
        raise UnsupportedArchitectureError(
            f"{architecture} is not supported yet: it has {NOT_YET[architecture]}, which HookedTransformer's "
            "block (the same attention and MLP in every layer) does not express."
        )
    if architecture not in ADAPTERS and str(architecture).endswith("ForConditionalGeneration"):
        text = (hf_config.get("text_config") or {}).get("architectures") or [
            hf_config.get("text_config", {}).get("model_type")
        ]
        raise UnsupportedArchitectureError(
            f"{architecture} is a multimodal wrapper (its text model: {text[0]!r}); only text models load, and of the "
            f"wrappers only {', '.join(sorted(a for a in ADAPTERS if a.endswith('ForConditionalGeneration')))} "
            "(as its language model). Load the language model on its own: save it with transformers "
            "(model.language_model) and load that folder, or pass hf_model= a causal LM of a supported family."
        )
    if architecture not in ADAPTERS:
        raise UnsupportedArchitectureError(
            f"Architecture {architecture!r} is not supported. Supported: {', '.join(sorted(ADAPTERS))}."
        )
    return architecture, ADAPTERS[architecture]


def check_model_type(hf_config: dict[str, Any], source: str) -> None:
    """Refuse a config whose `model_type` is not its architecture's. Transformers builds the model from
    model_type, and may load one model type with another's code and save it under that architecture's
    name (EXAONE 3, model_type "exaone", is saved as LlamaForCausalLM with its own tensor names), so the
    architecture name alone would pick the wrong family."""
    architecture, adapter = adapter_for(hf_config)
    model_type = hf_config.get("model_type")
    if not adapter.model_type or model_type is None or model_type == adapter.model_type:
        return
    same = [name for name, other in ADAPTERS.items() if other.model_type == model_type]
    really = (
        f'It is a {same[0]}: set "architectures" to ["{same[0]}"] in config.json.'
        if same
        else f"That model type is not supported (supported: {', '.join(sorted(ADAPTERS))})."
    )
    raise UnsupportedArchitectureError(
        f"{source} names the architecture {architecture} but its model_type is {model_type!r} ({architecture}'s is "
        f"{adapter.model_type!r}): the checkpoint is a {model_type!r} model saved under {architecture}'s name, "
        f"not a {architecture}, so its config and tensors are not {architecture}'s. {really}"
    )


def model_config(
    hf_config: dict[str, Any],
    dtype: torch.dtype = torch.float32,
    device: torch.device = torch.device("cpu"),
    n_ctx: int | None = None,
    first_n_layers: int | None = None,
) -> HookedTransformerConfig:
    """The HookedTransformerConfig of a Hugging Face config, through its family's adapter."""
    architecture, adapter = adapter_for(hf_config)
    fields = adapter.config(hf_config)
    if n_ctx is not None:
        if fields["positional_embedding_type"] == "standard" and n_ctx > fields["n_ctx"]:
            raise ValueError(f"n_ctx={n_ctx} exceeds the {fields['n_ctx']} learned positions of this model.")
        fields["n_ctx"] = n_ctx
    if first_n_layers is not None:
        fields["n_layers"] = first_n_layers
    return HookedTransformerConfig(
        **fields,
        original_architecture=architecture,
        model_name=hf_config.get("_name_or_path") or architecture,
        device=str(device),
        dtype=dtype,
    )


def build(
    cls: type[M],
    hf_config: dict[str, Any],
    checkpoint: Checkpoint,
    dtype: torch.dtype = torch.float32,
    device: torch.device = torch.device("cpu"),
    n_ctx: int | None = None,
    first_n_layers: int | None = None,
    progress: bool | None = None,
) -> M:
    """Convert a checkpoint into a `cls(cfg)` (a HookedTransformer or subclass), accounting for every tensor.

    `progress`: a bar over the tensors (None: only where a person watches, see `hooked.progress`)."""
    architecture, adapter = adapter_for(hf_config)
    cfg = model_config(hf_config, dtype, device, n_ctx, first_n_layers)
    checkpoint = _with_prefix(_renamed(checkpoint, adapter), adapter)
    _warn_left_out(checkpoint.names(), adapter, architecture)
    # The weight table and the model grow with the config's sizes; a config that asks for more than the
    # checkpoint holds (a crafted num_hidden_layers of 10**7) is refused before either is built.
    _check_sizes(checkpoint, cfg, adapter, architecture)
    options = adapter.table_options(hf_config) if adapter.table_options else {}
    weights = adapter.weights(cfg, hf_config, **options) if adapter.weights_read_hf else adapter.weights(cfg, **options)
    factors = adapter.multipliers(hf_config) if adapter.multipliers is not None else {}
    factors = {name: factor for name, factor in factors.items() if name in weights and factor != 1.0}
    table = {
        name.format(i=layer): (t.format(layer), factors.get(name))
        for name, t in weights.items()
        for layer in (range(cfg.n_layers) if "{i}" in name else [0])
    }
    _check_tensor_names(checkpoint.names(), {n: t for n, (t, _) in table.items()}, adapter, cfg.n_layers)
    if "unembed.W_U" in factors and cfg.tie_word_embeddings:
        cfg = cfg.replace(tie_word_embeddings=False)  # the scaled W_U is a copy, no longer W_E's transpose

    with torch.device("meta"):
        model = cls(cfg)
    remaining = Counter(key for t, _ in table.values() for key in t.keys)
    loaded: dict[str, torch.Tensor] = {}
    # By default a bar only where someone watches (a terminal, a notebook), so logs and tests stay clean.
    bar = progress_bar(table.items(), progress=progress, desc="Loading weights", unit="tensor", leave=False)
    for name, (transform, factor) in bar:
        for key in transform.keys:
            if key not in loaded:
                loaded[key] = checkpoint.get(key).to(device=device, dtype=dtype)
        tensor = transform(loaded[transform.key], cfg, *(loaded[key] for key in transform.others))
        if factor is not None:
            tensor = tensor * factor
        for key in transform.keys:
            remaining[key] -= 1
            if not remaining[key]:
                del loaded[key]  # the parameters keep views of it; this is the loader's last reference
        _set_parameter(model, name, tensor, transform.key)
    unset = [name for name, p in model.named_parameters() if p.is_meta]
    if unset:
        raise CheckpointMismatchError(f"{architecture}: no checkpoint tensor produced {', '.join(unset)}.")
    return model


def _renamed(checkpoint: Checkpoint, adapter: Adapter) -> Checkpoint:
    """The checkpoint under the names the adapter's table uses (its `renames`); two names may not become one."""
    if not adapter.renames:
        return checkpoint
    mapping: dict[str, str] = {}
    for name in checkpoint.names():
        new = adapter.renamed(name)
        if new in mapping:
            raise CheckpointMismatchError(
                f"The checkpoint holds both {mapping[new]!r} and {name!r}, which are the same tensor {new!r} in "
                "two layouts (transformers 4's and 5's); remove the stale one."
            )
        mapping[new] = name
    return rename(checkpoint, mapping)


def _warn_left_out(names: list[str], adapter: Adapter, architecture: str) -> None:
    if adapter.left_out is None:
        return
    pattern, what = adapter.left_out
    count = sum(1 for name in names if re.fullmatch(pattern, name))
    if count:
        warnings.warn(
            f"{architecture}: loading the language model only; the {count} tensors of {what} are not loaded, so "
            "the model takes text-only input.",
            stacklevel=5,  # the caller of from_pretrained
        )


def _with_prefix(checkpoint: Checkpoint, adapter: Adapter) -> Checkpoint:
    names, prefix = checkpoint.names(), adapter.prefix
    if not prefix or any(name.startswith(prefix) for name in names):
        return checkpoint
    return rename(checkpoint, {(n if n.startswith(adapter.outside_prefix) else prefix + n): n for n in names})


def check_layer_count(n_layers: int, names: list[str], adapter: Adapter, source: str) -> None:
    """Refuse `n_layers` (what `source` asks for) where the checkpoint's tensor names have fewer layers."""
    # A leading "." so that names without the base model's prefix ("layers.0...") match too.
    held = {int(match.group(1)) for name in names if (match := re.search(adapter.layer_index, "." + name))}
    if n_layers > len(held):
        raise CheckpointMismatchError(
            f"{source} asks for {n_layers} layers but the checkpoint has tensors for {len(held)}. "
            "Is config.json from the same model as the weights? (first_n_layers= loads fewer.)"
        )


def _check_sizes(checkpoint: Checkpoint, cfg: HookedTransformerConfig, adapter: Adapter, architecture: str) -> None:
    """Refuse a config whose layer count or weight count exceeds what the checkpoint's tensors hold."""
    names = checkpoint.names()
    check_layer_count(cfg.n_layers, names, adapter, f"{architecture}: the config")
    # cfg.n_params counts each layer's attention and MLP matrices, with keys and values at n_heads, so a
    # checkpoint that matches its config holds more than half that many numbers (at most half are
    # key/value weights that grouped-query attention stores smaller).
    held = sum(math.prod(checkpoint.shape(name)) for name in names)
    if cfg.n_params > 2 * held:
        raise CheckpointMismatchError(
            f"{architecture}: the config describes {cfg.n_params:,} weights (d_model={cfg.d_model}, "
            f"n_heads={cfg.n_heads}, d_mlp={cfg.d_mlp}, n_layers={cfg.n_layers}) but the checkpoint holds only "
            f"{held:,} numbers. Is config.json from the same model as the weights?"
        )


def _check_tensor_names(names: list[str], table: dict, adapter: Adapter, n_layers: int) -> None:
    wanted = {key for t in table.values() for key in t.keys}
    missing = sorted(wanted - set(names))
    patterns = adapter.ignored + ((adapter.left_out[0],) if adapter.left_out else ())
    ignored = re.compile("|".join(f"(?:{p})" for p in patterns) or "(?!)")

    def dropped_layer(name: str) -> bool:  # layers beyond first_n_layers
        match = re.search(adapter.layer_index, name)
        return match is not None and int(match.group(1)) >= n_layers

    unexpected = sorted(n for n in names if n not in wanted and not ignored.fullmatch(n) and not dropped_layer(n))
    problems = []
    if missing:
        problems.append(f"missing tensors: {', '.join(missing[:20])}" + (" ..." if len(missing) > 20 else ""))
    if unexpected:
        problems.append(f"unexpected tensors: {', '.join(unexpected[:20])}" + (" ..." if len(unexpected) > 20 else ""))
    if problems:
        raise CheckpointMismatchError(
            "The checkpoint does not match its config: "
            + "; ".join(problems)
            + ". Is config.json from the same model as the weights?"
        )


def _set_parameter(model: nn.Module, name: str, tensor: torch.Tensor, source: str) -> None:
    module_name, _, leaf = name.rpartition(".")
    module = model.get_submodule(module_name)
    expected = getattr(module, leaf)
    if expected is None or tuple(expected.shape) != tuple(tensor.shape):
        shape = None if expected is None else tuple(expected.shape)
        raise CheckpointMismatchError(
            f"{source} gives {name} the shape {tuple(tensor.shape)}, but the config implies {shape}."
        )
    setattr(module, leaf, nn.Parameter(tensor))
