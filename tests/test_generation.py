"""Generation: greedy parity with transformers, the cache, padding, hooks at every step, sampling options."""

from __future__ import annotations

import pytest
import torch
from conftest import save_tiny, tiny_tokenizer
from transformers import GPT2Config, LlamaConfig

from hooked import HookedTransformer, HookedTransformerConfig

HF_CONFIGS = {
    "gpt2": lambda: GPT2Config(n_embd=64, n_layer=2, n_head=4, vocab_size=97, n_positions=64),
    "llama": lambda: LlamaConfig(
        hidden_size=64,
        intermediate_size=96,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        vocab_size=97,
        max_position_embeddings=64,
    ),
}
LLAMA_LIKE = HookedTransformerConfig(
    d_model=32,
    n_layers=2,
    n_heads=4,
    n_key_value_heads=2,
    d_vocab=64,
    n_ctx=64,
    d_mlp=48,
    act_fn="silu",
    gated_mlp=True,
    normalization_type="RMS",
    positional_embedding_type="rotary",
)


@pytest.fixture
def model():
    torch.manual_seed(1)
    return HookedTransformer(LLAMA_LIKE, tokenizer=tiny_tokenizer()).eval()


@pytest.mark.parametrize("family", sorted(HF_CONFIGS))
def test_greedy_tokens_equal_transformers_generate(family, tmp_path):
    hf = save_tiny(HF_CONFIGS[family](), tmp_path)
    hf.generation_config.eos_token_id = None  # run the full length on both sides
    hf.generation_config.pad_token_id = 0
    ours = HookedTransformer.from_pretrained(tmp_path)
    prompt = torch.randint(0, 97, (2, 6))
    # An explicit mask: otherwise transformers treats any prompt token equal to pad_token_id as padding.
    expected = hf.generate(prompt, attention_mask=torch.ones_like(prompt), max_new_tokens=20, do_sample=False)
    for use_cache in (True, False):
        got = ours.generate(
            prompt, max_new_tokens=20, do_sample=False, stop_at_eos=False, use_past_kv_cache=use_cache, verbose=False
        )
        assert torch.equal(got, expected), f"use_past_kv_cache={use_cache}"
    # A strong repetition penalty changes the continuation; transformers applies the same rule.
    kwargs = dict(max_new_tokens=20, do_sample=False, repetition_penalty=3.0)
    expected = hf.generate(prompt, attention_mask=torch.ones_like(prompt), **kwargs)
    assert not torch.equal(expected[:, 6:], got[:, 6:])
    assert torch.equal(ours.generate(prompt, stop_at_eos=False, verbose=False, **kwargs), expected)


def test_left_padded_batch_rows_generate_as_alone(model):
    prompts = ["the cat sat on the mat", "hello", "When Mary and John went"]
    batch = model.generate(
        prompts, max_new_tokens=8, do_sample=False, stop_at_eos=False, return_type="tokens", verbose=False
    )
    new_batch = batch[:, -8:]
    for i, prompt in enumerate(prompts):
        alone = model.generate(
            prompt, max_new_tokens=8, do_sample=False, stop_at_eos=False, return_type="tokens", verbose=False
        )
        assert torch.equal(new_batch[i], alone[0, -8:]), f"row {i}"


def test_left_padded_ids_without_a_mask_generate_as_alone(model):
    """A left-padded tensor of ids (the tokenizer pads left) is masked from its leading pad tokens."""
    model.set_tokenizer(model.tokenizer, default_padding_side="left")
    tokens = model.to_tokens(["the cat sat on the mat", "hello"])
    kwargs = dict(max_new_tokens=6, do_sample=False, stop_at_eos=False, verbose=False, return_type="tokens")
    batch = model.generate(tokens, **kwargs)
    assert torch.equal(batch[1, -6:], model.generate("hello", **kwargs)[0, -6:])


def test_an_empty_prompt_without_bos_is_refused_by_name(model):
    with pytest.raises(ValueError, match="no tokens to continue"):
        model.generate("", prepend_bos=False, verbose=False)
    assert model.generate("", max_new_tokens=2, stop_at_eos=False, verbose=False, return_type="tokens").shape == (1, 3)


def test_model_without_tokenizer_generates_from_ids():
    bare = HookedTransformer(LLAMA_LIKE).eval()
    out = bare.generate(torch.tensor([[1, 2, 3]]), max_new_tokens=5, stop_at_eos=False, do_sample=False, verbose=False)
    assert out.shape == (1, 8) and torch.equal(out[0, :3], torch.tensor([1, 2, 3]))
    with pytest.raises(ValueError, match="eos_token_id"):
        bare.generate(torch.tensor([[1, 2, 3]]), max_new_tokens=2, verbose=False)


def test_a_steering_hook_applies_at_every_step(model):
    prompt = model.to_tokens("the cat sat")
    kwargs = dict(max_new_tokens=10, do_sample=False, stop_at_eos=False, verbose=False)
    plain = model.generate(prompt, **kwargs)
    mary = model.to_single_token(" Mary")
    direction = model.W_U[:, mary] / model.W_U[:, mary].norm()
    calls = []

    def steer(resid, hook):
        calls.append(resid.shape[1])
        return resid + 50.0 * direction

    with model.hooks(fwd_hooks=[("blocks.1.hook_resid_post", steer)]):
        steered = model.generate(prompt, **kwargs)
    assert (plain[0, 4:] != mary).any() and (steered[0, 4:] == mary).all()
    assert calls == [4] + [1] * 9  # one call per step: the prompt, then one new position each
    assert torch.equal(model.generate(prompt, **kwargs), plain)  # the hook is gone


def test_sampling_is_reproducible_with_a_seed(model):
    kwargs = dict(max_new_tokens=12, stop_at_eos=False, verbose=False, return_type="tokens", temperature=2.0)
    first = model.generate("hello", seed=3, **kwargs)
    assert torch.equal(first, model.generate("hello", seed=3, **kwargs))
    assert any(not torch.equal(first, model.generate("hello", seed=s, **kwargs)) for s in range(4, 8))
    greedy = model.generate("hello", do_sample=False, **kwargs)
    assert torch.equal(model.generate("hello", top_k=1, seed=5, **kwargs), greedy)


def test_stop_at_eos_ends_rows_and_pads_them(model):
    greedy = model.generate(
        ["hello", "the cat"], max_new_tokens=6, do_sample=False, stop_at_eos=False, return_type="tokens", verbose=False
    )
    eos = int(greedy[0, -4])  # make row 0's third new token count as EOS
    out = model.generate(
        ["hello", "the cat"],
        max_new_tokens=6,
        do_sample=False,
        eos_token_id=[eos, 10**6 - 1],
        return_type="tokens",
        verbose=False,
    )
    assert torch.equal(out[0, -6:-3], greedy[0, -6:-3])
    assert (out[0, -3:] == eos).all()


def test_stream_yields_the_same_tokens_as_generate(model):
    full = model.generate(
        "the cat", max_new_tokens=7, do_sample=False, stop_at_eos=False, return_type="tokens", verbose=False
    )
    steps = list(model.generate_stream("the cat", max_new_tokens=7, do_sample=False, stop_at_eos=False))
    assert len(steps) == 7 and all(step.shape == (1,) for step in steps)
    assert torch.equal(torch.stack(steps, dim=1)[0], full[0, -7:])


def test_return_types(model):
    kwargs = dict(max_new_tokens=3, do_sample=False, stop_at_eos=False, verbose=False)
    text = model.generate("the cat", **kwargs)
    assert isinstance(text, str) and text.startswith("the cat")
    texts = model.generate(["the cat", "hello"], **kwargs)
    assert isinstance(texts, list) and len(texts) == 2 and texts[1].startswith("hello")
    tokens = model.generate("the cat", return_type="tokens", **kwargs)
    assert tokens.shape == (1, model.to_tokens("the cat").shape[1] + 3)
    assert model.generate(tokens[:, :-3], **kwargs).shape == tokens.shape


def test_return_cache_holds_every_position_as_generation_saw_it(model):
    """Each step's new position, recorded by a hook during generation on the key-value cache, equals that
    position in the returned cache; the cache spans the prompt and every generated token."""
    seen = {"resid": [], "pattern": []}

    def record(name):
        def hook(activation, hook):
            last = activation[:, -1] if name == "resid" else activation[:, :, -1]
            seen[name].append(last.clone())

        return hook

    prompt = model.to_tokens(["the cat sat on", "When Mary and John"])
    hooks = [("blocks.1.hook_resid_post", record("resid")), ("blocks.0.attn.hook_pattern", record("pattern"))]
    with model.hooks(fwd_hooks=hooks):
        tokens, cache = model.generate(prompt, max_new_tokens=4, do_sample=False, stop_at_eos=False, return_cache=True)
    n_prompt, n_total = prompt.shape[1], tokens.shape[1]
    assert n_total == n_prompt + 4 and cache["resid_post", 1].shape[:2] == (2, n_total)
    # Hooks fired for the prompt, for the 3 steps that fed a new token (the 4th is never fed), and once more
    # for the final pass over the whole sequence.
    assert len(seen["resid"]) == 5
    during = torch.stack(seen["resid"][:4], dim=1)  # last positions: n_prompt - 1 ... n_total - 2
    torch.testing.assert_close(cache["resid_post", 1][:, n_prompt - 1 : n_total - 1], during, atol=1e-5, rtol=1e-5)
    for step, row in enumerate(seen["pattern"][1:4]):  # [batch, n_heads, keys so far]
        position = n_prompt + step
        torch.testing.assert_close(cache["pattern", 0][:, :, position, : position + 1], row, atol=1e-6, rtol=1e-5)
    only = model.generate(
        prompt,
        max_new_tokens=4,
        do_sample=False,
        stop_at_eos=False,
        return_cache=True,
        names_filter="blocks.0.hook_resid_pre",
    )[1]
    assert list(only) == ["blocks.0.hook_resid_pre"]


@pytest.mark.parametrize("use_past_kv_cache", [True, False], ids=["kv-cache", "no-cache"])
def test_hooks_see_one_position_per_step_on_the_kv_cache(model, use_past_kv_cache):
    """The documented rule (generate's docstring): the prompt once, then one position per step, whose absolute
    position (left padding included) is the pattern's key count minus one; without the cache, everything."""
    seen = {"resid": [], "pattern": [], "offset": []}

    def resid(act, hook):
        seen["resid"].append(act.shape[1])
        seen["offset"].append(hook.ctx["position_offset"])  # where this pass's positions start

    hooks = [
        ("blocks.0.hook_resid_pre", resid),
        ("blocks.1.attn.hook_pattern", lambda act, hook: seen["pattern"].append(tuple(act.shape[2:]))),
    ]
    prompt = model.to_tokens(["the cat sat on the", "hello"], padding_side="left")  # row 1 is left-padded
    n = prompt.shape[1]
    with model.hooks(fwd_hooks=hooks):
        model.generate(
            prompt, max_new_tokens=4, do_sample=False, stop_at_eos=False, use_past_kv_cache=use_past_kv_cache
        )
    # 4 tokens are chosen after 4 passes: the prompt, then the first 3 new tokens.
    if use_past_kv_cache:
        assert seen["resid"] == [n, 1, 1, 1]
        assert seen["pattern"] == [(n, n), (1, n + 1), (1, n + 2), (1, n + 3)]
        assert seen["offset"] == [0, n, n + 1, n + 2]
    else:
        assert seen["resid"] == [n, n + 1, n + 2, n + 3]
        assert seen["pattern"] == [(p, p) for p in range(n, n + 4)]
        assert seen["offset"] == [0, 0, 0, 0]
