"""Attribution patching: every head's patching effect from one forward and one backward pass.

Activation patching (demos/ioi_patching.py) runs the model once per patched head. Attribution
patching approximates all of them at once with a first-order Taylor expansion around the corrupted
run (Nanda 2023, "Attribution Patching: Activation Patching At Industrial Scale"; Syed et al. 2023):

    metric(patch head h) - metric(corrupted) ~= sum over positions and d_head of
        (z_clean[h] - z_corrupted[h]) * d metric / d z[h]   (the gradient taken in the corrupted run)

On the IOI prompts (the metric is the fraction of the logit difference recovered, 0 on the corrupted
run) we compute both for every head, with `hooked.analysis.attribution.attribute_heads` and
`hooked.analysis.patching.get_act_patch_attn_head_out_all_pos`, and report how well they agree. The gradient is
the total derivative through all later layers.

    python demos/attribution_patching.py [--model smollm2-135m] [--out-dir attribution_patching]
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import torch
from ioi_patching import ANSWER, CLEAN, CORRUPTED, WRONG, patch_head_outputs, prepare
from torch import Tensor

from hooked import HookedTransformer
from hooked.analysis.attribution import attribute_heads
from hooked.viz import plot_layer_head_grid, plot_scatter


def correlation(a: Tensor, b: Tensor) -> float:
    """Pearson correlation of two equally shaped tensors, over all their entries."""
    return torch.corrcoef(torch.stack([a.flatten().double(), b.flatten().double()]))[0, 1].item()


def compare(model: HookedTransformer, clean: str, corrupted: str, answer: str, wrong: str) -> dict:
    """Activation and attribution patching of every head on one clean/corrupted pair, and their agreement."""
    setup = prepare(model, clean, corrupted, answer, wrong)
    start = time.perf_counter()
    attribution = attribute_heads(model, setup["clean_tokens"], setup["corrupted_tokens"], setup["metric"]).cpu()
    attribution_s = time.perf_counter() - start
    with torch.no_grad():
        activation = patch_head_outputs(model, setup["corrupted_tokens"], setup["clean_cache"], setup["metric"])
    activation_s = time.perf_counter() - start - attribution_s
    return {
        **{key: setup[key] for key in ("str_tokens", "clean_logit_diff", "corrupted_logit_diff")},
        "activation": activation,
        "attribution": attribution,
        "correlation": correlation(activation, attribution),
        "seconds": {"attribution": attribution_s, "activation": activation_s},
    }


@torch.no_grad()
def main(model_name: str = "smollm2-135m", out_dir: Path = Path("attribution_patching")) -> dict:
    start = time.perf_counter()
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    model = HookedTransformer.from_pretrained(model_name)

    result = compare(model, CLEAN, CORRUPTED, ANSWER, WRONG)
    activation, attribution = result["activation"], result["attribution"]
    n_heads = model.cfg.n_heads
    print(
        f"IOI heads, fraction of the logit difference recovered by patching each head's clean output "
        f"(clean {result['clean_logit_diff']:+.2f}, corrupted {result['corrupted_logit_diff']:+.2f}):"
    )
    seconds = result["seconds"]
    print(
        f"  activation patching: {activation.numel()} patched runs, {seconds['activation']:.1f} s;"
        f" attribution patching: 2 forward passes + 1 backward, {seconds['attribution']:.2f} s"
    )
    order = activation.flatten().abs().argsort(descending=True)[:8]
    print("  head     activation  attribution")
    for i in order.tolist():
        layer, head = divmod(i, n_heads)
        print(f"  L{layer}H{head:<4} {activation[layer, head].item():+10.3f}  {attribution[layer, head].item():+10.3f}")
    top_k = 10
    act_top = set(activation.flatten().topk(top_k).indices.tolist())
    attr_top = set(attribution.flatten().topk(top_k).indices.tolist())
    overlap = len(act_top & attr_top)
    print(f"Correlation over all {activation.numel()} heads: {result['correlation']:.3f}")
    print(f"Top {top_k} heads by each method: {overlap} in common")

    labels = [f"L{layer}H{head}" for layer in range(model.cfg.n_layers) for head in range(n_heads)]
    scatter = out_dir / "attribution_vs_activation.png"
    plot_scatter(
        activation,
        attribution,
        scatter,
        labels=labels,
        title=f"IOI heads: attribution vs activation patching (r = {result['correlation']:.2f})",
        xlabel="activation patching (recovered)",
        ylabel="attribution patching (estimate)",
    )
    grid = out_dir / "attribution_heads.png"
    plot_layer_head_grid(attribution, grid, title="Attribution patching estimate per head")
    print(f"Wrote {scatter}, {grid} ({time.perf_counter() - start:.1f} s in all)")
    return {**result, "top_overlap": overlap, "files": [scatter, grid]}


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="smollm2-135m", help="a short name, checkpoint folder, or .gguf file")
    parser.add_argument("--out-dir", type=Path, default=Path("attribution_patching"))
    args = parser.parse_args()
    main(args.model, args.out_dir)
