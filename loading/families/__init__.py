"""Family adapters; importing this package registers them all."""

from hooked.loading.families import (  # noqa: F401
    bloom,
    gemma,
    gpt2,
    gpt_neo,
    gpt_neox,
    gpt_oss,
    gptj,
    granitemoe,
    llama,
    mixtral,
    olmo,
    olmoe,
    opt,
    phi,
    phi3,
    qwen3,
    qwen_moe,
    stablelm,
)
