"""Activation extraction: a corpus streamed through the model, some hook points' activations written to
safetensors shards with a JSON manifest, resumable, on one process or under torchrun; and a reader.

    from hooked.extract import ActivationShards, extract

    extract(model, "corpus.txt", ["blocks.10.hook_resid_post"], "acts/", context=1024, dtype="bfloat16")
    for batch in ActivationShards("acts/").batches(4096, seed=0):  # [4096, d_model], shuffled across shards
        ...

The same from a shell: `python -m hooked.extract --model smollm2-135m --hook blocks.10.hook_resid_post
--corpus corpus.txt --out acts/` (and `torchrun --nproc_per_node N -m hooked.extract ...`). Layout:
`corpus.py` (texts to packed token batches), `run.py` (the forward passes), `shards.py` (files, resume),
`reader.py` (`ActivationShards`), `__main__.py` (the command).
"""

from hooked.extract.reader import ActivationShards
from hooked.extract.run import extract, stop_layer

__all__ = ["ActivationShards", "extract", "stop_layer"]
