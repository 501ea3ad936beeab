"""What `help()` shows a notebook user: every public method of the cache and the model has a docstring, and
from_pretrained / generate spell out their parameters instead of hiding them behind **kwargs."""

from __future__ import annotations

import inspect

import pytest

from hooked import ActivationCache, HookedTransformer


@pytest.mark.parametrize("cls", [ActivationCache, HookedTransformer])
def test_public_methods_have_docstrings(cls):
    undocumented = []
    for name, member in inspect.getmembers(cls):
        if name.startswith("_") or not (inspect.isfunction(member) or inspect.ismethod(member)):
            continue
        if not (member.__module__ or "").startswith("hooked"):  # torch's, or what other libraries patch in
            continue
        if not inspect.getdoc(member):
            undocumented.append(name)
    assert not undocumented, f"{cls.__name__} methods without a docstring: {undocumented}"


@pytest.mark.parametrize(
    ("method", "names"),
    [
        ("from_pretrained", {"dtype", "device", "tokenizer", "hf_model", "fold_ln", "n_ctx", "first_n_layers"}),
        ("generate", {"max_new_tokens", "do_sample", "top_k", "top_p", "temperature", "stop_at_eos", "return_cache"}),
    ],
)
def test_signatures_are_spelled_out(method, names):
    parameters = inspect.signature(getattr(HookedTransformer, method)).parameters
    assert names <= set(parameters), names - set(parameters)
    doc = inspect.getdoc(getattr(HookedTransformer, method))
    assert [name for name in names if name not in doc and name not in ("tokenizer", "stop_at_eos")] == []
