"""hooked: a transformer whose every activation can be read and edited, with Hugging Face's numbers."""

from hooked import patching, utils
from hooked.activation_cache import ActivationCache
from hooked.config import HookedTransformerConfig, RopeScaling
from hooked.factored_matrix import FactoredMatrix
from hooked.head_detection import detect_head
from hooked.hook_points import HookedRootModule, HookPoint
from hooked.model import HookedTransformer

__all__ = [
    "ActivationCache",
    "FactoredMatrix",
    "HookPoint",
    "HookedRootModule",
    "HookedTransformer",
    "HookedTransformerConfig",
    "RopeScaling",
    "detect_head",
    "patching",
    "utils",
]
