"""Parity with Hugging Face for the families beyond the foundation four, variant by variant, plus the
invariants every family keeps: identity hooks are bit-identical, every hook point takes effect, the
KV cache gives the full forward's numbers, and left padding changes no row."""

from __future__ import annotations

import re

import pytest
import torch
import transformers
from conftest import assert_close, assert_matches_reference, reference, rope_kwargs, save_tiny

from hooked import HookedTransformer
from hooked.components.kv_cache import KVCache

V = 97
SMALL = dict(
    hidden_size=64,
    intermediate_size=96,
    num_hidden_layers=3,
    num_attention_heads=4,
    vocab_size=V,
    max_position_embeddings=64,
)


def config(name: str, **kwargs):
    return getattr(transformers, name)(**kwargs)


MOE_HOOKS = [
    "blocks.0.mlp.hook_router_logits",
    "blocks.0.mlp.hook_expert_weights",
    "blocks.0.mlp.hook_expert_indices",
    "blocks.1.mlp.experts.2.hook_pre",
    "blocks.1.mlp.experts.2.hook_pre_linear",
    "blocks.1.mlp.experts.2.hook_post",
]

# name -> (HF config factory, hook names beyond the foundation families' that the variant must have)
VARIANTS = {
    "qwen3-gqa": (
        lambda: config("Qwen3Config", **SMALL, num_key_value_heads=2, head_dim=16),
        ["blocks.0.attn.q_norm.hook_scale", "blocks.0.attn.k_norm.hook_normalized"],
    ),
    "qwen3-sliding-tied": (
        lambda: config(
            "Qwen3Config",
            **SMALL,
            num_key_value_heads=1,
            head_dim=24,
            attention_bias=True,
            use_sliding_window=True,
            sliding_window=4,
            max_window_layers=1,
            tie_word_embeddings=True,
        ),
        ["blocks.2.attn.q_norm.hook_normalized"],
    ),
    "gpt_neox-parallel": (
        lambda: config("GPTNeoXConfig", **SMALL, hidden_act="gelu"),  # rotary on a quarter of each head
        [],
    ),
    "gpt_neox-sequential-nobias-tied": (
        lambda: config(
            "GPTNeoXConfig",
            **SMALL,
            use_parallel_residual=False,
            attention_bias=False,
            tie_word_embeddings=True,
            **rope_kwargs(500.0, partial=0.5, names=("rotary_emb_base", "rotary_pct")),  # 4.x's GPT-NeoX names
        ),
        ["blocks.0.hook_resid_mid"],
    ),
    "phi3-gqa": (
        lambda: config("Phi3Config", **SMALL, num_key_value_heads=2, pad_token_id=0),
        [],
    ),
    "phi3-partial-sliding-tied": (
        lambda: config(
            "Phi3Config",
            **SMALL,
            num_key_value_heads=4,
            pad_token_id=0,
            sliding_window=5,
            tie_word_embeddings=True,
            **rope_kwargs(10000.0, partial=0.75),
        ),
        [],
    ),
    "gemma-mha": (
        lambda: config("GemmaConfig", **SMALL, num_key_value_heads=4, head_dim=16),
        [],
    ),
    "gemma-mqa-bias-untied": (
        lambda: config(
            "GemmaConfig", **SMALL, num_key_value_heads=1, head_dim=24, attention_bias=True, tie_word_embeddings=False
        ),
        [],
    ),
    "gemma2-capped-sliding": (
        # Caps small enough that tanh bends the tiny random model's scores and logits.
        lambda: config(
            "Gemma2Config",
            **SMALL,
            num_key_value_heads=2,
            head_dim=16,
            query_pre_attn_scalar=24,
            sliding_window=4,
            attn_logit_softcapping=0.05,
            final_logit_softcapping=0.1,
        ),
        ["blocks.0.ln1_post.hook_scale", "blocks.1.ln2_post.hook_normalized"],
    ),
    "gemma2-uncapped-untied": (
        lambda: config(
            "Gemma2Config",
            **SMALL,
            num_key_value_heads=4,
            head_dim=16,
            sliding_window=3,
            attn_logit_softcapping=None,
            final_logit_softcapping=None,
            tie_word_embeddings=False,
        ),
        ["blocks.0.ln1_post.hook_normalized"],
    ),
    "gemma3-local-global": (
        lambda: config(
            "Gemma3TextConfig",
            **SMALL,
            num_key_value_heads=2,
            head_dim=16,
            query_pre_attn_scalar=16,
            sliding_window=4,
            layer_types=["sliding_attention", "full_attention", "sliding_attention"],
            **rope_kwargs(1000000.0, {"rope_type": "linear", "factor": 8.0}, local_theta=10000.0),
        ),
        ["blocks.0.attn.q_norm.hook_scale", "blocks.1.attn.k_norm.hook_normalized", "blocks.2.ln2_post.hook_scale"],
    ),
    "gemma3-capped-mqa": (  # the reference applies the final cap and ignores the attention cap
        lambda: config(
            "Gemma3TextConfig",
            **SMALL,
            num_key_value_heads=1,
            head_dim=16,
            sliding_window=5,
            layer_types=["full_attention", "sliding_attention", "sliding_attention"],
            attn_logit_softcapping=0.05,
            final_logit_softcapping=0.1,
        ),
        ["blocks.0.attn.q_norm.hook_scale"],
    ),
    "olmo": (
        lambda: config("OlmoConfig", **SMALL, pad_token_id=0),
        ["blocks.0.ln1.hook_scale", "ln_final.hook_normalized"],
    ),
    "olmo-clip-bias-gqa-tied": (
        # A clip small enough to clamp some of the tiny model's projections.
        lambda: config(
            "OlmoConfig",
            **SMALL,
            pad_token_id=0,
            num_key_value_heads=2,
            clip_qkv=0.15,
            attention_bias=True,
            tie_word_embeddings=True,
        ),
        [],
    ),
    "olmo2-gqa": (
        lambda: config("Olmo2Config", **SMALL, pad_token_id=0, num_key_value_heads=2),
        ["blocks.0.attn.q_norm.hook_scale", "blocks.0.ln1_post.hook_scale", "blocks.0.ln2_post.hook_normalized"],
    ),
    "olmo2-bias-tied": (
        lambda: config("Olmo2Config", **SMALL, pad_token_id=0, attention_bias=True, tie_word_embeddings=True),
        ["blocks.2.attn.k_norm.hook_normalized"],
    ),
    "stablelm": (
        lambda: config("StableLmConfig", **SMALL, num_key_value_heads=4),  # rotary on a quarter of each head
        [],
    ),
    "stablelm-parallel-qkln-gqa": (
        lambda: config(
            "StableLmConfig",
            **SMALL,
            num_key_value_heads=2,
            use_parallel_residual=True,
            qk_layernorm=True,
            use_qkv_bias=True,
            tie_word_embeddings=True,
            **rope_kwargs(10000.0, partial=0.5),
        ),
        ["blocks.0.attn.q_norm.hook_scale", "blocks.0.attn.k_norm.hook_normalized"],
    ),
    "phi": (
        lambda: config("PhiConfig", **SMALL),  # rotary on half of each head
        [],
    ),
    "phi-gqa-full-rotary-tied": (
        lambda: config(
            "PhiConfig",
            **SMALL,
            num_key_value_heads=2,
            hidden_act="gelu",
            tie_word_embeddings=True,
            **rope_kwargs(500.0, partial=1.0),
        ),
        [],
    ),
    "gptj": (
        lambda: config("GPTJConfig", n_embd=64, n_layer=3, n_head=4, vocab_size=V, n_positions=64, rotary_dim=8),
        [],
    ),
    "gptj-full-rotary-relu-tied": (
        lambda: config(
            "GPTJConfig",
            n_embd=48,
            n_layer=2,
            n_head=3,
            n_inner=80,
            vocab_size=V,
            n_positions=64,
            rotary_dim=16,
            activation_function="relu",
            tie_word_embeddings=True,
        ),
        [],
    ),
    "gpt_neo-global-local": (
        lambda: config(
            "GPTNeoConfig",
            hidden_size=64,
            num_layers=3,
            num_heads=4,
            vocab_size=V,
            max_position_embeddings=64,
            attention_types=[[["global", "local"], 1], [["local"], 1]],
            window_size=4,
        ),
        [],
    ),
    "gpt_neo-global-untied-relu": (
        lambda: config(
            "GPTNeoConfig",
            hidden_size=48,
            num_layers=2,
            num_heads=3,
            intermediate_size=80,
            vocab_size=V,
            max_position_embeddings=64,
            attention_types=[[["global"], 2]],
            activation_function="relu",
            tie_word_embeddings=False,
        ),
        [],
    ),
    "opt": (
        lambda: config(
            "OPTConfig",
            hidden_size=64,
            num_hidden_layers=3,
            num_attention_heads=4,
            ffn_dim=96,
            vocab_size=V,
            max_position_embeddings=64,
            word_embed_proj_dim=64,
            pad_token_id=0,
        ),
        ["hook_pos_embed"],
    ),
    "opt-nobias-gelu-untied": (
        lambda: config(
            "OPTConfig",
            hidden_size=48,
            num_hidden_layers=2,
            num_attention_heads=3,
            ffn_dim=80,
            vocab_size=V,
            max_position_embeddings=64,
            word_embed_proj_dim=48,
            pad_token_id=0,
            enable_bias=False,
            activation_function="gelu",
            tie_word_embeddings=False,
        ),
        [],
    ),
    "bloom": (
        lambda: config("BloomConfig", hidden_size=64, n_layer=3, n_head=4, vocab_size=V),
        ["embed.ln.hook_scale", "embed.ln.hook_normalized"],
    ),
    "bloom-6-heads-untied": (  # a head count that is not a power of two has its own ALiBi slopes
        lambda: config("BloomConfig", hidden_size=48, n_layer=2, n_head=6, vocab_size=V, tie_word_embeddings=False),
        ["embed.ln.hook_scale"],
    ),
    "mixtral-top2": (
        lambda: config("MixtralConfig", **SMALL, num_key_value_heads=2, num_local_experts=4, num_experts_per_tok=2),
        MOE_HOOKS,
    ),
    "mixtral-top1-sliding-tied": (
        lambda: config(
            "MixtralConfig",
            **SMALL,
            num_key_value_heads=4,
            num_local_experts=3,
            num_experts_per_tok=1,
            sliding_window=4,
            tie_word_embeddings=True,
        ),
        MOE_HOOKS[:3],
    ),
}

# Families whose reference derives positions from the attention mask itself (learned offset positions,
# ALiBi): the padded comparison passes HF the mask alone.
POSITIONS_FROM_MASK = {"opt", "bloom"}


@pytest.fixture(scope="module", params=sorted(VARIANTS))
def pair(request, tmp_path_factory):
    folder = tmp_path_factory.mktemp(request.param)
    hf = save_tiny(VARIANTS[request.param][0](), folder)
    return request.param, hf, HookedTransformer.from_pretrained(folder)


def test_logits_residuals_and_patterns_match(pair):
    _, hf, model = pair
    assert_matches_reference(model, hf, torch.randint(0, V, (2, 12)))


def test_a_live_model_loads_like_its_checkpoint(pair):
    """hf_model= reads the in-memory model's state dict, whose layout can differ from the files' (Mixtral):
    it gives the same config and bit-identical weights. (Logits may differ in the last bit: a model loaded
    from a file keeps its tensors at the file's offsets, unaligned, where BLAS kernels round differently.)"""
    _, hf, ours = pair
    live = HookedTransformer.from_pretrained(hf_model=hf)
    assert live.cfg == ours.cfg
    mine, theirs = ours.state_dict(), live.state_dict()
    assert mine.keys() == theirs.keys()
    differ = [
        name for name in mine if mine[name].dtype != theirs[name].dtype or not torch.equal(mine[name], theirs[name])
    ]
    assert not differ, f"loaded differently from the live model: {differ}"


def test_unhooked_fast_path_matches_reference(pair):
    _, hf, model = pair
    tokens = torch.randint(0, V, (3, 10))
    with torch.no_grad():
        assert_close(model(tokens), reference(hf, tokens).logits, "logits")


def test_left_padded_batch_matches_reference(pair):
    """We derive positions from the mask; HF is given the same positions (or derives them itself)."""
    name, hf, model = pair
    tokens = torch.randint(0, V, (2, 9))
    mask = torch.ones_like(tokens)
    mask[0, :3] = 0
    kwargs = {} if name.split("-")[0] in POSITIONS_FROM_MASK else {"position_ids": (mask.cumsum(-1) - 1).clamp(min=0)}
    ref = reference(hf, tokens, attention_mask=mask, **kwargs)
    with torch.no_grad():
        logits = model(tokens, attention_mask=mask)
        alone = model(tokens[0:1, 3:])
    assert_close(logits[mask.bool()], ref.logits[mask.bool()], "logits")
    assert_close(logits[0, 3:], alone[0], "logits", label="padded row against the row alone")


def test_loss_matches_reference(pair):
    _, hf, model = pair
    tokens = torch.randint(0, V, (2, 10))
    with torch.no_grad():
        ref_loss = hf(tokens, labels=tokens).loss
        loss = model(tokens, return_type="loss")
    assert_close(loss, ref_loss, "logits")


def test_family_hook_points_exist(pair):
    name, _, model = pair
    missing = [hook for hook in VARIANTS[name][1] if hook not in model.hook_dict]
    assert not missing, f"{name} lacks hook points {missing}"


def test_identity_hooks_everywhere_are_bit_identical(pair):
    _, _, model = pair
    model.set_attn_implementation("eager")
    try:
        tokens = torch.randint(0, V, (2, 9))
        with torch.no_grad():
            plain = model(tokens)
            calls = set()

            def identity(x, hook):
                calls.add(hook.name)
                return x

            hooked = model.run_with_hooks(tokens, fwd_hooks=[(lambda name: True, identity)])
    finally:
        model.set_attn_implementation("sdpa")
    never = {name for name in set(model.hook_dict) - calls if ".experts." not in name}  # experts may get no token
    assert not never, f"never called: {sorted(never)}"
    assert torch.equal(plain, hooked)


def _perturb(model):
    n_experts = model.cfg.num_experts

    def perturb(x, hook):
        if hook.name == "hook_tokens":
            return (x + 1) % V
        if hook.name.endswith("hook_expert_indices"):
            return (x + 1) % n_experts
        if hook.name.endswith("hook_router_logits"):
            return x.flip(-1)  # other experts win (a top-1 router's weights are always 1)
        if hook.name.endswith("hook_attn_scores"):
            return x * 2.0
        if hook.name.endswith("hook_pattern"):
            return x.flip(-1).tril()  # still causal, but a different mixing of values
        # Not affine along d_model, so that a LayerNorm reading the edit cannot undo it.
        return x * 1.5 + 0.1 + 0.3 * x.roll(1, dims=-1)

    return perturb


def test_a_hook_on_every_point_takes_effect(pair):
    _, _, model = pair
    tokens = torch.randint(0, V, (1, 12))
    perturb = _perturb(model)
    with torch.no_grad():
        plain, cache = model.run_with_cache(tokens, names_filter=lambda name: name.endswith("hook_expert_indices"))
        for name in model.hook_dict:
            if ".experts." in name:  # an expert's hooks run only when a token is routed to it
                layer, expert = name.split(".")[1], int(name.split(".")[4])
                if expert not in cache[f"blocks.{layer}.mlp.hook_expert_indices"]:
                    continue
            edited = model.run_with_hooks(tokens, fwd_hooks=[(name, perturb)])
            assert not torch.allclose(edited, plain), f"a hook on {name} changed nothing"
        assert torch.equal(model(tokens), plain)


@pytest.mark.parametrize("chunks", [[7, 1, 1, 1], [3, 4, 3]])
def test_cached_decoding_matches_full_forward(pair, chunks):
    _, _, model = pair
    tokens = torch.randint(0, V, (2, sum(chunks)))
    mask = torch.ones_like(tokens)
    mask[1, :2] = 0  # a left-padded row too
    with torch.no_grad():
        full = model(tokens, attention_mask=mask)
        cache = KVCache.for_model(model)
        start, pieces = 0, []
        for size in chunks:
            piece = slice(start, start + size)
            pieces.append(model(tokens[:, piece], attention_mask=mask[:, piece], past_kv_cache=cache))
            start += size
    assert_close(torch.cat(pieces, dim=1)[mask.bool()], full[mask.bool()], "logits")


REFUSED = {
    "BLOOM post-norm residual": (
        "BloomConfig",
        "BloomForCausalLM",
        dict(apply_residual_connection_post_layernorm=True),
        "apply_residual_connection_post_layernorm",
    ),
    "Gemma 3 bidirectional": (
        "Gemma3TextConfig",
        "Gemma3ForCausalLM",
        dict(use_bidirectional_attention=True),
        "use_bidirectional_attention",
    ),
}


def assert_refused(name: str, architecture: str, fields: dict, message: str) -> None:
    """The config `name` with `fields`, saved as `architecture`, is refused with an error matching `message`."""
    from hooked.loading import UnsupportedConfigError, build

    hf = config(name, architectures=[architecture], **fields).to_dict()
    with pytest.raises(UnsupportedConfigError, match=message):
        build(HookedTransformer, hf, checkpoint=None)


@pytest.mark.parametrize("case", sorted(REFUSED))
def test_config_fields_that_change_numbers_are_refused(case):
    assert_refused(*REFUSED[case])


def test_config_validates_the_family_fields():
    from hooked import HookedTransformerConfig

    base = dict(d_model=32, n_layers=2, n_heads=4, d_vocab=50, n_ctx=16)
    bad = {
        "attn_types of the wrong length": dict(attn_types=("global",), sliding_window=4),
        "local layers without a window": dict(attn_types=("global", "local")),
        "more experts per token than experts": dict(num_experts=2, experts_per_token=3, gated_mlp=True),
        "experts that are not gated": dict(num_experts=2, experts_per_token=1),
        "a q/k norm without a weight": dict(qk_norm="shared", normalization_type="LNPre"),
        "a parallel block with post-norms": dict(parallel_attn_mlp=True, block_norms="pre_and_post"),
        "adjacent rotary pairs without rotary": dict(rotary_adjacent_pairs=True),
        "a negative soft cap": dict(attn_scores_soft_cap=-1.0),
    }
    for what, fields in bad.items():
        with pytest.raises(ValueError):
            HookedTransformerConfig(**base, **fields)
            pytest.fail(f"accepted {what}")
    cfg = HookedTransformerConfig(**base, attn_types=["local", "global"], sliding_window=4)
    assert cfg.attn_types == ("local", "global") and cfg.layer_attn_type(0) == "local"
    assert HookedTransformerConfig(**base, sliding_window=4).layer_attn_type(1) == "local"  # Mistral: every layer
    assert HookedTransformerConfig(**base).layer_attn_type(1) == "global"


# Every field that says how a config rotates or which layers slide: the cases below give them exactly.
ROPE_AND_LAYER_FIELDS = (
    "rope_parameters",
    "rope_theta",
    "rope_scaling",
    "partial_rotary_factor",
    "rotary_pct",
    "rotary_emb_base",
    "rope_local_base_freq",
    "layer_types",
    "sliding_window",
    "use_sliding_window",
)


def read_config(name: str, architecture: str, **fields):
    """Our config for a `name` config.json whose rotary and layer-type fields are exactly `fields`."""
    from hooked.loading.convert import model_config

    hf = {k: v for k, v in config(name, **SMALL).to_dict().items() if k not in ROPE_AND_LAYER_FIELDS}
    return model_config(
        {**hf, "architectures": [architecture], **fields}, torch.float32, torch.device("cpu"), None, None
    )


# name -> (config class, architecture, the fields as transformers 4 writes them, as transformers 5 does,
# and what both must give: rotary_base, rotary_dim, rope_scaling's kind, rotary_base_local)
ROPE_OF_EITHER_VERSION = {
    "Llama linear, old 'type' key": (
        "LlamaConfig",
        "LlamaForCausalLM",
        {"rope_theta": 500.0, "rope_scaling": {"type": "linear", "factor": 4.0}},
        {"rope_parameters": {"rope_type": "linear", "rope_theta": 500.0, "factor": 4.0}},
        (500.0, 16, "linear", 0.0),
    ),
    "Pythia (GPT-NeoX's own names)": (
        "GPTNeoXConfig",
        "GPTNeoXForCausalLM",
        {"rotary_pct": 0.25, "rotary_emb_base": 10000},
        {"rope_parameters": {"rope_type": "default", "rope_theta": 10000.0, "partial_rotary_factor": 0.25}},
        (10000.0, 4, None, 0.0),
    ),
    "Phi without a fraction (transformers' default, half)": (
        "PhiConfig",
        "PhiForCausalLM",
        {"rope_theta": 10000.0},
        {"rope_parameters": {"rope_type": "default", "rope_theta": 10000.0, "partial_rotary_factor": 0.5}},
        (10000.0, 8, None, 0.0),
    ),
    "Phi-3 (5.x also writes the fraction at the top)": (
        "Phi3Config",
        "Phi3ForCausalLM",
        {"rope_theta": 10000.0, "rope_scaling": None, "partial_rotary_factor": 0.75},
        {"rope_parameters": {"rope_theta": 10000.0, "partial_rotary_factor": 0.75}, "partial_rotary_factor": 0.75},
        (10000.0, 12, None, 0.0),
    ),
    "Gemma 3 scaled global, local base": (
        "Gemma3TextConfig",
        "Gemma3ForCausalLM",
        {"rope_theta": 1e6, "rope_scaling": {"rope_type": "linear", "factor": 8.0}, "rope_local_base_freq": 1e4},
        {
            "rope_parameters": {
                "full_attention": {"rope_type": "linear", "rope_theta": 1e6, "factor": 8.0},
                "sliding_attention": {"rope_type": "default", "rope_theta": 1e4},
            }
        },
        (1e6, 256, "linear", 1e4),  # Gemma 3's default head_dim is 256
    ),
}


@pytest.mark.parametrize("case", sorted(ROPE_OF_EITHER_VERSION))
def test_rope_fields_of_either_transformers_version_read_the_same(case):
    name, architecture, old, new, expected = ROPE_OF_EITHER_VERSION[case]
    ours = read_config(name, architecture, **new)
    assert read_config(name, architecture, **old) == ours
    kind = ours.rope_scaling.kind if ours.rope_scaling else None
    assert (ours.rotary_base, ours.rotary_dim, kind, ours.rotary_base_local) == expected


AMBIGUOUS_ROPE = {
    # What transformers 4 writes when given transformers 5's rope_parameters: it keeps them but reads rope_theta.
    "Llama theta": (
        "LlamaConfig",
        "LlamaForCausalLM",
        {"rope_theta": 10000.0, "rope_scaling": None, "rope_parameters": {"rope_type": "default", "rope_theta": 500.0}},
        "rope_theta: 500.0 there, 10000.0 in rope_theta",
    ),
    "Llama scaling": (
        "LlamaConfig",
        "LlamaForCausalLM",
        {"rope_theta": 1e4, "rope_scaling": None, "rope_parameters": {"rope_type": "linear", "factor": 2.0}},
        "rope_type: 'linear' there, 'default' in rope_scaling",
    ),
    "GPT-NeoX fraction": (
        "GPTNeoXConfig",
        "GPTNeoXForCausalLM",
        {"rotary_pct": 0.25, "rope_parameters": {"rope_theta": 10000.0, "partial_rotary_factor": 0.5}},
        "partial_rotary_factor: 0.5 there, 0.25 in rotary_pct",
    ),
    "Gemma 3 local base": (
        "Gemma3TextConfig",
        "Gemma3ForCausalLM",
        {"rope_local_base_freq": 1e4, "rope_parameters": {"sliding_attention": {"rope_theta": 5e4}}},
        "rope_theta: 50000.0 there, 10000.0 in rope_local_base_freq",
    ),
}


@pytest.mark.parametrize("case", sorted(AMBIGUOUS_ROPE))
def test_rope_fields_the_two_versions_read_differently_are_refused(case):
    from hooked.loading import UnsupportedConfigError

    name, architecture, fields, message = AMBIGUOUS_ROPE[case]
    with pytest.raises(UnsupportedConfigError, match=re.escape(message)):
        read_config(name, architecture, **fields)


def test_layer_types_missing_from_older_configs_are_derived_as_transformers_does():
    local, full = "local", "global"
    gemma2 = read_config("Gemma2Config", "Gemma2ForCausalLM", sliding_window=4)
    assert gemma2.attn_types == (local, full, local) and gemma2.sliding_window == 4
    gemma3 = read_config("Gemma3TextConfig", "Gemma3ForCausalLM", sliding_window=4, sliding_window_pattern=2)
    assert gemma3.attn_types == (local, full, local)
    assert read_config("Gemma3TextConfig", "Gemma3ForCausalLM", sliding_window=4).attn_types == (local,) * 3
    windowed = dict(use_sliding_window=True, sliding_window=4, max_window_layers=1, num_key_value_heads=4)
    assert read_config("Qwen3Config", "Qwen3ForCausalLM", **windowed).attn_types == (full, local, local)
    # Without use_sliding_window, transformers drops the window whatever layer_types says.
    ignored = dict(sliding_window=4, layer_types=["sliding_attention"] * 3, num_key_value_heads=4)
    unused = read_config("Qwen3Config", "Qwen3ForCausalLM", **ignored)
    assert unused.attn_types is None and unused.sliding_window is None
    assert read_config("Qwen2Config", "Qwen2ForCausalLM", **windowed).attn_types == (full, local, local)
