"""TransformerLens's short model names, mapped to the Hugging Face hub ids they stand for.

Notebooks say `from_pretrained("gpt2-small")` or `"pythia-70m"`; the hub knows those models as
"openai-community/gpt2" and "EleutherAI/pythia-70m". Names are matched case-insensitively, and only
for families `hooked` loads. TransformerLens's own toy checkpoints (attn-only-*, solu-*, gelu-*) are
not Hugging Face checkpoints, so they are named in an error instead.
"""

from __future__ import annotations


def _family(org: str, names: list[str], prefix: str = "") -> dict[str, str]:
    return {prefix + name.lower(): f"{org}/{name}" for name in names}


PYTHIA_SIZES = ("14m", "31m", "70m", "160m", "410m", "1b", "1.4b", "2.8b", "6.9b", "12b")
PYTHIA = [f"pythia-{size}{suffix}" for size in PYTHIA_SIZES for suffix in ("", "-deduped")]
TINY_STORIES = {
    "tiny-stories-1m": "TinyStories-1M",
    "tiny-stories-3m": "TinyStories-3M",
    "tiny-stories-8m": "TinyStories-8M",
    "tiny-stories-28m": "TinyStories-28M",
    "tiny-stories-33m": "TinyStories-33M",
    "tiny-stories-1l-21m": "TinyStories-1Layer-21M",
    "tiny-stories-2l-33m": "TinyStories-2Layers-33M",
    "tiny-stories-instruct-1m": "TinyStories-Instruct-1M",
    "tiny-stories-instruct-33m": "TinyStories-Instruct-33M",
}
ALIASES = {
    "gpt2-small": "openai-community/gpt2",
    **_family("openai-community", ["gpt2", "gpt2-medium", "gpt2-large", "gpt2-xl"]),
    "distilgpt2": "distilbert/distilgpt2",
    **_family("EleutherAI", PYTHIA),
    **_family("EleutherAI", ["gpt-neo-125M", "gpt-neo-1.3B", "gpt-neo-2.7B", "gpt-j-6B"]),
    **{short: f"roneneldan/{name}" for short, name in TINY_STORIES.items()},
    **_family("facebook", ["opt-125m", "opt-1.3b", "opt-2.7b", "opt-6.7b", "opt-13b"]),
    **_family("bigscience", ["bloom-560m", "bloom-1b1", "bloom-1b7", "bloom-3b", "bloom-7b1"]),
    **_family("microsoft", ["phi-1", "phi-1_5", "phi-2", "Phi-3-mini-4k-instruct"]),
    **_family("google", ["gemma-2b", "gemma-7b", "gemma-2-2b", "gemma-2-9b", "gemma-3-270m", "gemma-3-1b-pt"]),
    **_family("Qwen", ["Qwen2-0.5B", "Qwen2.5-0.5B", "Qwen3-0.6B"]),
    **_family("HuggingFaceTB", ["SmolLM2-135M", "SmolLM2-360M", "SmolLM2-1.7B"]),
    "mistral-7b": "mistralai/Mistral-7B-v0.1",
    "llama-2-7b": "meta-llama/Llama-2-7b-hf",
    "llama-3.2-1b": "meta-llama/Llama-3.2-1B",
    "olmo-2-1b": "allenai/OLMo-2-0425-1B",
    "stablelm-base-alpha-3b": "stabilityai/stablelm-base-alpha-3b",
}
TRANSFORMERLENS_ONLY = ("attn-only-", "solu-", "gelu-", "redwood_attn")


def hub_id(name: str) -> str:
    """The hub id a TransformerLens short name stands for; any other name as it is."""
    key = name.lower()
    if key.startswith(TRANSFORMERLENS_ONLY) and "/" not in key:
        raise FileNotFoundError(
            f"{name!r} is one of TransformerLens's own toy models, stored in its format, not as a Hugging Face "
            "checkpoint. Build it with HookedTransformer(HookedTransformerConfig(...)) and load_state_dict."
        )
    return ALIASES.get(key, name)
