"""Family adapters; importing this package registers them all."""

from hooked.loading.families import (  # noqa: F401
    bloom,
    gemma,
    gemma3_multimodal,
    gpt2,
    gpt_neo,
    gpt_neox,
    gptj,
    granite,
    llama,
    mixtral,
    olmo,
    opt,
    phi,
    phi3,
    qwen3,
    stablelm,
)
