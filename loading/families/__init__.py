"""Family adapters; importing this package registers them all."""

from loading.families import gpt2, llama  # noqa: F401
