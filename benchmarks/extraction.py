"""Extraction throughput: `hooked.extract` against transformers with a plain PyTorch hook, in one process.

On the embedded SmolLM2-135M (float32, 30 layers), one residual hook point at layer 10
(`blocks.10.hook_resid_post`, the output of transformers' `model.layers[10]`):

- hooked: `extract()` end to end on a token corpus (forward stopped after block 10, positions selected,
  float32 safetensors shards written to a fresh folder);
- reference: transformers' full forward (built from the same GGUF file) with a forward hook on
  `model.layers[10]` that keeps a float32 CPU copy of its output, as a hand-written extraction loop does;
- for context, hooked's full forward with the same one-hook cache (`run_with_cache`), which shows what
  stopping early is worth.

The three run interleaved, one repeat of each in turn, so load on a shared machine hits all alike. Prints
medians with their spread (min-max), tokens per second and the ratio reference / hooked time (the speedup),
and writes them to JSON.

    python benchmarks/extraction.py [--repeats 5] [--batches 2] [--out benchmarks/results/extraction.json]
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import torch
from transformers import AutoModelForCausalLM

from hooked import HookedTransformer
from hooked.extract import ActivationShards, extract
from hooked.loading.pretrained import gguf_file

BATCH, SEQ, LAYER = 8, 128, 10
HOOK = f"blocks.{LAYER}.hook_resid_post"


def timed(fn: Callable[[], object]) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def summary(seconds: list[float], tokens: int) -> dict:
    median = statistics.median(seconds)
    return {
        "median_s": median,
        "min_s": min(seconds),
        "max_s": max(seconds),
        "tokens_per_s": tokens / median,
        "runs_s": seconds,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--batches", type=int, default=2, help=f"batches of {BATCH} x {SEQ} tokens per repeat")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results/extraction.json"))
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    path = gguf_file("smollm2-135m")
    ours = HookedTransformer.from_pretrained(path).eval()
    ref = AutoModelForCausalLM.from_pretrained(path.parent, gguf_file=path.name, dtype=torch.float32).eval()
    generator = torch.Generator().manual_seed(0)
    corpus = torch.randint(100, ours.cfg.d_vocab - 100, (args.batches * BATCH, SEQ), generator=generator)
    batches = corpus.split(BATCH)
    n_tokens = corpus.numel()

    kept: list[torch.Tensor] = []
    layer = ref.model.layers[LAYER]
    handle = layer.register_forward_hook(lambda module, inputs, output: kept.append(output.detach().float().cpu()))

    def reference() -> None:
        kept.clear()
        for batch in batches:
            ref(batch)

    def cached_full_forward() -> None:
        for batch in batches:
            ours.run_with_cache(batch, names_filter=HOOK)

    with tempfile.TemporaryDirectory() as tmp, torch.inference_mode():
        folders = iter(Path(tmp, str(i)) for i in range(10**6))

        def hooked_extract() -> None:
            extract(ours, corpus, HOOK, next(folders), batch_size=BATCH, tokens_per_shard=n_tokens, progress=False)

        # Warm-up, and the check that both sides compute the same activations (or the timing means nothing).
        hooked_extract()
        reference()
        stored = ActivationShards(Path(tmp, "0"))[list(range(n_tokens))]
        expected = torch.cat(kept).reshape(n_tokens, -1)
        assert torch.allclose(stored, expected, atol=1e-3, rtol=1e-3), (stored - expected).abs().max()
        cached_full_forward()

        times: dict[str, list[float]] = {"hooked_extract": [], "reference": [], "hooked_full_forward_cache": []}
        for _ in range(args.repeats):
            times["hooked_extract"].append(timed(hooked_extract))
            times["reference"].append(timed(reference))
            times["hooked_full_forward_cache"].append(timed(cached_full_forward))
    handle.remove()

    results = {
        "model": "SmolLM2-135M (float32)",
        "hook": HOOK,
        "batch": BATCH,
        "seq": SEQ,
        "tokens_per_repeat": n_tokens,
        "repeats": args.repeats,
        "threads": args.threads,
        "torch": torch.__version__,
        **{name: summary(seconds, n_tokens) for name, seconds in times.items()},
    }
    results["speedup_reference_over_hooked_extract"] = (
        results["reference"]["median_s"] / results["hooked_extract"]["median_s"]
    )
    # Each repeat ran both sides back to back, so its own ratio is the comparison least hit by shared load.
    results["speedup_per_repeat"] = [r / h for r, h in zip(times["reference"], times["hooked_extract"], strict=True)]
    print(f"{n_tokens} tokens per repeat, {args.repeats} repeats, {args.threads} threads")
    print(f"{'measure':<28}{'median s':>10}{'min-max s':>16}{'tokens/s':>10}")
    for name in times:
        row = results[name]
        spread = f"{row['min_s']:.2f}-{row['max_s']:.2f}"
        print(f"{name:<28}{row['median_s']:>10.3f}{spread:>16}{row['tokens_per_s']:>10.0f}")
    per_repeat = results["speedup_per_repeat"]
    print(
        f"speedup (reference / hooked extract): {results['speedup_reference_over_hooked_extract']:.2f}x of the "
        f"medians, {min(per_repeat):.2f}-{max(per_repeat):.2f}x per repeat"
    )
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(results, indent=2))
    print(f"Wrote {args.out}")


if __name__ == "__main__":
    main()
