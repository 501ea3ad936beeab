"""hooked: a transformer whose every activation can be read and edited, with Hugging Face's numbers.

The package is in layers, each importing only from those below it (the contract in pyproject.toml):
config and names -> hook points -> components -> analysis -> tokenization, weights, processing,
generation -> loading -> model -> pictures, with `utils` as TransformerLens's re-export namespace.
"""

import sys

from hooked import circuits, dictionaries, utils, viz
from hooked.analysis import (
    ablation,
    activation_cache,
    attribution,
    cache_analysis,
    frozen_norms,
    head_detection,
    logit_analysis,
    patch_setters,
    patching,
)
from hooked.analysis.activation_cache import ActivationCache
from hooked.analysis.head_detection import detect_head
from hooked.circuits import AttributionGraph, attribution_graph
from hooked.components import kv_cache
from hooked.config import HookedTransformerConfig, RopeScaling
from hooked.factored_matrix import FactoredMatrix
from hooked.hook_points import HookedRootModule, HookPoint
from hooked.model import HookedTransformer
from hooked.viz import heatmaps

# Any HookedRootModule's run_with_cache returns an ActivationCache (TransformerLens's behaviour); the hook
# layer cannot import the analysis layer, so it is given the class here, where every layer is in view.
HookedRootModule.cache_class = ActivationCache

# The flat module paths of earlier releases (`import hooked.patching`, `hooked.visualization`, ...) name
# the same module objects as their new homes, so old imports and monkeypatches keep working.
visualization = viz
_MOVED = {
    "ablation": ablation,
    "activation_cache": activation_cache,
    "attribution": attribution,
    "cache_analysis": cache_analysis,
    "frozen_norms": frozen_norms,
    "head_detection": head_detection,
    "heatmaps": heatmaps,
    "kv_cache": kv_cache,
    "logit_analysis": logit_analysis,
    "patch_setters": patch_setters,
    "patching": patching,
    "visualization": viz,
}
for _name, _module in _MOVED.items():
    sys.modules[f"{__name__}.{_name}"] = _module
del _name, _module

__all__ = [
    "ActivationCache",
    "AttributionGraph",
    "FactoredMatrix",
    "HookPoint",
    "HookedRootModule",
    "HookedTransformer",
    "HookedTransformerConfig",
    "RopeScaling",
    "ablation",
    "attribution",
    "attribution_graph",
    "circuits",
    "detect_head",
    "dictionaries",
    "head_detection",
    "patching",
    "utils",
    "visualization",
]
