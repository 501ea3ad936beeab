"""Parity with Hugging Face for variants inside families the loader already knows (issue #14): the rotary
scalings yarn, longrope and dynamic, Qwen2's sliding window, Phi's q/k LayerNorm, and OPT-350m's post-norm
blocks with embedding projections. Each is proven as test_parity_families.py proves a family (whose
generic invariant tests run here too, on these variants): logits, every residual and attention pattern,
left-padded rows, greedy generation equal to transformers', and the residual decomposition summing back.

longrope and dynamic frequencies depend on the sequence length (transformers' rule: the largest position
in a call, plus one), so their tests run at lengths on both sides of the original context.
"""

from __future__ import annotations

import math
import re

import pytest
import torch
from conftest import assert_close, assert_layers_close, assert_matches_reference, reference, rope_kwargs, save_tiny
from test_parity_families import (  # noqa: F401  (the generic tests run here on this module's `pair`)
    SMALL,
    V,
    config,
    read_config,
    test_a_hook_on_every_point_takes_effect,
    test_identity_hooks_everywhere_are_bit_identical,
    test_loss_matches_reference,
    test_unhooked_fast_path_matches_reference,
)

from hooked import HookedTransformer

ORIGINAL = 8  # the original context of the scaled variants: their tests run on both sides of it
PROMPT, NEW = 6, 14  # generation runs past it


def factors(n: int, start: float, step: float) -> list[float]:
    return [start + step * i for i in range(n)]


def opt(**fields):
    """An OPT config; with do_layer_norm_before=False, init_std large enough that attention, which reads the
    raw embeddings, has scores far from 0 (so that every hook point's edit shows in the logits)."""
    sizes = dict(hidden_size=64, num_hidden_layers=3, num_attention_heads=4, ffn_dim=96, max_position_embeddings=64)
    return config("OPTConfig", **sizes, vocab_size=V, pad_token_id=0, **fields)


# name -> (HF config factory, from_pretrained keyword arguments)
VARIANTS = {
    "llama-yarn": (
        lambda: config(
            "LlamaConfig",
            **SMALL,
            num_key_value_heads=2,
            **rope_kwargs(10000.0, {"rope_type": "yarn", "factor": 4.0, "original_max_position_embeddings": ORIGINAL}),
        ),
        {},
    ),
    "qwen2-yarn-mscale-untruncated": (  # DeepSeek's attention factor, its own betas, a ramp over whole dims
        lambda: config(
            "Qwen2Config",
            **SMALL,
            num_key_value_heads=2,
            **rope_kwargs(
                50000.0,
                {
                    "rope_type": "yarn",
                    "factor": 8.0,
                    "original_max_position_embeddings": ORIGINAL,
                    "mscale": 1.0,
                    "mscale_all_dim": 0.5,
                    "beta_fast": 16.0,
                    "beta_slow": 2.0,
                    "truncate": False,
                },
            ),
        ),
        {},
    ),
    "gemma3-yarn-global": (  # the global layers scale; the local ones keep their own base, unscaled
        lambda: config(
            "Gemma3TextConfig",
            **SMALL,
            num_key_value_heads=2,
            head_dim=16,
            query_pre_attn_scalar=16,
            sliding_window=4,
            layer_types=["sliding_attention", "full_attention", "sliding_attention"],
            **rope_kwargs(
                1e6, {"rope_type": "yarn", "factor": 4.0, "original_max_position_embeddings": 16}, local_theta=1e4
            ),
        ),
        {},
    ),
    "phi3-longrope-partial": (  # Phi-4-mini's layout: LongRoPE on three quarters of each head
        lambda: config(
            "Phi3Config",
            **SMALL,
            num_key_value_heads=2,
            pad_token_id=0,
            original_max_position_embeddings=ORIGINAL,
            **rope_kwargs(
                10000.0,
                {"rope_type": "longrope", "short_factor": factors(6, 1.0, 0.2), "long_factor": factors(6, 2.0, 1.5)},
                partial=0.75,
            ),
        ),
        {},
    ),
    "llama-dynamic": (  # NTK scaling beyond max_position_embeddings, reached with a longer n_ctx
        lambda: config(
            "LlamaConfig",
            **{**SMALL, "max_position_embeddings": ORIGINAL},
            num_key_value_heads=2,
            **rope_kwargs(10000.0, {"rope_type": "dynamic", "factor": 2.0}),
        ),
        {"n_ctx": 64},
    ),
    "gpt_neox-dynamic-partial": (  # dynamic on a quarter of each head: the base's exponent is rotary_dim's
        lambda: config(
            "GPTNeoXConfig",
            **{**SMALL, "max_position_embeddings": ORIGINAL},
            **rope_kwargs(
                10000.0, {"rope_type": "dynamic", "factor": 3.0}, partial=0.25, names=("rotary_emb_base", "rotary_pct")
            ),
        ),
        {"n_ctx": 64},
    ),
    "qwen2-sliding": (  # the layers from max_window_layers on see the last sliding_window keys only
        lambda: config(
            "Qwen2Config",
            **SMALL,
            num_key_value_heads=2,
            use_sliding_window=True,
            sliding_window=4,
            max_window_layers=1,
        ),
        {},
    ),
    "qwen2-sliding-layer-types-tied": (
        lambda: config(
            "Qwen2Config",
            **SMALL,
            num_key_value_heads=4,
            use_sliding_window=True,
            sliding_window=3,
            layer_types=["sliding_attention", "full_attention", "sliding_attention"],
            tie_word_embeddings=True,
        ),
        {},
    ),
    "phi-qk-layernorm": (  # a LayerNorm with weight and bias on each head's queries and keys
        lambda: config("PhiConfig", **SMALL, num_key_value_heads=2, qk_layernorm=True),
        {},
    ),
    "opt-350m": (  # post-norm blocks, no final norm, narrower embeddings projected in and out (tied)
        lambda: opt(word_embed_proj_dim=32, do_layer_norm_before=False, init_std=0.2),
        {},
    ),
    "opt-projected-prenorm-untied": (lambda: opt(word_embed_proj_dim=24, tie_word_embeddings=False), {}),
    "opt-post-norm-nobias": (lambda: opt(do_layer_norm_before=False, enable_bias=False, init_std=0.2), {}),
}
LENGTHS = (5, 12)  # within and beyond ORIGINAL, and beyond every sliding window


# Hook points beyond the base family's that a variant must have.
HOOKS = {
    "phi-qk-layernorm": ["blocks.0.attn.q_norm.hook_scale", "blocks.2.attn.k_norm.hook_normalized"],
    "opt-350m": ["hook_pos_embed", "blocks.0.ln1_post.hook_scale", "blocks.2.ln2_post.hook_normalized"],
}


@pytest.fixture(scope="module", params=sorted(VARIANTS))
def pair(request, tmp_path_factory):
    folder = tmp_path_factory.mktemp(request.param)
    factory, load = VARIANTS[request.param]
    hf = save_tiny(factory(), folder)
    return request.param, hf, HookedTransformer.from_pretrained(folder, **load)


def test_a_live_model_loads_like_its_checkpoint(pair):
    """hf_model= gives the config and weights the checkpoint folder gives (test_parity_families' test, with
    this variant's from_pretrained arguments)."""
    name, hf, ours = pair
    live = HookedTransformer.from_pretrained(hf_model=hf, **VARIANTS[name][1])
    assert live.cfg == ours.cfg
    mine, theirs = ours.state_dict(), live.state_dict()
    assert mine.keys() == theirs.keys()
    assert all(torch.equal(mine[key], theirs[key]) for key in mine)


def test_variant_hook_points_exist(pair):
    name, _, model = pair
    missing = [hook for hook in HOOKS.get(name, []) if hook not in model.hook_dict]
    assert not missing, f"{name} lacks hook points {missing}"


def fresh(hf):
    """`hf` as freshly loaded. transformers' dynamic rotary remembers the longest sequence it has seen and
    keeps its frequencies for shorter ones, until a call within the original context resets it; a
    one-token call does that (and changes nothing for the other rope types)."""
    with torch.no_grad():
        hf(torch.zeros(1, 1, dtype=torch.long))
    return hf


def same_frequencies(cfg, length: int, other: int) -> bool:
    """Whether sequences of these lengths get the same rotary frequencies (transformers' rule)."""
    s = cfg.rope_scaling
    if s is None or s.kind not in ("longrope", "dynamic"):
        return True
    if s.kind == "longrope":
        return (length > s.original_max_position_embeddings) == (other > s.original_max_position_embeddings)
    return max(length, s.original_max_position_embeddings) == max(other, s.original_max_position_embeddings)


@pytest.mark.parametrize("length", LENGTHS)
def test_logits_residuals_and_patterns_match(pair, length):
    _, hf, model = pair
    tokens = torch.randint(0, V, (2, length))
    project_out = getattr(getattr(getattr(hf, "model", None), "decoder", None), "project_out", None)
    if project_out is None:
        assert_matches_reference(model, fresh(hf), tokens)
        return
    # OPT-350m: HF's last hidden state is project_out's narrow output, which W_U folds in; the stream
    # before it, unembed.hook_in, is compared through HF's own project_out.
    ref = reference(hf, tokens)
    with torch.no_grad():
        logits, cache = model.run_with_cache(tokens)
        last = project_out(cache["unembed.hook_in"])
    assert_close(logits, ref.logits, "logits")
    n = model.cfg.n_layers
    assert_layers_close([cache["resid_post", i] for i in range(n - 1)] + [last], list(ref.hidden_states[1:]), "resid")
    assert_layers_close([cache["pattern", i] for i in range(n)], list(ref.attentions), "pattern")
    assert_close(cache["hook_embed"], hf.model.decoder.project_in(hf.model.decoder.embed_tokens(tokens)), "resid")


@pytest.mark.parametrize("length", LENGTHS)
def test_left_padded_batch_matches_reference(pair, length):
    """The row alone gives the padded row's numbers wherever the two lengths get the same frequencies (a
    longrope or dynamic batch is scaled for its longest row, as transformers does)."""
    _, hf, model = pair
    tokens = torch.randint(0, V, (2, length))
    mask = torch.ones_like(tokens)
    mask[0, :3] = 0
    positions = (mask.cumsum(-1) - 1).clamp(min=0)
    ref = reference(fresh(hf), tokens, attention_mask=mask, position_ids=positions)
    with torch.no_grad():
        logits = model(tokens, attention_mask=mask)
        alone = model(tokens[0:1, 3:])
    assert_close(logits[mask.bool()], ref.logits[mask.bool()], "logits")
    if same_frequencies(model.cfg, length, length - 3):
        assert_close(logits[0, 3:], alone[0], "logits", label="padded row against the row alone")
    else:
        assert not torch.allclose(logits[0, 3:], alone[0]), "the batch should be scaled for its longest row"


def test_greedy_generation_equals_transformers(pair):
    """Tokens and every step's logits, past the original context too: with the key-value cache, dynamic
    rotates the new keys for the length so far and keeps the cached ones; longrope (Phi-3) computes the
    cache again at the switch. (The two differ by ~1e-3 in the logits, too little to change a greedy token
    of a tiny random model: hence the logits.)"""
    _, hf, model = pair
    hf.generation_config.eos_token_id = None
    hf.generation_config.pad_token_id = 0
    prompt = torch.randint(1, V, (2, PROMPT))
    for use_cache in (True, False):
        expected = fresh(hf).generate(
            prompt,
            attention_mask=torch.ones_like(prompt),
            max_new_tokens=NEW,
            do_sample=False,
            use_cache=use_cache,
            output_logits=True,
            return_dict_in_generate=True,
        )
        steps = []
        with model.hooks(
            fwd_hooks=[("unembed.hook_out", lambda logits, hook, steps=steps: steps.append(logits[:, -1]))]
        ):
            got = model.generate(
                prompt, max_new_tokens=NEW, do_sample=False, stop_at_eos=False, use_past_kv_cache=use_cache
            )
        assert torch.equal(got, expected.sequences), f"use_past_kv_cache={use_cache}"
        label = f"each step's logits, use_past_kv_cache={use_cache}"
        assert_close(torch.stack(steps), torch.stack(expected.logits), "logits", label=label)


def test_residual_decomposition_sums_back(pair):
    """And where the stream is renormalized after every sum (post-LN), the decompositions are refused."""
    _, _, model = pair
    with torch.no_grad():
        logits, cache = model.run_with_cache(torch.randint(0, V, (2, 12)))
    n_layers = model.cfg.n_layers
    if model.cfg.block_norms == "post_residual":
        for decompose in (cache.decompose_resid, cache.get_full_resid_decomposition):
            with pytest.raises(NotImplementedError, match="post-LN"):
                decompose()
        # The streams themselves are what the blocks computed; with no final norm the last one's lens is the logits.
        assert torch.equal(cache.accumulated_resid()[-1], cache["resid_post", n_layers - 1])
        assert_close(cache.logit_lens()[-1], logits, "logits")
        return
    for layer in range(n_layers + 1):
        stream = cache["resid_post", n_layers - 1] if layer == n_layers else cache["resid_pre", layer]
        assert_close(cache.decompose_resid(layer).sum(0), stream, "resid", label=f"decompose_resid({layer})")
        full = cache.get_full_resid_decomposition(layer, expand_neurons=True)
        assert_close(full.sum(0), stream, "resid", label=f"get_full_resid_decomposition({layer})")


SHORT, LONG = factors(8, 1.0, 0.1), factors(8, 2.0, 0.5)  # one per frequency of SMALL's 16-dim heads
# name -> (config class, architecture, the fields as transformers 4 writes them, as transformers 5 does, and
# the scaling both must give, worked out from modeling_rope_utils' formulas)
SCALINGS_OF_EITHER_VERSION = {
    "Qwen2 yarn (Qwen2.5's long-context setting), old 'type' key": (
        "Qwen2Config",
        "Qwen2ForCausalLM",
        {
            "num_key_value_heads": 4,
            "rope_theta": 1e6,
            "rope_scaling": {"type": "yarn", "factor": 4.0, "original_max_position_embeddings": 32},
        },
        {
            "num_key_value_heads": 4,
            "rope_parameters": {
                "rope_type": "yarn",
                "rope_theta": 1e6,
                "factor": 4.0,
                "original_max_position_embeddings": 32,
            },
        },
        ("yarn", 4.0, 32, 0.1 * math.log(4.0) + 1),
    ),
    "Llama yarn without an original context (max_position_embeddings)": (
        "LlamaConfig",
        "LlamaForCausalLM",
        {"rope_theta": 1e4, "rope_scaling": {"rope_type": "yarn", "factor": 2.0, "attention_factor": 1.5}},
        {"rope_parameters": {"rope_type": "yarn", "rope_theta": 1e4, "factor": 2.0, "attention_factor": 1.5}},
        ("yarn", 2.0, 64, 1.5),
    ),
    "Phi-3 longrope, old 'su' name": (
        "Phi3Config",
        "Phi3ForCausalLM",
        {
            "rope_theta": 1e4,
            "rope_scaling": {"type": "su", "short_factor": SHORT, "long_factor": LONG},
            "original_max_position_embeddings": 16,
        },
        {
            "rope_parameters": {"rope_type": "longrope", "rope_theta": 1e4, "short_factor": SHORT, "long_factor": LONG},
            "original_max_position_embeddings": 16,
        },
        ("longrope", 4.0, 16, math.sqrt(1 + math.log(4.0) / math.log(16))),  # factor: 64 / 16
    ),
    "Llama dynamic, old 'type' key": (
        "LlamaConfig",
        "LlamaForCausalLM",
        {"rope_theta": 1e4, "rope_scaling": {"type": "dynamic", "factor": 2.0}},
        {"rope_parameters": {"rope_type": "dynamic", "rope_theta": 1e4, "factor": 2.0}},
        ("dynamic", 2.0, 64, 1.0),  # scaled beyond max_position_embeddings
    ),
}


@pytest.mark.parametrize("case", sorted(SCALINGS_OF_EITHER_VERSION))
def test_scalings_of_either_transformers_version_read_the_same(case):
    name, architecture, old, new, (kind, factor, original, attention) = SCALINGS_OF_EITHER_VERSION[case]
    ours = read_config(name, architecture, **new)
    assert read_config(name, architecture, **old) == ours
    s = ours.rope_scaling
    assert (s.kind, s.factor, s.original_max_position_embeddings) == (kind, factor, original)
    assert s.attention_factor == pytest.approx(attention, rel=1e-12)
    if kind == "longrope":
        assert (list(s.short_factor), list(s.long_factor)) == (SHORT, LONG)


REFUSED = {
    "Phi-3 with another scaling": (
        "Phi3Config",
        "Phi3ForCausalLM",
        {"rope_parameters": {"rope_type": "linear", "rope_theta": 1e4, "factor": 2.0}},
        "rope_type='linear'",
    ),
    "Phi-3 longrope factor that transformers 4.57 would replace": (
        "Phi3Config",
        "Phi3ForCausalLM",
        {
            "rope_parameters": {"rope_type": "longrope", "factor": 3.0, "short_factor": SHORT, "long_factor": LONG},
            "original_max_position_embeddings": 16,
        },
        "longrope factor=3.0",
    ),
    "Llama longrope (transformers' generation keeps stale keys at the switch)": (
        "LlamaConfig",
        "LlamaForCausalLM",
        {"rope_parameters": {"rope_type": "longrope", "short_factor": SHORT, "long_factor": LONG}},
        "rope_type='longrope'",
    ),
}


@pytest.mark.parametrize("case", sorted(REFUSED))
def test_scalings_that_would_differ_are_refused(case):
    from hooked.loading import UnsupportedConfigError

    name, architecture, fields, message = REFUSED[case]
    with pytest.raises(UnsupportedConfigError, match=re.escape(message)):
        read_config(name, architecture, **fields)
