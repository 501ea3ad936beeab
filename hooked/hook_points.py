"""Hook points: named identity modules through which every activation passes.

A `HookPoint` returns its input unchanged unless a hook function is attached, in which case the
hook sees the activation (and the HookPoint, for its name, layer and `ctx`) and may return a
replacement. `HookedRootModule` names every HookPoint in a module tree by its path and offers the
hook-management API that TransformerLens users know (`add_hook`, `hooks()`, `run_with_hooks`,
`run_with_cache`). It works on any `nn.Module` tree, not only on transformers.
"""

from __future__ import annotations

import difflib
import re
import threading
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from typing import Any, Literal

from torch import Tensor, nn
from torch.nn.modules import module as _torch_module
from torch.utils.hooks import RemovableHandle

from hooked.cache_mapping import CacheMapping
from hooked.caching import CachingMixin

HookFn = Callable[[Tensor, "HookPoint"], Tensor | None]
Direction = Literal["fwd", "bwd"]


class HookPoint(nn.Module):
    """An identity module that gives hook functions access to the activation passing through it."""

    def __init__(self, kv_of_heads: tuple[int, int] | None = None) -> None:
        super().__init__()
        self.name: str | None = None
        # (n_heads, n_key_value_heads) on a grouped-query model's key/value points, whose head axis is the
        # kv heads: an index past them in a hook is then explained (a query-head index, most likely).
        self.kv_of_heads = kv_of_heads
        self.ctx: dict[Any, Any] = {}
        # False where the activation's first axis is not the batch (a mixture-of-experts expert sees the
        # tokens routed to it, flattened): caching then neither drops a batch axis nor slices positions.
        self.batch_axis = True
        # (handle, is_permanent, level): `level` is the `hooks()` call that added the hook (None: added
        # directly), so that leaving one context removes only that context's hooks.
        self._handles: list[tuple[RemovableHandle, bool, int | None]] = []
        self._forward_hook_fns: dict[int, HookFn] = {}  # handle id -> the user's function

    @property
    def has_hooks(self) -> HookQuery:
        """Whether hooks are attached: true when any forward or backward hook is (ours, or a plain PyTorch
        hook registered on this module), and callable as TransformerLens's method,
        `has_hooks(dir="fwd", including_permanent=False, level=None)`, to ask about some of them."""
        return HookQuery(self)

    @property
    def has_editing_hooks(self) -> bool:
        """Whether a hook may change the activation: any backward hook, or a forward hook not marked
        read-only (caching hooks are), lets components skip work a pure observer cannot need. A plain
        PyTorch hook, whose intent is unknown, counts as editing."""
        if self.has_backward_hooks or self._forward_pre_hooks:
            return True
        return any(
            not getattr(self._forward_hook_fns.get(handle_id), "read_only", False) for handle_id in self._forward_hooks
        )

    @property
    def has_backward_hooks(self) -> bool:
        return bool(self._backward_hooks or self._backward_pre_hooks)

    def forward(self, x: Tensor) -> Tensor:
        return x

    def __call__(self, x: Tensor) -> Tensor:
        # A point nothing listens at returns its input without nn.Module's call machinery: a model has ~25
        # points per block, and in one-token decoding steps that machinery was a measurable share of a step.
        if (
            self._forward_hooks
            or self._forward_pre_hooks
            or self._backward_hooks
            or self._backward_pre_hooks
            or self._compiled_call_impl is not None
            or _global_module_hooks()
        ):
            return super().__call__(x)
        return x

    def layer(self) -> int:
        """The block index in this hook's name (`blocks.3.attn.hook_q` -> 3)."""
        match = re.search(r"blocks\.(\d+)\.", self.name or "")
        if match is None:
            raise ValueError(f"Hook point {self.name!r} is not inside a block, so it has no layer index.")
        return int(match.group(1))

    def add_hook(
        self,
        fn: HookFn,
        dir: Direction = "fwd",
        is_permanent: bool = False,
        prepend: bool = False,
        level: int | None = None,
    ) -> None:
        """Attach `fn(activation, hook)`; a returned tensor replaces the activation (or its gradient)."""
        if dir == "fwd":
            handle = self.register_forward_hook(self._wrap_forward(fn), prepend=prepend)
            self._forward_hook_fns[handle.id] = fn
        elif dir == "bwd":
            # Registering a full backward hook on an identity module makes autograd hand us the
            # gradient of the activation itself.
            handle = self.register_full_backward_hook(self._wrap_backward(fn), prepend=prepend)
        else:
            raise ValueError(f"dir must be 'fwd' or 'bwd', got {dir!r}.")
        self._handles.append((handle, is_permanent, level))

    def remove_hooks(
        self, dir: Direction | Literal["both"] = "both", including_permanent: bool = False, level: int | None = None
    ) -> None:
        """Remove hooks (of one direction; permanent ones only if asked; of one `hooks()` level if given).

        `ctx` is left alone: `reset_hooks(clear_contexts=...)` decides whether it is cleared.
        """
        kept = []
        for handle, permanent, hook_level in self._handles:
            is_fwd = handle.id in self._forward_hooks
            matches_dir = dir == "both" or (dir == "fwd") == is_fwd
            matches_level = level is None or hook_level == level
            if matches_dir and matches_level and (including_permanent or not permanent):
                handle.remove()
                self._forward_hook_fns.pop(handle.id, None)
            else:
                kept.append((handle, permanent, hook_level))
        self._handles = kept

    def clear_context(self) -> None:
        self.ctx.clear()

    def splice(self, fn: Callable[[Tensor], Tensor | None]) -> RemovableHandle:
        """Run `fn(activation)` here ahead of this point's hooks, a returned tensor replacing the activation:
        how a dictionary (an SAE) is spliced in (`hooked.dictionaries`). It is none of the point's hooks:
        `reset_hooks` leaves it; `unsplice(handle)` removes it. `fn.read_only`, read at every run, tells
        components whether it may change the activation (see has_editing_hooks)."""
        handle = self.register_forward_hook(lambda module, inputs, output: fn(output), prepend=True)
        self._forward_hook_fns[handle.id] = fn
        return handle

    def unsplice(self, handle: RemovableHandle) -> None:
        handle.remove()
        self._forward_hook_fns.pop(handle.id, None)

    def _wrap_forward(self, fn: HookFn):
        def forward_hook(module: nn.Module, inputs: tuple[Tensor], output: Tensor) -> Tensor | None:
            try:
                result = fn(output, self)
            except IndexError as error:
                if self.kv_of_heads is None:
                    raise
                raise IndexError(self._kv_heads_hint(error)) from error
            if result is None:
                return None
            if not isinstance(result, Tensor):
                raise TypeError(f"Hook on {self.name!r} returned {type(result).__name__}; return a Tensor or None.")
            if result.shape != output.shape:
                raise ValueError(
                    f"Hook on {self.name!r} returned shape {tuple(result.shape)} but the activation has shape "
                    f"{tuple(output.shape)}; a hook must return a tensor of the activation's shape (or None)."
                )
            _check_like(result, output, f"Hook on {self.name!r}")
            return result

        return forward_hook

    def _kv_heads_hint(self, error: IndexError) -> str:
        n_heads, n_kv = self.kv_of_heads
        return (
            f"{error} in a hook on {self.name!r}: it has {n_kv} key/value heads in this grouped-query model "
            f"({n_heads} query heads; query head h reads kv head h // {n_heads // n_kv}, model.cfg.kv_head(h)). "
            "To ablate one query head, hook attn.hook_z or attn.hook_result, which have a query-head axis."
        )

    def _wrap_backward(self, fn: HookFn):
        def backward_hook(module: nn.Module, grad_input, grad_output) -> tuple[Tensor] | None:
            # Autograd keeps the backward hooks a forward pass saw, so a hook attached during a forward runs in
            # that pass's backward even when its hooks() context has ended (TransformerLens's behaviour, which
            # circuit-tracer relies on); a forward run after the hook was removed no longer sees it.
            grad = grad_output[0]
            result = fn(grad, self)
            if result is None:
                return None
            if not isinstance(result, Tensor):
                raise TypeError(
                    f"Backward hook on {self.name!r} returned {type(result).__name__}; return a Tensor or None."
                )
            if result.shape != grad.shape:
                raise ValueError(
                    f"Backward hook on {self.name!r} returned shape {tuple(result.shape)} but the gradient has "
                    f"shape {tuple(grad.shape)}."
                )
            _check_like(result, grad, f"Backward hook on {self.name!r}")
            return (result,)

        return backward_hook


class HookQuery:
    """`hook_point.has_hooks`: truthy when any hook is attached, and callable with TransformerLens's filters."""

    def __init__(self, point: HookPoint) -> None:
        self.point = point

    def __bool__(self) -> bool:
        p = self.point
        return bool(p._forward_hooks or p._forward_pre_hooks or p._backward_hooks or p._backward_pre_hooks)

    def __call__(
        self, dir: Direction | Literal["both"] = "both", including_permanent: bool = True, level: int | None = None
    ) -> bool:
        """Whether hooks of direction `dir` (and of `hooks()` level `level`, if given) are attached; permanent
        ones count only with `including_permanent`."""
        for handle, permanent, hook_level in self.point._handles:
            is_fwd = handle.id in self.point._forward_hooks
            if dir != "both" and (dir == "fwd") != is_fwd:
                continue
            if (level is None or hook_level == level) and (including_permanent or not permanent):
                return True
        return False

    def __repr__(self) -> str:
        return repr(bool(self))


def _global_module_hooks() -> bool:
    """Whether hooks registered for every module (`torch.nn.modules.module.register_module_forward_hook` and
    kin) exist; they must see hook points too, so a point then takes nn.Module's full call path."""
    m = _torch_module
    return bool(
        m._global_forward_hooks
        or m._global_forward_pre_hooks
        or m._global_backward_hooks
        or m._global_backward_pre_hooks
    )


def is_hook_point(module: nn.Module) -> bool:
    """A HookPoint, ours or another library's of the same interface (TransformerLens's, as SAELens puts back)."""
    if isinstance(module, HookPoint):
        return True
    return not isinstance(module, HookedRootModule) and all(
        callable(getattr(module, method, None)) for method in ("add_hook", "remove_hooks", "layer")
    )


def listening(point: nn.Module) -> bool:
    """Whether anything at a hook's place wants its activation: a HookPoint with hooks attached, or any other
    module put in its place (an SAE wrapper, say). Components skip the work of an unwanted activation."""
    if isinstance(point, HookPoint):  # has_hooks, without building its HookQuery (called per point per run)
        p = point
        return bool(p._forward_hooks or p._forward_pre_hooks or p._backward_hooks or p._backward_pre_hooks)
    return True


def may_edit(point: nn.Module) -> bool:
    """Whether what is at a hook's place may change the activation (see HookPoint.has_editing_hooks)."""
    return point.has_editing_hooks if isinstance(point, HookPoint) else True


def for_editing(point: nn.Module, tensor: Tensor) -> Tensor:
    """`tensor` on its way to hook point `point`, copied where a hook there may edit it in place under autograd.

    For the outputs autograd keeps for the backward pass (fused attention's z, softmax's pattern, sqrt's norm
    scale), an in-place edit (`z[:, :, 4] = 0`) would otherwise make `.backward()` fail; the copy is made
    only then, so the unhooked forward and the identity of other points' tensors are untouched."""
    return tensor.clone() if tensor.requires_grad and may_edit(point) else tensor


def wants_gradient(point: nn.Module) -> bool:
    """Whether what is at a hook's place has backward hooks (or may: a module put in its place)."""
    return point.has_backward_hooks if isinstance(point, HookPoint) else True


def _check_like(result: Tensor, activation: Tensor, who: str) -> None:
    """A hook's replacement must have the activation's dtype and device (torch would fail later, far away)."""
    if result.dtype != activation.dtype or result.device != activation.device:
        raise TypeError(
            f"{who} returned a {result.dtype} tensor on {result.device}, but the activation is {activation.dtype} "
            f"on {activation.device}; return result.to(activation.dtype).to(activation.device)."
        )


def _hook_pairs(hooks: Sequence[tuple], argument: str) -> list[tuple]:
    """`hooks` as a list, refused unless it is (name or filter, fn) pairs (checked before any is added)."""
    if isinstance(hooks, tuple) and len(hooks) == 2 and callable(hooks[1]):
        raise TypeError(f"{argument} takes a list of (name, fn) pairs; put the one pair in a list: {argument}=[pair].")
    pairs = list(hooks)
    for pair in pairs:
        if not isinstance(pair, (tuple, list)) or len(pair) != 2 or not callable(pair[1]):
            raise TypeError(f"{argument} takes a list of (name or filter, fn) pairs; one entry is {pair!r}.")
    return pairs


_THREAD_LOCK = threading.Lock()
_CONCURRENT_USE = (
    "This model is running hooks() / run_with_hooks / run_with_cache in another thread. Hooks are attached to "
    "the model, so this run would use that thread's hooks; give each thread its own model (copy.deepcopy(model))."
)


class HookedRootModule(CachingMixin, nn.Module):
    """Base for a module tree whose HookPoints are addressed by name. Call `setup()` after building.

    `run_with_cache` returns a `cache_class`. This layer knows only `CacheMapping`; the analysis layer's
    `ActivationCache` is handed in from above (HookedTransformer names it, and the package root makes it
    every root module's default, as in TransformerLens), so this module never imports the layers above it.
    """

    cache_class: type[CacheMapping] = CacheMapping

    def setup(self) -> None:
        """Name every hook point (and module) by its path and build `hook_dict` / `mod_dict`; call it after
        building the tree or replacing a hook point's module."""
        self.mod_dict: dict[str, nn.Module] = {}
        self.hook_dict: dict[str, HookPoint] = {}
        for name, module in self.named_modules():
            if name == "":
                continue
            module.name = name  # type: ignore[assignment]
            self.mod_dict[name] = module
            if is_hook_point(module):
                self.hook_dict[name] = module

    def hook_points(self) -> Iterator[HookPoint]:
        """Every hook point, in the order `setup()` found them (forward order)."""
        return iter(self.hook_dict.values())

    # ---- adding and removing hooks -------------------------------------------------------

    def _resolve(self, name: str) -> HookPoint:
        if name in self.hook_dict:
            return self.hook_dict[name]
        close = difflib.get_close_matches(name, list(self.hook_dict), n=5, cutoff=0.5)
        hint = f" Did you mean: {', '.join(close)}?" if close else ""
        raise KeyError(f"No hook point named {name!r}.{hint} (`model.hook_dict` lists all {len(self.hook_dict)}.)")

    def _matching(self, name_or_filter: str | Callable[[str], bool] | Sequence[str]) -> list[HookPoint]:
        if isinstance(name_or_filter, str):
            return [self._resolve(name_or_filter)]
        if not callable(name_or_filter):
            return [self._resolve(name) for name in name_or_filter]
        return [hp for name, hp in self.hook_dict.items() if name_or_filter(name)]

    def add_hook(
        self,
        name_or_filter: str | Callable[[str], bool] | Sequence[str],
        hook: HookFn,
        dir: Direction = "fwd",
        is_permanent: bool = False,
        prepend: bool = False,
        level: int | None = None,
    ) -> None:
        """Attach `hook` to the named hook point, or to every hook point whose name passes the filter."""
        for hook_point in self._matching(name_or_filter):
            hook_point.add_hook(hook, dir=dir, is_permanent=is_permanent, prepend=prepend, level=level)

    def add_perma_hook(self, name_or_filter, hook: HookFn, dir: Direction = "fwd") -> None:
        """add_hook(..., is_permanent=True): a hook that only reset_hooks(including_permanent=True) removes."""
        self.add_hook(name_or_filter, hook, dir=dir, is_permanent=True)

    def reset_hooks(
        self,
        clear_contexts: bool = True,
        direction: Direction | Literal["both"] = "both",
        including_permanent: bool = False,
        level: int | None = None,
    ) -> None:
        """Remove hooks (all non-permanent ones, or only those one `hooks()` call added when `level` is given)."""
        for hook_point in self.hook_dict.values():
            hook_point.remove_hooks(direction, including_permanent=including_permanent, level=level)
            if clear_contexts:
                hook_point.clear_context()

    @contextmanager
    def hooks(
        self,
        fwd_hooks: Sequence[tuple] = (),
        bwd_hooks: Sequence[tuple] = (),
        reset_hooks_end: bool = True,
        clear_contexts: bool = False,
    ):
        """Context manager: the given hooks are active inside, and removed on exit (also on error).

        Only the hooks this call added are removed: hooks added with `add_hook`, by an enclosing
        `hooks()` block or kept by an earlier `reset_hooks_end=False` call stay attached.
        """
        # A fresh level per call (never reused), so nested or earlier contexts keep their hooks.
        fwd_hooks, bwd_hooks = _hook_pairs(fwd_hooks, "fwd_hooks"), _hook_pairs(bwd_hooks, "bwd_hooks")
        self._enter_hook_context()
        level = getattr(self, "_last_hook_level", 0) + 1
        self._last_hook_level = level
        touched: dict[int, HookPoint] = {}  # the points this call hooked: only they need visiting at the end
        try:
            for pairs, dir in ((fwd_hooks, "fwd"), (bwd_hooks, "bwd")):
                for name, fn in pairs:
                    for point in self._matching(name):
                        touched[id(point)] = point
                        point.add_hook(fn, dir=dir, level=level)
            yield self
        finally:
            try:
                if reset_hooks_end and clear_contexts:
                    self.reset_hooks(clear_contexts=True, level=level)
                elif reset_hooks_end:
                    for point in touched.values():
                        point.remove_hooks("both", level=level)
            finally:
                self._leave_hook_context()

    # ---- threads: hooks belong to the model, so one thread's hooks() would act on another's runs --------

    def _enter_hook_context(self) -> None:
        with _THREAD_LOCK:
            owner, depth = self.__dict__.get("_hook_context", (None, 0))
            me = threading.get_ident()
            if depth and owner != me:
                raise RuntimeError(_CONCURRENT_USE)
            self.__dict__["_hook_context"] = (me, depth + 1)

    def _leave_hook_context(self) -> None:
        with _THREAD_LOCK:
            owner, depth = self.__dict__["_hook_context"]
            self.__dict__["_hook_context"] = (owner if depth > 1 else None, depth - 1)

    def check_thread(self) -> None:
        """Refuse a run from one thread while another thread's hooks() / run_with_hooks / run_with_cache is
        active on this model: that run would silently use the other thread's hooks."""
        owner, depth = self.__dict__.get("_hook_context", (None, 0))
        if depth and owner != threading.get_ident():
            raise RuntimeError(_CONCURRENT_USE)

    def run_with_hooks(
        self,
        *model_args,
        fwd_hooks: Sequence[tuple] = (),
        bwd_hooks: Sequence[tuple] = (),
        reset_hooks_end: bool = True,
        clear_contexts: bool = False,
        **model_kwargs,
    ):
        """Run the forward pass with temporary hooks, given as (name or filter, fn) pairs. Backward hooks
        fire when the returned output is back-propagated, even after this call has removed them."""
        with self.hooks(fwd_hooks, bwd_hooks, reset_hooks_end, clear_contexts):
            return self(*model_args, **model_kwargs)
