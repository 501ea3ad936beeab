"""`hooked.components.linear` (the weight split across threads) against F.linear, for the shapes it applies to.

For each weight shape of SmolLM2-135M and GPT-2 small that reaches `MIN_WEIGHT_NUMEL`, and each row count
(1, 8 and 64 rows: decoding at batch 1 and 8, and the largest count the split takes), both sides run
one after the other, `--calls` times per round, for `--rounds` rounds: interleaved, so load on a shared
machine hits both. Reports the median time per call, the ratio linear / F.linear and its spread over
rounds, and checks that the two agree bit for bit with F.linear on one thread. The split is measured on
every CPU, whether or not `SPLIT_ON_THIS_CPU` takes it there; the JSON names the CPU and that verdict.

    python benchmarks/split_linear.py [--rounds 9] [--calls 20] [--out benchmarks/results/split_linear.json]
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path

import torch
import torch.nn.functional as F

from hooked.components import linear as linear_module
from hooked.components.linear import MAX_ROWS, MIN_WEIGHT_NUMEL, _blocks, linear

SHAPES = {  # [d_out, d_in], as F.linear takes them
    "SmolLM2 gate/up 1536 x 576": (1536, 576),
    "SmolLM2 down 576 x 1536": (576, 1536),
    "SmolLM2 unembed 49152 x 576": (49152, 576),
    "GPT-2 q/o 768 x 768": (768, 768),
    "GPT-2 qkv 2304 x 768": (2304, 768),
    "GPT-2 mlp in 3072 x 768": (3072, 768),
    "GPT-2 mlp out 768 x 3072": (768, 3072),
    "GPT-2 unembed 50257 x 768 (odd: overlapping blocks)": (50257, 768),
}
ROWS = (1, 8, MAX_ROWS)


def cpu_name() -> str:
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("model name"):
            return line.split(":", 1)[1].strip()
    return "unknown"


def time_pair(x: torch.Tensor, weight: torch.Tensor, rounds: int, calls: int) -> tuple[list[float], list[float]]:
    ours, ref = [], []
    for fn in (linear, F.linear):  # warm-up
        fn(x, weight)
    for _ in range(rounds):
        for fn, out in ((linear, ours), (F.linear, ref)):
            start = time.perf_counter()
            for _ in range(calls):
                fn(x, weight)
            out.append((time.perf_counter() - start) / calls * 1e6)
    return ours, ref


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=9)
    parser.add_argument("--calls", type=int, default=20)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results/split_linear.json"))
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    results = {"threads": args.threads, "rounds": args.rounds, "calls": args.calls, "torch": torch.__version__}
    results["min_weight_numel"], results["rows"] = MIN_WEIGHT_NUMEL, {}
    results["cpu"], results["split_on_this_cpu"] = cpu_name(), linear_module.SPLIT_ON_THIS_CPU
    linear_module.SPLIT_ON_THIS_CPU = True  # measure the split itself, wherever the gate would not take it
    print(f"{'weight':<44}{'rows':>5}{'split':>6}{'ours us':>10}{'F.linear us':>13}{'ratio':>7}{'spread':>12}")
    generator = torch.Generator().manual_seed(0)
    with torch.inference_mode():
        for label, (d_out, d_in) in SHAPES.items():
            weight = torch.randn(d_out, d_in, generator=generator)
            for rows in ROWS:
                x = torch.randn(rows, d_in, generator=generator)
                torch.set_num_threads(1)
                single_thread = F.linear(x, weight)
                torch.set_num_threads(args.threads)
                assert torch.equal(linear(x, weight), single_thread), f"{label}, {rows} rows: the numbers differ"
                ours, ref = time_pair(x, weight, args.rounds, args.calls)
                per_round = [a / b for a, b in zip(ours, ref, strict=True)]
                ratio = statistics.median(ours) / statistics.median(ref)
                row = {
                    "split": _blocks(x, weight) > 1,
                    "ours_us": statistics.median(ours),
                    "f_linear_us": statistics.median(ref),
                    "ratio": ratio,
                    "ratio_min": min(per_round),
                    "ratio_max": max(per_round),
                }
                results["rows"][f"{label} | {rows}"] = row
                spans = f"{row['ratio_min']:.2f}-{row['ratio_max']:.2f}"
                print(
                    f"{label:<44}{rows:>5}{'yes' if row['split'] else 'no':>6}{row['ours_us']:>10.0f}"
                    f"{row['f_linear_us']:>13.0f}{ratio:>7.2f}{spans:>12}"
                )
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(results, indent=2))
    print(f"Wrote {args.out}")


if __name__ == "__main__":
    main()
