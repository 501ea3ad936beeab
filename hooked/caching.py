"""Caching activations: the hooks that store them, and `run_with_cache`, for any HookedRootModule.

A mixin of `HookedRootModule` (hook_points.py), kept apart so each reads in one sitting; it uses the root
module's `hook_dict`, `hooks()` and `cache_class`.
"""

from __future__ import annotations

import difflib
from typing import TYPE_CHECKING, Any

import torch
from torch import Tensor

from hooked.names import NamesFilter, Slice, name_predicate, position_axis

if TYPE_CHECKING:
    from hooked.hook_points import HookFn, HookPoint


class CachingMixin:
    def get_caching_hooks(
        self,
        names_filter: NamesFilter = None,
        incl_bwd: bool = False,
        device: torch.device | str | None = None,
        remove_batch_dim: bool = False,
        cache: dict | None = None,
        pos_slice: Any = None,
    ) -> tuple[dict, list[tuple[str, HookFn]], list[tuple[str, HookFn]]]:
        """Hooks that store activations (and with `incl_bwd`, gradients as `<name>_grad`) in `cache`."""
        cache = {} if cache is None else cache
        self._check_names(names_filter)
        wanted = name_predicate(names_filter)
        slicer = Slice(pos_slice)

        def store(key: str):
            def hook(tensor: Tensor, hook: HookPoint) -> None:
                kept = tensor.detach()
                if pos_slice is not None and getattr(hook, "batch_axis", True):
                    kept = slicer.apply(kept, dim=position_axis(hook.name, kept))
                if remove_batch_dim and getattr(hook, "batch_axis", True):
                    kept = kept[0]
                cache[key] = kept.to(device) if device is not None else kept

            hook.read_only = True  # it never changes the activation (see HookPoint.has_editing_hooks)
            return hook

        names = [name for name in self.hook_dict if wanted(name)]
        fwd = [(name, store(name)) for name in names]
        bwd = [(name, store(name + "_grad")) for name in names] if incl_bwd else []
        return cache, fwd, bwd

    def add_caching_hooks(
        self,
        names_filter: NamesFilter = None,
        incl_bwd: bool = False,
        device: torch.device | str | None = None,
        remove_batch_dim: bool = False,
        cache: dict | None = None,
    ) -> dict:
        """Attach caching hooks (see get_caching_hooks) until reset_hooks(); returns the dict they fill."""
        cache, fwd, bwd = self.get_caching_hooks(names_filter, incl_bwd, device, remove_batch_dim, cache)
        for name, fn in fwd:
            self.add_hook(name, fn, dir="fwd")
        for name, fn in bwd:
            self.add_hook(name, fn, dir="bwd")
        return cache

    def cache_all(self, cache: dict, incl_bwd: bool = False, device=None, remove_batch_dim: bool = False) -> None:
        """EasyTransformer's form of add_caching_hooks: every hook point fills `cache` until reset_hooks()."""
        self.add_caching_hooks(None, incl_bwd, device, remove_batch_dim, cache)

    def cache_some(
        self, cache: dict, names: NamesFilter, incl_bwd: bool = False, device=None, remove_batch_dim: bool = False
    ) -> None:
        """cache_all for the hook points `names` selects (a name, a list, or a predicate)."""
        self.add_caching_hooks(names, incl_bwd, device, remove_batch_dim, cache)

    def run_with_cache(
        self,
        *model_args,
        names_filter: NamesFilter = None,
        device=None,
        remove_batch_dim: bool = False,
        incl_bwd: bool = False,
        reset_hooks_end: bool = True,
        clear_contexts: bool = False,
        pos_slice: Any = None,
        return_cache_object: bool = True,
        **model_kwargs,
    ):
        """Run forward and return (output, cache of every activation the filter selects).

        With `incl_bwd=True` the output (which must be a scalar, e.g. `return_type="loss"`) is
        back-propagated here and gradients land in the cache as `<name>_grad`.
        """
        if incl_bwd and (torch.is_inference_mode_enabled() or not torch.is_grad_enabled()):
            raise RuntimeError(
                "run_with_cache(incl_bwd=True) back-propagates, which torch.inference_mode() / torch.no_grad() "
                "switch off; call it outside them."
            )
        cache, fwd, bwd = self.get_caching_hooks(names_filter, incl_bwd, device, remove_batch_dim, pos_slice=pos_slice)
        with self.hooks(fwd, bwd, reset_hooks_end=reset_hooks_end, clear_contexts=clear_contexts):
            output = self(*model_args, **model_kwargs)
            if incl_bwd:
                if not isinstance(output, Tensor) or output.ndim != 0:
                    shape = tuple(output.shape) if isinstance(output, Tensor) else type(output).__name__
                    raise ValueError(
                        f"run_with_cache(incl_bwd=True) back-propagates the output, which must be a scalar, but it "
                        f"is {shape}; pass return_type='loss' (or reduce the output to one number)."
                    )
                output.backward()
        if not return_cache_object:
            return output, cache
        return output, self.cache_class(cache, self, has_batch_dim=not remove_batch_dim)

    def _check_names(self, names_filter: NamesFilter) -> None:
        """A name in a filter that is no hook point would silently cache nothing: refuse it, with the nearest."""
        names = [names_filter] if isinstance(names_filter, str) else names_filter
        if names is None or callable(names):
            return
        for name in names:
            if name not in self.hook_dict:
                close = difflib.get_close_matches(name, list(self.hook_dict), n=5, cutoff=0.5)
                hint = f" Did you mean: {', '.join(close)}?" if close else ""
                raise KeyError(f"names_filter names {name!r}, which is no hook point.{hint} (see model.hook_dict)")
