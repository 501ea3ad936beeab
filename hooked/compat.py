"""`import transformer_lens` served by hooked, for code written against TransformerLens (SAELens, circuit-tracer,
old notebooks). Opt-in: nothing changes until `install()` is called.

    import hooked.compat
    hooked.compat.install()
    import sae_lens            # its `from transformer_lens import HookedTransformer` now gets hooked's

`install()` puts a `transformer_lens` package and the submodules such code imports into `sys.modules`, each
holding hooked's classes under TransformerLens's names, so the real package (if installed) is never imported
and there is one `HookPoint` class everywhere (clients check `isinstance(module, HookPoint)`). Submodules that
are hooked modules of the same contents (`utils`, `patching`, `hook_points`, `head_detector`) are those very
module objects. A name outside this set is not emulated: importing it raises ModuleNotFoundError, which
SAELens, for one, catches for its optional parts.

Why not an import hook: a package attribute and a submodule share the name `HookedTransformer` (the class on
the package, the module in sys.modules); filling sys.modules up front keeps the import system from
rebinding the package attribute to the module.
"""

from __future__ import annotations

import sys
import types
from typing import Any

from hooked import utils
from hooked.analysis import activation_cache, head_detection, patching
from hooked.analysis.losses import Loss, Output
from hooked.components import attention, block, embeddings, kv_cache, mlp, moe, norms
from hooked.config import HookedTransformerConfig
from hooked.factored_matrix import FactoredMatrix
from hooked.hook_points import HookedRootModule, HookPoint
from hooked.loading import aliases
from hooked.loading.pretrained import DTYPE_NAMES, pretrained_config
from hooked.model import HookedTransformer

ROOT = "transformer_lens"


def get_pretrained_model_config(model_name: str, hf_cfg: dict | None = None, **kwargs: Any) -> HookedTransformerConfig:
    """TransformerLens's `loading_from_pretrained.get_pretrained_model_config`: the config of a checkpoint
    (hub id, TransformerLens short name, folder or .gguf), without loading weights. `fold_ln` and
    `checkpoint_index` / `checkpoint_value` are not supported (hooked folds nothing at config time)."""
    unsupported = sorted({"checkpoint_index", "checkpoint_value"} & set(kwargs))
    if unsupported or kwargs.pop("fold_ln", False):
        raise NotImplementedError(
            f"get_pretrained_model_config: {', '.join(unsupported) or 'fold_ln=True'} is not supported; load the "
            "checkpoint you want by name (revision=...) and fold with model.fold_layer_norm()."
        )
    if kwargs.pop("n_devices", 1) != 1:
        raise NotImplementedError("get_pretrained_model_config: a model is placed on one device; pass n_devices=1.")
    return pretrained_config(model_name, **kwargs)


def convert_hf_model_config(model_name: str, **kwargs: Any) -> dict[str, Any]:
    """TransformerLens's `convert_hf_model_config`: the config's fields as a dict (see get_pretrained_model_config)."""
    return get_pretrained_model_config(model_name, **kwargs).to_dict()


def get_official_model_name(model_name: str) -> str:
    """The hub id a TransformerLens short name stands for (any other name as it is)."""
    return aliases.hub_id(model_name)


def _module(name: str, namespace: dict[str, Any], doc: str) -> types.ModuleType:
    module = types.ModuleType(name, doc)
    module.__dict__.update(namespace)
    return module


def _package(name: str, namespace: dict[str, Any], doc: str) -> types.ModuleType:
    package = _module(name, namespace, doc)
    package.__path__ = []  # a package, whose other submodules are not found (never the real package's)
    return package


def _modules() -> dict[str, types.ModuleType]:
    """Every emulated module by its full name."""
    components = {
        "Embed": embeddings.Embed,
        "PosEmbed": embeddings.PosEmbed,
        "Unembed": embeddings.Unembed,
        "LayerNorm": norms.LayerNorm,
        "LayerNormPre": norms.LayerNormPre,
        "RMSNorm": norms.RMSNorm,
        "RMSNormPre": norms.RMSNormPre,
        "Attention": attention.Attention,
        "MLP": mlp.MLP,
        "GatedMLP": mlp.GatedMLP,
        "MoE": moe.MoE,
        "TransformerBlock": block.Block,
    }
    official = sorted(set(aliases.ALIASES.values()))
    loading_from_pretrained = {
        "get_pretrained_model_config": get_pretrained_model_config,
        "get_official_model_name": get_official_model_name,
        "convert_hf_model_config": convert_hf_model_config,
        "OFFICIAL_MODEL_NAMES": official,
        "MODEL_ALIASES": {hub: [s for s, h in aliases.ALIASES.items() if h == hub] for hub in official},
        "DTYPE_FROM_STRING": dict(DTYPE_NAMES),
    }
    past_kv = {
        "HookedTransformerKeyValueCache": kv_cache.KVCache,
        "HookedTransformerKeyValueCacheEntry": kv_cache.LayerKV,
    }
    modules = {
        f"{ROOT}.HookedTransformer": _module(
            f"{ROOT}.HookedTransformer",
            {
                "HookedTransformer": HookedTransformer,
                "HookedRootModule": HookedRootModule,
                "HookPoint": HookPoint,
                "Loss": Loss,
                "Output": Output,
                "USE_DEFAULT_VALUE": utils.USE_DEFAULT_VALUE,
                "DTYPE_FROM_STRING": dict(DTYPE_NAMES),
            },
            "hooked's HookedTransformer under TransformerLens's module name.",
        ),
        f"{ROOT}.HookedTransformerConfig": _module(
            f"{ROOT}.HookedTransformerConfig", {"HookedTransformerConfig": HookedTransformerConfig}, "hooked's config."
        ),
        f"{ROOT}.HookedRootModule": _module(
            f"{ROOT}.HookedRootModule", {"HookedRootModule": HookedRootModule}, "hooked's HookedRootModule."
        ),
        f"{ROOT}.ActivationCache": _module(
            f"{ROOT}.ActivationCache", {"ActivationCache": activation_cache.ActivationCache}, "hooked's cache."
        ),
        f"{ROOT}.FactoredMatrix": _module(
            f"{ROOT}.FactoredMatrix", {"FactoredMatrix": FactoredMatrix}, "hooked's FactoredMatrix."
        ),
        f"{ROOT}.loading_from_pretrained": _module(
            f"{ROOT}.loading_from_pretrained", loading_from_pretrained, "Config lookup by model name, via hooked."
        ),
        f"{ROOT}.past_key_value_caching": _module(f"{ROOT}.past_key_value_caching", past_kv, "hooked's KV cache."),
        f"{ROOT}.components": _package(f"{ROOT}.components", components, "hooked's components, by TL's names."),
        f"{ROOT}.components.mlps": _package(f"{ROOT}.components.mlps", {"MLP": mlp.MLP}, "hooked's MLPs."),
        f"{ROOT}.components.mlps.can_be_used_as_mlp": _module(
            f"{ROOT}.components.mlps.can_be_used_as_mlp",
            {"CanBeUsedAsMLP": mlp.MLP},
            "TransformerLens's MLP base class name (clients use it as a type hint).",
        ),
        f"{ROOT}.hook_points": sys.modules["hooked.hook_points"],
        f"{ROOT}.utils": utils,
        f"{ROOT}.patching": patching,
        f"{ROOT}.head_detector": head_detection,
    }
    modules[f"{ROOT}.loading"] = modules[f"{ROOT}.loading_from_pretrained"]  # TL's own alias
    root = _package(
        ROOT,
        {
            "HookedTransformer": HookedTransformer,
            "HookedTransformerConfig": HookedTransformerConfig,
            "HookedRootModule": HookedRootModule,
            "HookPoint": HookPoint,
            "ActivationCache": activation_cache.ActivationCache,
            "FactoredMatrix": FactoredMatrix,
            "__hooked__": True,  # how install() knows the transformer_lens in sys.modules is this one
        },
        "TransformerLens's import path, served by hooked (hooked.compat.install()).",
    )
    # Submodules as package attributes, except those whose name the package gives a class.
    for name, module in modules.items():
        parent, _, child = name.rpartition(".")
        if parent == ROOT and child not in root.__dict__:
            setattr(root, child, module)
    modules[f"{ROOT}.components"].mlps = modules[f"{ROOT}.components.mlps"]
    modules[f"{ROOT}.components.mlps"].can_be_used_as_mlp = modules[f"{ROOT}.components.mlps.can_be_used_as_mlp"]
    return {ROOT: root, **modules}


def is_installed() -> bool:
    return getattr(sys.modules.get(ROOT), "__hooked__", False)


def install() -> None:
    """Make `import transformer_lens` (and its submodules that clients import) resolve to hooked. Call it
    before anything imports transformer_lens; calling it again does nothing."""
    if is_installed():
        return
    if ROOT in sys.modules:
        where = getattr(sys.modules[ROOT], "__file__", None) or "?"
        raise RuntimeError(
            f"transformer_lens was already imported (from {where}), so code that imported it holds its classes. "
            "Call hooked.compat.install() first, before importing transformer_lens or anything that imports it "
            "(sae_lens, circuit_tracer)."
        )
    sys.modules.update(_modules())


def uninstall() -> None:
    """Undo `install()`: drop the emulated modules from sys.modules (modules that imported them keep them)."""
    if not is_installed():
        return
    for name in [name for name in sys.modules if name == ROOT or name.startswith(ROOT + ".")]:
        del sys.modules[name]
