"""Placing a model's layers on several devices: a device map, for models bigger than one device.

`place(model, device_map)` puts each of the model's units, the embedding (`embed`, with `pos_embed`), each
block (`blocks.{i}`, never split) and the output (`ln_final` with `unembed`), on one device; the model's
forward then moves the residual stream (and the layer's mask and position tables) to each block's device
before it runs, so hooks see whole tensors on their layer's device. A map is "auto", planned by
accelerate's `infer_auto_device_map` from the free memory of each device (or `max_memory`), or a dict
from module names to devices in transformers' form (`{"embed": 0, "blocks.0": 0, ..., "unembed": "cpu"}`;
a name covers the modules under it, `""` the whole model; devices as ints, "cuda:1", "cpu").

The placement logic is tested on CPU (planning with fake device budgets, execution with a fake device
list); it has not been run on real multiple GPUs.
"""

from __future__ import annotations

import difflib
from typing import Any

import torch
from torch import Tensor, nn

DeviceMap = str | dict[str, int | str | torch.device]


def units(model: nn.Module) -> dict[str, list[str]]:
    """The placeable units, each a list of the module names that must share its device."""
    first = [
        name for name in ("embed", "pos_embed", "hook_tokens", "hook_embed", "hook_pos_embed") if _has(model, name)
    ]
    last = [name for name in ("unembed", "ln_final") if _has(model, name)]
    blocks = {f"blocks.{i}": [f"blocks.{i}"] for i in range(len(model.blocks))}
    return {"embed": first, **blocks, "unembed": last}


def _has(model: nn.Module, name: str) -> bool:
    return isinstance(getattr(model, name, None), nn.Module)


def resolve(model: nn.Module, device_map: DeviceMap, max_memory: dict | None = None) -> dict[str, torch.device]:
    """The device of every unit (see `units`) that `device_map` ("auto" or a dict) gives."""
    if isinstance(device_map, str):
        if device_map != "auto":
            raise ValueError(f"device_map must be 'auto' or a dict of module names to devices, got {device_map!r}.")
        device_map = plan(model, max_memory)
    elif not isinstance(device_map, dict):
        raise TypeError(f"device_map must be 'auto' or a dict of module names to devices, got {type(device_map)}.")
    names = {name for name, _ in model.named_modules()} | {name for name, _ in model.named_parameters()}
    for key in device_map:
        if key not in names:
            close = difflib.get_close_matches(key, [n for n in names if n.count(".") <= 1], n=3)
            hint = f" Did you mean: {', '.join(close)}?" if close else ""
            raise KeyError(f"device_map names {key!r}, which is no module of this model.{hint}")
    placed = {}
    for unit, members in units(model).items():
        # The unit goes where its first module goes; the rest follow unless the map names them elsewhere.
        device = _device(_lookup(device_map, members[0], unit))
        named = {_device(d) for k, d in device_map.items() if any(k == m or k.startswith(m + ".") for m in members)}
        if named - {device}:
            raise ValueError(
                f"device_map puts parts of {unit} ({', '.join(members)}) on different devices "
                f"({', '.join(sorted(map(str, named | {device})))}); a unit runs on one device: map it as a whole."
            )
        placed[unit] = device
    return placed


def _lookup(device_map: dict, name: str, unit: str) -> Any:
    """The device of the longest key of `device_map` that is `name` or a module above it."""
    parts = name.split(".")
    for n in range(len(parts), -1, -1):
        key = ".".join(parts[:n])
        if key in device_map:
            return device_map[key]
    raise ValueError(f"device_map gives no device for {name!r} (of {unit}); add it, or a '' entry for the rest.")


def _device(device: int | str | torch.device) -> torch.device:
    if isinstance(device, int):
        return torch.device("cuda", device)
    if device == "disk":
        raise ValueError("device_map: 'disk' offloading is not supported; give every unit a device or 'cpu'.")
    return torch.device(device)


def plan(model: nn.Module, max_memory: dict | None = None) -> dict[str, int | str]:
    """accelerate's `infer_auto_device_map`, never splitting a block (`max_memory` as accelerate takes it:
    {0: "10GiB", 1: "10GiB", "cpu": "30GiB"}; None: what each device has free). Works on a model built on
    the meta device, which is how a plan can be made before any weight is read."""
    try:
        from accelerate import infer_auto_device_map
    except ImportError as error:
        raise ImportError("device_map='auto' plans with accelerate: pip install accelerate.") from error
    block_classes = sorted({type(block).__name__ for block in model.blocks})
    planned = dict(infer_auto_device_map(model, max_memory=max_memory, no_split_module_classes=block_classes))
    # accelerate may part the small modules of a unit (ln_final from unembed): each goes where the unit's
    # first module went.
    for members in units(model).values():
        device = _lookup(planned, members[0], members[0])
        planned.update({member: device for member in members})
    return planned


def place(model: nn.Module, device_map: DeviceMap, max_memory: dict | None = None) -> dict[str, torch.device]:
    """Move each unit to its device and tell the model where its blocks are (`model.layer_devices`);
    returns the unit -> device map."""
    placed = resolve(model, device_map, max_memory)
    for unit, members in units(model).items():
        for member in members:
            move_module(model.get_submodule(member), placed[unit])
    blocks = [placed[f"blocks.{i}"] for i in range(len(model.blocks))]
    model.__dict__["layer_devices"] = (*blocks, placed["unembed"])
    model.__dict__["device_map"] = {unit: str(device) for unit, device in placed.items()}
    return placed


def observed_devices(model: nn.Module) -> tuple[torch.device, ...]:
    """Each block's device, then the output's (`ln_final` and `unembed`), from where their weights are."""
    return tuple(_first_device(module, model) for module in (*model.blocks, model.unembed))


def _first_device(module: nn.Module, model: nn.Module) -> torch.device:
    tensor = next(module.parameters(), None)
    return tensor.device if tensor is not None else model.embed.W_E.device


def move_module(module: nn.Module, device: torch.device) -> None:
    module.to(device)


def to_device(device: torch.device, *tensors: Tensor | tuple | None) -> tuple:
    """`tensors` (tensors, tuples of tensors such as rotary tables, or None) on `device`."""
    return tuple(_move(t, device) for t in tensors)


def _move(value, device: torch.device):
    if value is None:
        return None
    if isinstance(value, tuple):
        return tuple(_move(v, device) for v in value)
    return move_tensor(value, device)


def move_tensor(tensor: Tensor, device: torch.device) -> Tensor:
    return tensor.to(device)
