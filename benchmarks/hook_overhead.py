"""What hooks cost: the fixed cost of a `run_with_hooks` / `run_with_cache` call and the cost per attached hook.

On a tiny random model (2 layers, d_model 16, 4 tokens) the forward pass itself is a few hundred
microseconds of Python and kernel launches, so differences between runs are the hook machinery's own:

- `forward`: the plain forward pass, no hooks (the baseline the fixed costs are measured from);
- `run_with_hooks` with 0, 1, 8, 32 and all no-op hooks (each returns None): the fixed cost is the 0-hook
  call minus the plain forward, the per-hook cost the slope from 0 to all hooks;
- `run_with_cache` with 0, 1, 8, 32 and all hook points cached (names given as a list), likewise;
- the floor: plain PyTorch `register_forward_hook` on the same HookPoint modules, registered before and
  removed after each forward (the same lifetime as a `run_with_hooks` hook), with a no-op hook and with
  one storing the output in a dict (what a cache does).

Calls of all variants are interleaved one by one and timed in this thread's CPU time (see `measure`);
each round gives the mean of `--calls` calls per variant, and the fixed and per-hook costs are worked out
round by round. Medians over rounds with the spread (min-max), in microseconds, written to JSON.
nnsight's published figure for comparison is 245 us per trace (quoted, not run here).

    python benchmarks/hook_overhead.py [--rounds 7] [--calls 200] [--out benchmarks/results/hook_overhead.json]
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from collections.abc import Callable
from pathlib import Path

import torch

from hooked import HookedTransformer, HookedTransformerConfig

COUNTS = (0, 1, 8, 32)


def tiny_model() -> HookedTransformer:
    cfg = HookedTransformerConfig(
        n_layers=2, d_model=16, n_heads=2, d_head=8, d_mlp=32, d_vocab=32, n_ctx=8, act_fn="gelu_new", seed=0
    )
    return HookedTransformer(cfg).eval()


def noop(tensor, hook):
    return None


def variants(model: HookedTransformer, tokens: torch.Tensor) -> dict[str, Callable[[], object]]:
    names = list(model.hook_dict)
    counts = (*COUNTS, len(names))
    runs: dict[str, Callable[[], object]] = {"forward": lambda: model(tokens)}
    for n in counts:
        hooks = [(name, noop) for name in names[:n]]
        runs[f"run_with_hooks_{n}"] = lambda h=hooks: model.run_with_hooks(tokens, fwd_hooks=h)
        runs[f"run_with_cache_{n}"] = lambda s=names[:n]: model.run_with_cache(tokens, names_filter=s)
        modules = [model.hook_dict[name] for name in names[:n]]
        runs[f"torch_hooks_{n}"] = lambda m=modules: torch_hooks(model, tokens, m, store=False)
        runs[f"torch_store_{n}"] = lambda m=modules: torch_hooks(model, tokens, m, store=True)
    return runs


def torch_hooks(model: HookedTransformer, tokens: torch.Tensor, modules: list, store: bool):
    """The floor: plain PyTorch forward hooks on the same modules, for one forward."""
    kept: dict = {}

    def keep(module, inputs, output):
        kept[module] = output.detach()

    handles = [m.register_forward_hook(keep if store else lambda module, inputs, output: None) for m in modules]
    try:
        return model(tokens), kept
    finally:
        for handle in handles:
            handle.remove()


def measure(runs: dict[str, Callable[[], object]], rounds: int, calls: int) -> dict[str, list[float]]:
    """Per round, the mean time of one call of each variant, in microseconds of this thread's CPU time.

    Calls are interleaved one by one (each variant once, in turn, `calls` times, the order reversed every
    other pass), and timed with the thread's CPU clock: on one torch thread all the work is this thread's,
    and time the machine gives to other jobs (the noise that made wall-clock differences of a few
    microseconds unreadable here) is not counted."""
    for fn in runs.values():  # warm-up
        fn()
    order = list(runs.items())
    times: dict[str, list[float]] = {name: [] for name in runs}
    clock = time.thread_time_ns
    for _ in range(rounds):
        totals = dict.fromkeys(runs, 0)
        for i in range(calls):
            for name, fn in order if i % 2 == 0 else reversed(order):
                start = clock()
                fn()
                totals[name] += clock() - start
        for name, total in totals.items():
            times[name].append(total / calls / 1e3)
    return times


def spread(values: list[float]) -> dict:
    return {"median_us": statistics.median(values), "min_us": min(values), "max_us": max(values)}


def summarize(times: dict[str, list[float]], n_all: int) -> dict:
    """Fixed cost (0 hooks minus the plain forward) and per-hook cost (slope to all hooks), per round."""
    rounds = range(len(times["forward"]))
    out: dict = {"n_hook_points": n_all, "timings": {name: spread(v) for name, v in times.items()}}
    for kind in ("run_with_hooks", "run_with_cache", "torch_hooks", "torch_store"):
        fixed = [times[f"{kind}_0"][r] - times["forward"][r] for r in rounds]
        per_hook = [(times[f"{kind}_{n_all}"][r] - times[f"{kind}_0"][r]) / n_all for r in rounds]
        out[kind] = {"fixed_us": spread(fixed), "per_hook_us": spread(per_hook)}
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--calls", type=int, default=200)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results/hook_overhead.json"))
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    model = tiny_model()
    tokens = torch.randint(0, 32, (1, 4), generator=torch.Generator().manual_seed(0))
    with torch.inference_mode():
        times = measure(variants(model, tokens), args.rounds, args.calls)
    results = {
        "model": "random, 2 layers, d_model 16, 1 x 4 tokens",
        "rounds": args.rounds,
        "calls_per_timing": args.calls,
        "threads": args.threads,
        "clock": "this thread's CPU time, calls of all variants interleaved one by one",
        "torch": torch.__version__,
        "nnsight_published_us_per_trace": 245,
        **summarize(times, len(model.hook_dict)),
    }
    print(f"plain forward: {results['timings']['forward']['median_us']:.0f} us")
    print(f"{'':<16}{'fixed us':>10}{'per hook us':>13}")
    for kind in ("run_with_hooks", "run_with_cache", "torch_hooks", "torch_store"):
        row = results[kind]
        print(f"{kind:<16}{row['fixed_us']['median_us']:>10.1f}{row['per_hook_us']['median_us']:>13.2f}")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(results, indent=2))
    print(f"Wrote {args.out}")


if __name__ == "__main__":
    main()
