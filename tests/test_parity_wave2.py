"""Parity with Hugging Face for the second wave of dense families (issue #14), proven as the first wave is
(test_parity_families.py, whose parity tests run here on these variants): logits, every residual and
attention pattern, left-padded rows equal to the row alone, greedy generation equal to transformers', and
the residual decomposition summing back to the stream."""

from __future__ import annotations

import json

import pytest
import torch
from conftest import assert_close, reference, rope_kwargs, save_tiny
from test_parity_families import (  # noqa: F401  (collected here too, on this module's `pair`)
    SMALL,
    V,
    config,
    test_a_hook_on_every_point_takes_effect,
    test_a_live_model_loads_like_its_checkpoint,
    test_cached_decoding_matches_full_forward,
    test_identity_hooks_everywhere_are_bit_identical,
    test_logits_residuals_and_patterns_match,
    test_loss_matches_reference,
    test_unhooked_fast_path_matches_reference,
)

from hooked import HookedTransformer
from hooked.loading import CheckpointMismatchError

# Loading a multimodal wrapper warns that its vision tower is left out (checked on its own below).
pytestmark = pytest.mark.filterwarnings("ignore:Gemma3ForConditionalGeneration. loading the language model only")


def gemma3_multimodal(tied: bool = True):
    text = config(
        "Gemma3TextConfig",
        **SMALL,
        num_key_value_heads=2,
        head_dim=16,
        query_pre_attn_scalar=16,
        sliding_window=4,
        layer_types=["sliding_attention", "full_attention", "sliding_attention"],
        tie_word_embeddings=tied,
        **rope_kwargs(1000000.0, {"rope_type": "linear", "factor": 8.0}, local_theta=10000.0),
    )
    vision = config(
        "SiglipVisionConfig",
        hidden_size=32,
        intermediate_size=48,
        num_hidden_layers=2,
        num_attention_heads=2,
        image_size=28,
        patch_size=14,
    )
    special = dict(image_token_index=V - 1, boi_token_index=V - 3, eoi_token_index=V - 2, mm_tokens_per_image=4)
    return config("Gemma3Config", text_config=text, vision_config=vision, tie_word_embeddings=tied, **special)


GRANITE = dict(embedding_multiplier=6.0, attention_multiplier=0.2, residual_multiplier=0.3, logits_scaling=4.0)

FALCON = dict(
    hidden_size=64,
    num_hidden_layers=3,
    num_attention_heads=4,
    ffn_hidden_size=96,
    vocab_size=V,
    max_position_embeddings=64,
)

# name -> (HF config factory, hook names beyond the foundation families' that the variant must have)
VARIANTS = {
    "gemma3_multimodal": (gemma3_multimodal, ["blocks.0.attn.q_norm.hook_scale", "blocks.2.ln2_post.hook_scale"]),
    "gemma3_multimodal-untied": (lambda: gemma3_multimodal(tied=False), []),
    "granite-gqa-tied": (
        lambda: config("GraniteConfig", **SMALL, num_key_value_heads=2, tie_word_embeddings=True, **GRANITE),
        [],
    ),
    "granite-bias-untied": (
        lambda: config("GraniteConfig", **SMALL, attention_bias=True, mlp_bias=True, **GRANITE),
        [],
    ),
    "starcoder2-gqa-sliding": (
        lambda: config("Starcoder2Config", **SMALL, num_key_value_heads=2, sliding_window=4, hidden_act="gelu"),
        ["blocks.0.ln1.hook_scale"],
    ),
    "starcoder2-nobias-untied": (
        lambda: config("Starcoder2Config", **SMALL, num_key_value_heads=4, use_bias=False, tie_word_embeddings=False),
        [],
    ),
    "cohere-gqa": (
        lambda: config("CohereConfig", **SMALL, num_key_value_heads=2, logit_scale=0.25),
        [],
    ),
    "cohere-qknorm-bias-untied": (
        lambda: config(
            "CohereConfig",
            **SMALL,
            num_key_value_heads=2,
            use_qk_norm=True,
            attention_bias=True,
            tie_word_embeddings=False,
            **rope_kwargs(500.0),
        ),
        ["blocks.0.attn.q_norm.hook_scale", "blocks.1.attn.k_norm.hook_normalized"],
    ),
    "cohere2-local-nope-global": (
        lambda: config(
            "Cohere2Config",
            **SMALL,
            num_key_value_heads=2,
            sliding_window=4,
            layer_types=["sliding_attention", "full_attention", "sliding_attention"],
            logit_scale=0.5,
        ),
        ["blocks.0.attn.hook_rot_q"],
    ),
    "olmo3-local-global": (
        lambda: config(
            "Olmo3Config",
            **SMALL,
            num_key_value_heads=2,
            pad_token_id=0,
            sliding_window=4,
            layer_types=["sliding_attention", "full_attention", "sliding_attention"],
            **rope_kwargs(500000.0, {"rope_type": "linear", "factor": 4.0}, local_theta=10000.0),
        ),
        ["blocks.0.attn.q_norm.hook_scale", "blocks.1.ln2_post.hook_scale"],
    ),
    "smollm3-nope": (
        lambda: config("SmolLM3Config", **SMALL, num_key_value_heads=2, pad_token_id=0, no_rope_layer_interval=2),
        ["blocks.0.attn.hook_rot_q", "blocks.2.attn.hook_rot_k"],
    ),
    "smollm3-sliding-nope-bias-untied": (
        lambda: config(
            "SmolLM3Config",
            **SMALL,
            num_key_value_heads=4,
            pad_token_id=0,
            no_rope_layers=[0, 1, 0],
            use_sliding_window=True,
            sliding_window=4,
            attention_bias=True,
            mlp_bias=True,
            tie_word_embeddings=False,
        ),
        ["blocks.1.attn.hook_rot_q"],
    ),
    "gpt_bigcode-mqa": (
        lambda: config("GPTBigCodeConfig", n_embd=64, n_layer=3, n_head=4, n_inner=96, vocab_size=V, n_positions=64),
        ["hook_pos_embed"],
    ),
    "gpt_bigcode-mha-unscaled-untied": (
        lambda: config(
            "GPTBigCodeConfig",
            n_embd=48,
            n_layer=2,
            n_head=3,
            vocab_size=V,
            n_positions=64,
            multi_query=False,
            scale_attn_weights=False,
            activation_function="gelu",
            tie_word_embeddings=False,
        ),
        [],
    ),
    "falcon-mqa-parallel": (
        lambda: config("FalconConfig", **FALCON),  # Falcon-7B's layout
        [],
    ),
    "falcon-mha-sequential-bias": (
        lambda: config("FalconConfig", **FALCON, multi_query=False, parallel_attn=False, bias=True),
        ["blocks.0.hook_resid_mid"],
    ),
    "falcon-new-gqa-two-norms": (
        lambda: config("FalconConfig", **FALCON, new_decoder_architecture=True, num_kv_heads=2, bias=True),
        [],
    ),
    "falcon-new-mqa-one-norm-untied": (
        lambda: config(
            "FalconConfig",
            **FALCON,
            new_decoder_architecture=True,
            num_kv_heads=1,
            num_ln_in_parallel_attn=1,
            tie_word_embeddings=False,
            **rope_kwargs(500.0),
        ),
        [],
    ),
    "apertus-gqa": (
        lambda: config(
            "ApertusConfig",
            **SMALL,
            num_key_value_heads=2,
            **rope_kwargs(
                10000.0,
                {
                    "rope_type": "llama3",
                    "factor": 8.0,
                    "low_freq_factor": 1.0,
                    "high_freq_factor": 4.0,
                    "original_max_position_embeddings": 16,
                },
            ),
        ),
        ["blocks.0.attn.q_norm.hook_scale", "blocks.0.mlp.hook_post"],
    ),
    "apertus-relu-bias-tied": (
        lambda: config("ApertusConfig", **SMALL, hidden_act="relu", attention_bias=True, tie_word_embeddings=True),
        [],
    ),
    "glm-gqa": (
        lambda: config("GlmConfig", **SMALL, num_key_value_heads=2, head_dim=16, pad_token_id=0),
        [],
    ),
    "glm4-partial-tied": (
        lambda: config(
            "Glm4Config",
            **SMALL,
            num_key_value_heads=1,
            head_dim=24,
            pad_token_id=0,
            tie_word_embeddings=True,
            **rope_kwargs(10000.0, partial=0.75),
        ),
        ["blocks.0.ln1_post.hook_scale", "blocks.2.ln2_post.hook_normalized"],
    ),
}


@pytest.fixture(scope="module", params=sorted(VARIANTS))
def pair(request, tmp_path_factory):
    folder = tmp_path_factory.mktemp(request.param)
    hf = save_tiny(VARIANTS[request.param][0](), folder)
    return request.param, hf, HookedTransformer.from_pretrained(folder)


def test_family_hook_points_exist(pair):
    name, _, model = pair
    missing = [hook for hook in VARIANTS[name][1] if hook not in model.hook_dict]
    assert not missing, f"{name} lacks hook points {missing}"


def test_left_padded_rows_equal_the_row_alone(pair):
    _, hf, model = pair
    tokens = torch.randint(0, V, (2, 9))
    mask = torch.ones_like(tokens)
    mask[0, :3] = 0
    ref = reference(hf, tokens, attention_mask=mask, position_ids=(mask.cumsum(-1) - 1).clamp(min=0))
    with torch.no_grad():
        logits = model(tokens, attention_mask=mask)
        alone = model(tokens[0:1, 3:])
    assert_close(logits[mask.bool()], ref.logits[mask.bool()], "logits")
    assert_close(logits[0, 3:], alone[0], "logits", label="padded row against the row alone")


def test_greedy_generation_equals_transformers(pair):
    _, hf, model = pair
    hf.generation_config.eos_token_id = None  # run the full length on both sides
    hf.generation_config.pad_token_id = 0
    prompt = torch.randint(0, V - 3, (2, 5))  # no image tokens
    expected = hf.generate(prompt, attention_mask=torch.ones_like(prompt), max_new_tokens=12, do_sample=False)
    got = model.generate(prompt, max_new_tokens=12, do_sample=False, stop_at_eos=False, verbose=False)
    assert torch.equal(got, expected)


def test_residual_decomposition_sums_back(pair):
    """Every stream is the sum of its parts, and a layer's heads plus b_O are its attn_out: the residual
    equation holds where the hooks sit (Granite's multipliers are inside attn_out and mlp_out)."""
    name, _, model = pair
    tokens = torch.randint(0, V, (2, 8))
    with torch.no_grad():
        _, cache = model.run_with_cache(tokens)
    for layer in range(model.cfg.n_layers + 1):
        stack = cache.get_full_resid_decomposition(layer, expand_neurons=False)
        expected = cache["resid_post", layer - 1] if layer else cache["blocks.0.hook_resid_pre"]
        assert_close(stack.sum(0), expected, "resid", label=f"{name} stream {layer}")
    for layer, block in enumerate(model.blocks):
        parallel = model.cfg.parallel_attn_mlp  # no resid_mid: both sublayers read resid_pre
        before_mlp = cache["resid_pre", layer] + cache["attn_out", layer]
        if not parallel:
            assert_close(before_mlp, cache["resid_mid", layer], "resid", label=name)
        assert_close(before_mlp + cache["mlp_out", layer], cache["resid_post", layer], "resid", label=name)
        if "ln1_post" in block._modules:  # a post-norm rescales the heads' sum
            continue
        heads = cache.stack_head_results(layer + 1)[layer * model.cfg.n_heads :].sum(0)
        b_O = block.attn.b_O if block.attn.b_O is not None else 0.0
        assert_close(heads + b_O, cache["attn_out", layer], "resid", label=f"{name} heads of {layer}")


# ---- family specifics ------------------------------------------------------------------------------


def test_a_multimodal_wrapper_says_it_leaves_the_vision_tower_out(tmp_path):
    hf = save_tiny(gemma3_multimodal(), tmp_path)
    with pytest.warns(UserWarning, match=r"language model only; the \d+ tensors of the vision tower"):
        HookedTransformer.from_pretrained(tmp_path)
    assert any(name.startswith("model.vision_tower.") for name in hf.state_dict())


def test_both_wrapper_layouts_load_alike(tmp_path):
    """Transformers 4 (and the released files) keep the language model under `language_model.model.*`,
    transformers 5 under `model.language_model.*`: both give the same model."""
    from safetensors.torch import load_file, save_file

    hf = save_tiny(gemma3_multimodal(tied=False), tmp_path / "saved")
    state = load_file(tmp_path / "saved" / "model.safetensors")
    assert any(name.startswith("language_model.model.") for name in state)  # what transformers saves
    five = {
        name.replace("language_model.model.", "model.language_model.")
        .replace("language_model.lm_head.", "lm_head.")
        .replace("vision_tower.", "model.vision_tower.", 1)
        .replace("multi_modal_projector.", "model.multi_modal_projector.", 1): tensor
        for name, tensor in state.items()
    }
    (tmp_path / "five").mkdir()
    save_file(five, tmp_path / "five" / "model.safetensors", metadata={"format": "pt"})
    (tmp_path / "five" / "config.json").write_text((tmp_path / "saved" / "config.json").read_text())
    tokens = torch.randint(0, V, (1, 7))
    with torch.no_grad():
        expected = hf(tokens).logits
        for folder in ("saved", "five"):
            assert_close(HookedTransformer.from_pretrained(tmp_path / folder)(tokens), expected, "logits", label=folder)
    # The layer count is the text model's, checked against its tensors only (not the vision encoder's layers).
    crafted = json.loads((tmp_path / "five" / "config.json").read_text())
    crafted["text_config"]["num_hidden_layers"] = 4
    (tmp_path / "five" / "config.json").write_text(json.dumps(crafted))
    with pytest.raises(CheckpointMismatchError, match=r"text_config\.num_hidden_layers"):
        HookedTransformer.from_pretrained(tmp_path / "five")


def test_granite_multipliers_are_in_the_outputs_not_the_residual_equation(tmp_path):
    """Independent of our loader: the HF model's own layer outputs, times residual_multiplier, are what
    hook_attn_out shows."""
    hf = save_tiny(config("GraniteConfig", **SMALL, **GRANITE, tie_word_embeddings=True), tmp_path)
    model = HookedTransformer.from_pretrained(tmp_path)
    tokens = torch.randint(0, V, (1, 6))
    captured = {}
    handle = hf.model.layers[1].self_attn.register_forward_hook(lambda m, i, out: captured.update(attn=out[0]))
    try:
        with torch.no_grad():
            hf(tokens)
            _, cache = model.run_with_cache(tokens)
    finally:
        handle.remove()
    assert_close(cache["attn_out", 1], captured["attn"] * GRANITE["residual_multiplier"], "resid")
    o_proj = hf.model.layers[1].self_attn.o_proj.weight
    assert_close(model.W_O[1].flatten(0, 1), o_proj.T * GRANITE["residual_multiplier"], "resid")
    # logits_scaling makes the tied W_U its own (scaled) copy
    assert not model.cfg.tie_word_embeddings
    assert_close(model.W_U, hf.model.embed_tokens.weight.T / GRANITE["logits_scaling"], "resid")


def wrapper_with(**text_fields) -> dict:
    hf = gemma3_multimodal().to_dict() | {"architectures": ["Gemma3ForConditionalGeneration"]}
    return hf | {"text_config": {**hf["text_config"], **text_fields}}


def falcon_with(**fields) -> dict:
    return config("FalconConfig", **FALCON, **fields, architectures=["FalconForCausalLM"]).to_dict()


CONFIG_REFUSED = {
    "Gemma 3 wrapper with a final cap": (lambda: wrapper_with(final_logit_softcapping=30.0), "final_logit_softcapping"),
    "Gemma 3 wrapper tied one way, its text model the other": (
        lambda: wrapper_with(tie_word_embeddings=False),
        "tie_word_embeddings",
    ),
    "Falcon-RW's ALiBi": (lambda: falcon_with(alibi=True), "alibi=True"),
    "Falcon's new layout in sequence": (
        lambda: falcon_with(new_decoder_architecture=True, parallel_attn=False),
        "parallel_attn=False",
    ),
}


@pytest.mark.parametrize("case", sorted(CONFIG_REFUSED))
def test_config_fields_that_change_numbers_are_refused(case):
    from hooked.loading import UnsupportedConfigError, build

    make, message = CONFIG_REFUSED[case]
    with pytest.raises(UnsupportedConfigError, match=message):
        build(HookedTransformer, make(), checkpoint=None)


def test_nope_layers_are_validated_and_round_trip():
    from hooked import HookedTransformerConfig

    base = dict(d_model=32, n_layers=3, n_heads=4, d_vocab=50, n_ctx=16, positional_embedding_type="rotary")
    cfg = HookedTransformerConfig(**base, nope_layers=[1])
    assert cfg.nope_layers == (1,) and [cfg.layer_rotates(i) for i in range(3)] == [True, False, True]
    assert HookedTransformerConfig.from_dict(cfg.to_dict()) == cfg
    for bad in (dict(nope_layers=(3,)), dict(nope_layers=(0,), positional_embedding_type="standard")):
        with pytest.raises(ValueError, match="nope_layers"):
            HookedTransformerConfig(**{**base, **bad})
