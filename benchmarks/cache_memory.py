"""Peak memory of a full activation cache against the bytes of the tensors it holds (ideal: 1.0x).

On the embedded SmolLM2-135M (float32), `run_with_cache()` of every hook point on 4 x 128 tokens. Each
measurement runs in a fresh spawned process: load the model, warm up on 1 x 8 tokens (threads, kernels),
reset the kernel's peak-RSS counter (`/proc/self/clear_refs`), then run the cache and read the peak
(`VmHWM`) against the RSS before it. Resident memory is what is measured: `tracemalloc` does not see
torch's allocator, and torch keeps no allocator statistics for CPU tensors; every byte the cache keeps is
written, so it is resident.

"Held" counts each storage once: several hook points share one (the per-head `hook_q_input` etc. are
broadcast views of the residual), so the nominal sum of numel x element size, also reported, counts
bytes that do not exist. The output logits are held too and are counted with the cache.

    python benchmarks/cache_memory.py [--processes 3] [--out benchmarks/results/cache_memory.json]
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import os
import statistics
from pathlib import Path

import torch

BATCH, SEQ = 4, 128


def _rss_kib(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field):
            return int(line.split()[1])
    raise RuntimeError(f"{field} not in /proc/self/status")


def held_bytes(tensors: list[torch.Tensor]) -> tuple[int, int]:
    """(bytes of the distinct storages, nominal bytes numel x element size) of `tensors`."""
    storages = {t.untyped_storage().data_ptr(): t.untyped_storage().nbytes() for t in tensors}
    return sum(storages.values()), sum(t.numel() * t.element_size() for t in tensors)


def measure_once(threads: int) -> dict:
    """Runs in a fresh process: one full cache, its peak RSS growth and the bytes it holds."""
    from hooked import HookedTransformer

    torch.set_num_threads(threads)
    model = HookedTransformer.from_pretrained("smollm2-135m").eval()
    tokens = torch.randint(100, model.cfg.d_vocab - 100, (BATCH, SEQ), generator=torch.Generator().manual_seed(0))
    with torch.inference_mode():
        model.run_with_cache(tokens[:1, :8])  # warm-up: thread pools and kernels, a few MiB
        Path("/proc/self/clear_refs").write_text("5")  # reset the peak-RSS counter
        before = _rss_kib("VmRSS")
        logits, cache = model.run_with_cache(tokens)
        peak = _rss_kib("VmHWM")
    unique, nominal = held_bytes([*cache.values(), logits])
    return {
        "peak_growth_bytes": (peak - before) * 1024,
        "held_bytes": unique,
        "nominal_bytes": nominal,
        "n_tensors": len(cache) + 1,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--processes", type=int, default=3, help="fresh processes, one measurement each")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results/cache_memory.json"))
    args = parser.parse_args()
    runs = []
    for _ in range(args.processes):
        with multiprocessing.get_context("spawn").Pool(1) as pool:
            runs.append(pool.apply(measure_once, (args.threads,)))
    ratios = [run["peak_growth_bytes"] / run["held_bytes"] for run in runs]
    results = {
        "model": "SmolLM2-135M (float32)",
        "batch": BATCH,
        "seq": SEQ,
        "threads": args.threads,
        "torch": torch.__version__,
        "load_average": os.getloadavg(),
        "held_mib": runs[0]["held_bytes"] / 2**20,
        "nominal_mib": runs[0]["nominal_bytes"] / 2**20,
        "n_tensors": runs[0]["n_tensors"],
        "peak_growth_mib": {
            "median": statistics.median(r["peak_growth_bytes"] for r in runs) / 2**20,
            "min": min(r["peak_growth_bytes"] for r in runs) / 2**20,
            "max": max(r["peak_growth_bytes"] for r in runs) / 2**20,
        },
        "ratio_peak_to_held": {"median": statistics.median(ratios), "min": min(ratios), "max": max(ratios)},
        "runs": runs,
    }
    print(
        f"{results['n_tensors']} tensors hold {results['held_mib']:.0f} MiB (nominal {results['nominal_mib']:.0f} "
        f"MiB); peak RSS growth {results['peak_growth_mib']['median']:.0f} MiB: "
        f"{results['ratio_peak_to_held']['median']:.2f}x ({min(ratios):.2f}-{max(ratios):.2f})"
    )
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(results, indent=2))
    print(f"Wrote {args.out}")


if __name__ == "__main__":
    main()
