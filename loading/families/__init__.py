"""Family adapters; importing this package registers them all."""

from hooked.loading.families import (  # noqa: F401
    bloom,
    cohere,
    gemma,
    gemma3_multimodal,
    glm,
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
    smollm3,
    stablelm,
    starcoder2,
)
