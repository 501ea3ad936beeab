"""SAELens's `HookedSAETransformer` methods on every HookedTransformer: `add_sae`, `reset_saes`, the `saes()`
context, `run_with_saes`, `run_with_cache_with_saes`, `run_with_hooks_with_saes` and `acts_to_saes`.

A mixin of `HookedTransformer`, kept apart so the model class stays the forward pass; the splicing itself
is `splice.py`'s. SAEs are keyed by the hook they read (`sae.hook_name`), as in SAELens. Every change is
whole or not at all: a splice that fails is undone, and a context restores what was spliced before it,
also when its body raises.
"""

from __future__ import annotations

from collections.abc import Sequence
from contextlib import contextmanager

from hooked.dictionaries.sae import SAE
from hooked.dictionaries.splice import Splice

SAEs = SAE | Sequence[SAE]


class DictionaryMethods:
    @property
    def _splices(self) -> dict[str, Splice]:
        return self.__dict__.setdefault("_dictionary_splices", {})

    @property
    def acts_to_saes(self) -> dict[str, SAE]:
        """The spliced dictionaries, by the hook each reads."""
        return {name: splice.sae for name, splice in self._splices.items()}

    def add_sae(self, sae: SAE, use_error_term: bool = False, gradient: str = "model") -> None:
        """Splice `sae` in at its hook (replacing one spliced there before): the model then runs on its
        reconstruction, or, with `use_error_term`, on exactly its own activations with the SAE's features
        readable and editable (see hooked.dictionaries.splice, also for `gradient`: "model", "replacement"
        or "skip"). Stays until `reset_saes()`."""
        if not isinstance(sae, SAE):
            raise TypeError(
                f"add_sae takes a hooked.dictionaries SAE, got {type(sae).__name__}. Load an SAELens SAE's folder "
                "with hooked.dictionaries.load_sae, or use SAELens's HookedSAETransformer through hooked.compat."
            )
        for name, other in self._splices.items():
            if name != sae.hook_name and other.sae.hook_name_out == sae.hook_name_out:
                raise ValueError(
                    f"{sae.hook_name_out!r} already carries the output of the dictionary reading {name!r}; "
                    f"reset that one first (model.reset_saes([{name!r}]))."
                )
        previous = self._splices.pop(sae.hook_name, None)
        if previous is not None:
            previous.detach()
        try:
            splice = Splice(self, sae, bool(use_error_term), gradient)
            try:
                splice.attach()
            except BaseException:
                splice.detach()
                raise
        except BaseException:
            if previous is not None:
                previous.attach()
                self._splices[sae.hook_name] = previous
            self.setup()
            raise
        self._splices[sae.hook_name] = splice
        self.setup()

    def reset_saes(self, act_names: str | Sequence[str] | None = None) -> None:
        """Remove the dictionaries reading these hooks (all of them by default); the model is as before."""
        names = list(self._splices) if act_names is None else [act_names] if isinstance(act_names, str) else act_names
        unknown = [name for name in names if name not in self._splices]
        if unknown:
            raise KeyError(f"No SAE is spliced in at {unknown}; spliced: {sorted(self._splices)}.")
        for name in names:
            self._splices.pop(name).detach()
        self.setup()

    @contextmanager
    def saes(
        self, saes: SAEs = (), reset_saes_end: bool = True, use_error_term: bool | None = None, gradient: str = "model"
    ):
        """Context manager: `saes` spliced in inside (with the error term if asked; `gradient` as for
        `add_sae`), and on exit what was spliced at their hooks before is put back (also when the body or a
        splice raises)."""
        saes = [saes] if isinstance(saes, SAE) else list(saes)
        before: list[tuple[str, Splice | None]] = []
        completed = False
        try:
            for sae in saes:
                before.append((sae.hook_name, self._splices.get(sae.hook_name)))
                self.add_sae(sae, use_error_term=bool(use_error_term), gradient=gradient)
            completed = True
            yield self
        finally:
            if reset_saes_end or not completed:
                for name, previous in reversed(before):
                    current = self._splices.pop(name, None)
                    if current is not None:
                        current.detach()
                    if previous is not None:
                        previous.attach()
                        self._splices[name] = previous
                self.setup()

    def run_with_saes(
        self, *model_args, saes: SAEs = (), reset_saes_end: bool = True, use_error_term: bool | None = None, **kwargs
    ):
        """The forward pass with `saes` spliced in for this call."""
        with self.saes(saes, reset_saes_end, use_error_term):
            return self(*model_args, **kwargs)

    def run_with_cache_with_saes(
        self,
        *model_args,
        saes: SAEs = (),
        reset_saes_end: bool = True,
        use_error_term: bool | None = None,
        return_cache_object: bool = True,
        remove_batch_dim: bool = False,
        **kwargs,
    ):
        """run_with_cache with `saes` spliced in: the cache holds each SAE's `<hook>.hook_sae_*` activations."""
        with self.saes(saes, reset_saes_end, use_error_term):
            return self.run_with_cache(
                *model_args, return_cache_object=return_cache_object, remove_batch_dim=remove_batch_dim, **kwargs
            )

    def run_with_hooks_with_saes(
        self,
        *model_args,
        saes: SAEs = (),
        reset_saes_end: bool = True,
        use_error_term: bool | None = None,
        fwd_hooks: Sequence[tuple] = (),
        bwd_hooks: Sequence[tuple] = (),
        reset_hooks_end: bool = True,
        clear_contexts: bool = False,
        **kwargs,
    ):
        """run_with_hooks with `saes` spliced in (hooks may name the SAEs' points)."""
        with self.saes(saes, reset_saes_end, use_error_term):
            return self.run_with_hooks(
                *model_args,
                fwd_hooks=fwd_hooks,
                bwd_hooks=bwd_hooks,
                reset_hooks_end=reset_hooks_end,
                clear_contexts=clear_contexts,
                **kwargs,
            )
