"""ActivationCache: a transformer run's activations (see `CacheMapping`), with the analysis TransformerLens
users call on them; each method delegates to `cache_analysis.py`, `expert_analysis.py` or `logit_analysis.py`,
which document it."""

from __future__ import annotations

from hooked.analysis import cache_analysis, expert_analysis, logit_analysis
from hooked.cache_mapping import CacheMapping


class ActivationCache(CacheMapping):
    """A read-only mapping from hook name to tensor, with shorthand keys (see `CacheMapping`) and the
    residual-stream analysis below."""

    # ---- residual-stream analysis (each delegates to cache_analysis.py, which documents it) ----

    def accumulated_resid(
        self, layer=None, incl_mid=False, apply_ln=False, pos_slice=None, mlp_input=False, return_labels=False
    ):
        return cache_analysis.accumulated_resid(self, layer, incl_mid, apply_ln, pos_slice, mlp_input, return_labels)

    def decompose_resid(
        self,
        layer=None,
        mlp_input=False,
        mode="all",
        apply_ln=False,
        pos_slice=None,
        incl_embeds=True,
        return_labels=False,
    ):
        return cache_analysis.decompose_resid(
            self, layer, mlp_input, mode, apply_ln, pos_slice, incl_embeds, return_labels
        )

    def compute_head_results(self) -> None:
        cache_analysis.compute_head_results(self)

    def stack_head_results(self, layer=-1, return_labels=False, incl_remainder=False, pos_slice=None, apply_ln=False):
        return cache_analysis.stack_head_results(self, layer, return_labels, incl_remainder, pos_slice, apply_ln)

    def stack_activation(self, activation_name, layer=-1, sublayer_type=None):
        return cache_analysis.stack_activation(self, activation_name, layer, sublayer_type)

    def get_neuron_results(self, layer, neuron_slice=None, pos_slice=None):
        return cache_analysis.get_neuron_results(self, layer, neuron_slice, pos_slice)

    def stack_neuron_results(
        self, layer, pos_slice=None, neuron_slice=None, return_labels=False, incl_remainder=False, apply_ln=False
    ):
        return cache_analysis.stack_neuron_results(
            self, layer, pos_slice, neuron_slice, return_labels, incl_remainder, apply_ln
        )

    def get_expert_results(self, layer, pos_slice=None):
        return expert_analysis.get_expert_results(self, layer, pos_slice)

    def stack_expert_results(self, layer=None, pos_slice=None, return_labels=False, apply_ln=False):
        return expert_analysis.stack_expert_results(self, layer, pos_slice, return_labels, apply_ln)

    def apply_ln_to_stack(self, stack, layer=None, mlp_input=False, pos_slice=None):
        return cache_analysis.apply_ln_to_stack(self, stack, layer, mlp_input, pos_slice)

    def logit_attrs(self, stack, tokens, incorrect_tokens=None, pos_slice=None):
        return logit_analysis.logit_attrs(self, stack, tokens, incorrect_tokens, pos_slice)

    def get_full_resid_decomposition(
        self, layer=None, mlp_input=False, expand_neurons=True, apply_ln=False, pos_slice=None, return_labels=False
    ):
        return cache_analysis.get_full_resid_decomposition(
            self, layer, mlp_input, expand_neurons, apply_ln, pos_slice, return_labels
        )

    def logit_lens(self, layer=None, incl_mid=False, pos_slice=None, mlp_input=False, return_labels=False):
        return logit_analysis.logit_lens(self, layer, incl_mid, pos_slice, mlp_input, return_labels)


# Each method's documentation is its function's (help(cache.decompose_resid) shows what it computes).
for _method, _function in {
    "accumulated_resid": cache_analysis.accumulated_resid,
    "decompose_resid": cache_analysis.decompose_resid,
    "compute_head_results": cache_analysis.compute_head_results,
    "stack_head_results": cache_analysis.stack_head_results,
    "stack_activation": cache_analysis.stack_activation,
    "get_neuron_results": cache_analysis.get_neuron_results,
    "stack_neuron_results": cache_analysis.stack_neuron_results,
    "get_expert_results": expert_analysis.get_expert_results,
    "stack_expert_results": expert_analysis.stack_expert_results,
    "apply_ln_to_stack": cache_analysis.apply_ln_to_stack,
    "get_full_resid_decomposition": cache_analysis.get_full_resid_decomposition,
    "logit_attrs": logit_analysis.logit_attrs,
    "logit_lens": logit_analysis.logit_lens,
}.items():
    getattr(ActivationCache, _method).__doc__ = _function.__doc__
del _method, _function
