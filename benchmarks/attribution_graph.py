"""Time and memory of one attribution graph on SmolLM2-135M: hooked's own against circuit-tracer 0.5's.

Both build the graph of the same 32-token prompt, with the same transcoders (one per layer, reading
`hook_resid_mid`, writing `hook_mlp_out`; random ReLU transcoders of 2048 features whose encoder biases are
set so that about 16 features fire per token: the cost depends on the counts, not on what the features
mean), the same logit targets (at most 10, cumulative probability 0.95), the same feature budget
(`max_feature_nodes`, visited in order of influence) and the same batch size. circuit-tracer runs on
hooked through `hooked.compat` (it needs transformers 4.57, so run this in that environment, e.g. the one
.ci/run builds for the circuit-tracer suite); without circuit-tracer installed only hooked's side runs.

Time: the two interleaved, repeat by repeat, in one process; medians and spread. Peak memory: each side in
a fresh process, the largest resident set sampled every 5 ms during the call, less the resident set just
before it. Also reports whether the two graphs have the same feature nodes and their largest edge
difference. Writes benchmarks/results/attribution_graph.json.

    python benchmarks/attribution_graph.py [--repeats 3] [--max-feature-nodes 1024] [--batch-size 64]
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import statistics
import subprocess
import sys
import threading
import time
from pathlib import Path

HAVE_CIRCUIT_TRACER = importlib.util.find_spec("circuit_tracer") is not None
if HAVE_CIRCUIT_TRACER:
    import hooked.compat

    hooked.compat.install()  # before circuit-tracer imports transformer_lens

import torch  # noqa: E402

import hooked  # noqa: E402
from hooked.dictionaries import SAE  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
PROMPT = (
    "The Eiffel Tower is in Paris, the Colosseum is in Rome, and Big Ben is in London. When Mary and John went"
    " to the store, John gave a drink to"
)
D_TRANSCODER, PER_TOKEN, READ, WRITE = 2048, 16, "hook_resid_mid", "hook_mlp_out"


def random_transcoders(model, tokens) -> list[SAE]:
    """Random ReLU transcoders, each encoder bias set so that about PER_TOKEN features fire per position."""
    generator = torch.Generator().manual_seed(0)
    d = model.cfg.d_model
    _, cache = model.run_with_cache(tokens[None], names_filter=lambda name: name.endswith(READ))
    transcoders = []
    for layer in range(model.cfg.n_layers):
        tc = SAE(d, D_TRANSCODER, f"blocks.{layer}.{READ}", hook_name_out=f"blocks.{layer}.{WRITE}")
        with torch.no_grad():
            tc.W_enc.copy_(torch.randn(d, D_TRANSCODER, generator=generator) / d**0.5)
            tc.W_dec.copy_(torch.randn(D_TRANSCODER, d, generator=generator) / D_TRANSCODER**0.5)
            pre = cache[f"blocks.{layer}.{READ}"][0, 1:] @ tc.W_enc
            tc.b_enc.copy_(-torch.quantile(pre.flatten(), 1 - PER_TOKEN / D_TRANSCODER))
        transcoders.append(tc)
    return transcoders


def circuit_tracer_model(transcoders: list[SAE]):
    from circuit_tracer.replacement_model.replacement_model_transformerlens import TransformerLensReplacementModel
    from circuit_tracer.transcoder import SingleLayerTranscoder, TranscoderSet

    theirs = {}
    for layer, tc in enumerate(transcoders):
        their = SingleLayerTranscoder(tc.d_in, tc.d_sae, torch.nn.functional.relu, layer, dtype=torch.float32)
        with torch.no_grad():
            their.W_enc.copy_(tc.W_enc.T)
            their.W_dec.copy_(tc.W_dec)
            their.b_enc.copy_(tc.b_enc)
            their.b_dec.copy_(tc.b_dec)
        theirs[layer] = their
    return TransformerLensReplacementModel.from_pretrained_and_transcoders(
        "smollm2-135m", TranscoderSet(theirs, READ, WRITE, scan="random")
    )


class PeakRSS:
    """The largest resident set while the block runs, less the resident set at its start (bytes)."""

    def __enter__(self):
        self.page = os.sysconf("SC_PAGE_SIZE")
        self.start = self.peak = self.rss()
        self.running = True
        self.thread = threading.Thread(target=self.sample, daemon=True)
        self.thread.start()
        return self

    def rss(self) -> int:
        with open("/proc/self/statm") as statm:
            return int(statm.read().split()[1]) * self.page

    def sample(self) -> None:
        while self.running:
            self.peak = max(self.peak, self.rss())
            time.sleep(0.005)

    def __exit__(self, *exc) -> None:
        self.running = False
        self.thread.join()
        self.peak = max(self.peak, self.rss())
        self.grew = self.peak - self.start


def spread(seconds: list[float]) -> dict:
    return {"median": statistics.median(seconds), "min": min(seconds), "max": max(seconds), "runs": seconds}


def setup():
    model = hooked.HookedTransformer.from_pretrained("smollm2-135m")
    tokens = model.to_tokens(PROMPT)[0, :32]
    return model, tokens, random_transcoders(model, tokens)


def run_hooked(model, tokens, transcoders, args):
    return hooked.attribution_graph(
        model, tokens, transcoders, max_feature_nodes=args.max_feature_nodes, batch_size=args.batch_size
    )


def run_circuit_tracer(replacement, tokens, args):
    from circuit_tracer import attribute

    return attribute(tokens, replacement, max_feature_nodes=args.max_feature_nodes, batch_size=args.batch_size)


def memory(side: str, args) -> None:
    """One side in this (fresh) process: print its peak memory growth as JSON."""
    model, tokens, transcoders = setup()
    if side == "hooked":
        with PeakRSS() as peak:
            run_hooked(model, tokens, transcoders, args)
    else:
        replacement = circuit_tracer_model(transcoders)
        del model
        with PeakRSS() as peak:
            run_circuit_tracer(replacement, tokens, args)
    print(json.dumps({"side": side, "peak_growth_bytes": peak.grew}))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--max-feature-nodes", type=int, default=1024)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--memory", choices=["hooked", "circuit-tracer"], help=argparse.SUPPRESS)
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "attribution_graph.json")
    args = parser.parse_args()
    torch.set_grad_enabled(True)
    if args.memory:
        return memory(args.memory, args)

    model, tokens, transcoders = setup()
    sides = {"hooked": lambda: run_hooked(model, tokens, transcoders, args)}
    if HAVE_CIRCUIT_TRACER:
        replacement = circuit_tracer_model(transcoders)
        sides["circuit-tracer"] = lambda: run_circuit_tracer(replacement, tokens, args)
    times: dict[str, list[float]] = {side: [] for side in sides}
    graphs = {}
    for _ in range(args.repeats):
        for side, fn in sides.items():
            start = time.perf_counter()
            graphs[side] = fn()
            times[side].append(time.perf_counter() - start)
    result: dict = {
        "model": "SmolLM2-135M-Instruct (embedded GGUF, float32)",
        "prompt_tokens": int(tokens.numel()),
        "max_feature_nodes": args.max_feature_nodes,
        "batch_size": args.batch_size,
        "active_features": int(graphs["hooked"].features.shape[0]) if args.max_feature_nodes is None else None,
        "completeness_error": graphs["hooked"].completeness_error(),
        "torch_threads": torch.get_num_threads(),
        "time_s": {side: spread(t) for side, t in times.items()},
    }
    if HAVE_CIRCUIT_TRACER:
        ours, theirs = graphs["hooked"], graphs["circuit-tracer"]
        their_features = theirs.active_features[theirs.selected_features]
        same = torch.equal(ours.features, their_features.cpu())
        result["same_feature_nodes"] = same
        if same:
            result["max_edge_difference"] = float((ours.adjacency - theirs.adjacency_matrix).abs().max())
        result["time_ratio_hooked_over_circuit_tracer"] = (
            result["time_s"]["hooked"]["median"] / result["time_s"]["circuit-tracer"]["median"]
        )
    peaks = {}
    for side in sides:
        done = subprocess.run(
            [sys.executable, __file__, "--memory", side, "--max-feature-nodes", str(args.max_feature_nodes),
             "--batch-size", str(args.batch_size)],
            capture_output=True, text=True, check=True,
        )  # fmt: skip
        peaks[side] = json.loads(done.stdout.strip().splitlines()[-1])["peak_growth_bytes"]
    result["peak_memory_growth_mib"] = {side: peak / 2**20 for side, peak in peaks.items()}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
