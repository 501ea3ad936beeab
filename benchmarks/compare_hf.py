"""Speed and memory of hooked against transformers on the same weights, in one process.

For each model (the embedded SmolLM2-135M, and a randomly initialized GPT-2-small-shaped model):
load time and peak memory (each load in a spawned child, so peaks do not mix), then in this process,
both sides interleaved repeat by repeat (so load on a shared machine hits both alike): the forward
pass on 8 x 128 tokens with no hooks, a full activation cache against the reference's
`output_hidden_states` + `output_attentions`, one zero-ablation hook per layer against the same
ablation done with plain PyTorch hooks on the reference, and greedy generation of 32 new tokens at
batch 1 and 8 against the reference's `generate`. Prints medians, their ratio (ours / reference) and
the spread of the repeat-by-repeat ratios, and writes them all to JSON.

    python benchmarks/compare_hf.py [--repeats 5] [--out benchmarks/results/compare_hf.json]
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import os
import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import torch
from transformers import AutoModelForCausalLM, GPT2Config, LlamaConfig

from hooked import HookedTransformer
from hooked.loading.gguf import read_gguf
from hooked.loading.pretrained import gguf_file

BATCH, SEQ = 8, 128


def interleaved(ours: Callable[[], object], ref: Callable[[], object], repeats: int) -> tuple[list, list]:
    """Seconds of each repeat of both sides, run in turn (ours, reference, ours, ...) so that load on a
    shared machine hits both alike; one warm-up call each first (first calls allocate and pick kernels)."""
    ours(), ref()
    times: tuple[list, list] = ([], [])
    for _ in range(repeats):
        for fn, kept in zip((ours, ref), times, strict=True):
            start = time.perf_counter()
            fn()
            kept.append(time.perf_counter() - start)
    return times


def _rss_kib(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field):
            return int(line.split()[1])
    raise RuntimeError(f"{field} not in /proc/self/status")


def _load_and_measure(library: str, folder: str) -> tuple[float, float]:
    """Runs in a fresh process: (seconds, peak MiB above the process's baseline) for one load."""
    torch.set_num_threads(2)
    Path("/proc/self/clear_refs").write_text("5")  # reset the peak-RSS counter
    baseline = _rss_kib("VmRSS")
    start = time.perf_counter()
    if library == "hooked":
        model = HookedTransformer.from_pretrained(folder)
    else:
        model = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32)
    with torch.no_grad():  # touch every weight: memory-mapped tensors count only once read
        for param in model.parameters():
            param.sum()
    return time.perf_counter() - start, (_rss_kib("VmHWM") - baseline) / 1024


def load_in_child(library: str, folder: Path) -> tuple[float, float]:
    """One load measured in a spawned process, so the two libraries' peaks do not mix (and no forked
    OpenMP runtime can deadlock). Imports happen before the clock starts, for both libraries."""
    with multiprocessing.get_context("spawn").Pool(1) as pool:
        return pool.apply(_load_and_measure, (library, str(folder)))


def ablate_head_zero_reference(hf) -> list:
    """Zero head 0's slice of the input to every o_proj / c_proj: the same ablation as hook_z[:, :, 0] = 0."""
    d_head = (
        hf.config.hidden_size // hf.config.num_attention_heads
        if hasattr(hf.config, "num_attention_heads")
        else hf.config.n_embd // hf.config.n_head
    )

    def zero_first_head(module, args):
        x = args[0].clone()
        x[..., :d_head] = 0.0
        return (x,)

    projections = [m for name, m in hf.named_modules() if name.endswith(("self_attn.o_proj", "attn.c_proj"))]
    return [p.register_forward_pre_hook(zero_first_head) for p in projections]


def compare(label: str, folder: Path, repeats: int) -> dict:
    print(f"\n== {label} ==")
    ours_load = load_in_child("hooked", folder)
    ref_load = load_in_child("transformers", folder)
    ours = HookedTransformer.from_pretrained(folder).eval()
    ref = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32).eval()  # sdpa, its default
    ref_eager = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32, attn_implementation="eager").eval()
    tokens = torch.randint(100, ours.cfg.d_vocab - 100, (BATCH, SEQ), generator=torch.Generator().manual_seed(0))

    rows = {"load_s": (ours_load[0], ref_load[0]), "load_peak_mib": (ours_load[1], ref_load[1])}
    with torch.inference_mode():
        rows["forward_s"] = interleaved(lambda: ours(tokens), lambda: ref(tokens), repeats)
        rows["full_cache_s"] = interleaved(
            lambda: ours.run_with_cache(tokens),
            lambda: ref_eager(tokens, output_hidden_states=True, output_attentions=True),
            repeats,
        )

        def zero_first_head(z, hook):
            z[:, :, 0] = 0.0

        hooks = [(f"blocks.{i}.attn.hook_z", zero_first_head) for i in range(ours.cfg.n_layers)]
        handles = ablate_head_zero_reference(ref)  # the reference's hooks stay on for its interleaved runs
        rows["ablation_s"] = interleaved(
            lambda: ours.run_with_hooks(tokens, fwd_hooks=hooks), lambda: ref(tokens), repeats
        )
        ablated_ref = ref(tokens).logits
        for handle in handles:
            handle.remove()
        ablated_ours = ours.run_with_hooks(tokens, fwd_hooks=hooks)
        for batch in (1, 8):  # greedy, 32 new tokens, on the key-value cache; reported as seconds per run
            prompt = tokens[:batch, :16]
            rows[f"generate_b{batch}_s"] = interleaved(
                lambda p=prompt: ours.generate(p, max_new_tokens=32, do_sample=False, stop_at_eos=False, verbose=False),
                lambda p=prompt: ref.generate(
                    p,
                    attention_mask=torch.ones_like(p),
                    max_new_tokens=32,
                    min_new_tokens=32,
                    do_sample=False,
                    eos_token_id=None,
                    pad_token_id=0,
                ),
                repeats,
            )
    # The two ablations must be the same computation, or the timing comparison means nothing.
    assert torch.allclose(ablated_ours, ablated_ref, atol=1e-3), "the ablations differ"

    result = {}
    print(f"{'measure':<18}{'hooked':>12}{'reference':>12}{'ratio':>8}{'per repeat':>14}")
    for name, (a, b) in rows.items():
        a, b = (a, b) if isinstance(a, list) else ([a], [b])  # loads: one measurement each
        per_repeat = [x / y for x, y in zip(a, b, strict=True)]
        ratio = statistics.median(a) / statistics.median(b)
        result[name] = {
            "hooked": spread(a),
            "reference": spread(b),
            "ratio": ratio,
            "ratio_per_repeat": spread(per_repeat),
        }
        spans = f"{min(per_repeat):.2f}-{max(per_repeat):.2f}"
        print(f"{name:<18}{statistics.median(a):>12.3f}{statistics.median(b):>12.3f}{ratio:>8.2f}{spans:>14}")
    for batch in (1, 8):  # the same runs as tokens per second
        ours_s, ref_s = (result[f"generate_b{batch}_s"][side]["median"] for side in ("hooked", "reference"))
        result[f"generate_b{batch}_tokens_per_s"] = {"hooked": 32 * batch / ours_s, "reference": 32 * batch / ref_s}
    return result


def spread(values: list[float]) -> dict:
    return {"median": statistics.median(values), "min": min(values), "max": max(values), "runs": values}


def smollm2_folder(workdir: Path) -> Path:
    """The embedded GGUF's dequantized weights as a float32 safetensors folder both libraries load
    (transformers refuses to save a model it loaded from GGUF, so we write the folder ourselves)."""
    checkpoint = read_gguf(gguf_file("smollm2-135m"))
    config = LlamaConfig(**{k: v for k, v in checkpoint.config.items() if not k.startswith("_")})
    model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    model.load_state_dict({name: checkpoint.get(name) for name in checkpoint.names()}, strict=False)
    model.tie_weights()
    model.save_pretrained(workdir / "smollm2")
    return workdir / "smollm2"


def gpt2_folder(workdir: Path) -> Path:
    torch.manual_seed(0)
    AutoModelForCausalLM.from_config(GPT2Config()).save_pretrained(workdir / "gpt2")
    return workdir / "gpt2"


MODELS = {
    "smollm2-135m": ("SmolLM2-135M (float32)", smollm2_folder),
    "gpt2-small-random": ("GPT-2 small shape, random (float32)", gpt2_folder),
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results/compare_hf.json"))
    parser.add_argument("--models", nargs="+", choices=list(MODELS), default=list(MODELS))
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    results = {"batch": BATCH, "seq": SEQ, "threads": args.threads, "repeats": args.repeats, "torch": torch.__version__}
    results["load_average_start"] = os.getloadavg()  # the machine is shared: how loaded it was
    with tempfile.TemporaryDirectory() as tmp:
        for key in args.models:
            label, make_folder = MODELS[key]
            results[key] = compare(label, make_folder(Path(tmp)), args.repeats)
            results["load_average_end"] = os.getloadavg()
            args.out.parent.mkdir(parents=True, exist_ok=True)
            args.out.write_text(json.dumps(results, indent=2))  # after each model, so a long run keeps its part
    print(f"\nWrote {args.out}")


if __name__ == "__main__":
    main()
