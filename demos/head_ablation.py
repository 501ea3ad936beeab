"""Which attention heads does the model need? Ablate each one and measure the loss on a text.

Every head in turn has its output (`hook_z`, all positions) replaced, by zeros or by its mean over the
text's positions (`hooked.analysis.ablation.zero_ablate_heads` / `mean_ablate_heads`; mean ablation removes
what the head says about each position while keeping its average contribution, so it is gentler than
zeros). The effect of a head is the rise in the mean next-token loss. Each run starts at the ablated
head's layer from the cached residual stream (`start_at_layer`), which gives the same numbers as a
full run and skips the layers before it; a head that writes nothing (zero W_O) has an effect of exactly 0.

    python demos/head_ablation.py [--model smollm2-135m] [--out-dir head_ablation] [--mode mean|zero]
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path
from typing import Literal

import torch
from torch import Tensor

from hooked import HookedTransformer, ablation
from hooked.progress import progress_bar
from hooked.viz import plot_layer_head_grid

TEXT = (
    "The cat sat on the mat and looked out of the window. Outside, the rain fell on the garden, and the "
    "birds hid under the leaves of the old oak tree. When the rain stopped, the cat went to the door and "
    "waited for someone to let it out."
)
Mode = Literal["zero", "mean"]


@torch.no_grad()
def head_ablation_effects(model: HookedTransformer, tokens: Tensor, mode: Mode = "zero") -> tuple[Tensor, float]:
    """[n_layers, n_heads] rise in mean loss when each head is ablated alone, and the clean loss."""
    if mode not in ("zero", "mean"):
        raise ValueError(f"mode must be 'zero' or 'mean', got {mode!r}.")
    names = lambda name: name.endswith("hook_resid_pre") or name.endswith("hook_z")  # noqa: E731
    _, cache = model.run_with_cache(tokens, names_filter=names)
    clean = model(tokens, return_type="loss").item()
    n_layers, n_heads = model.cfg.n_layers, model.cfg.n_heads
    effects = torch.zeros(n_layers, n_heads)
    every_head = [(layer, head) for layer in range(n_layers) for head in range(n_heads)]
    for layer, head in progress_bar(every_head, desc="Ablating heads", unit="head"):
        if mode == "zero":
            hooks = ablation.zero_ablate_heads([(layer, head)])
        else:
            hooks = ablation.mean_ablate_heads([(layer, head)], cache, over_positions=True)
        loss = model.run_with_hooks(
            cache["resid_pre", layer], start_at_layer=layer, tokens=tokens, return_type="loss", fwd_hooks=hooks
        )
        effects[layer, head] = loss.item() - clean
    return effects, clean


def top_heads(scores: Tensor, k: int) -> list[tuple[int, int]]:
    flat = scores.flatten().topk(k).indices
    return [(int(i) // scores.shape[1], int(i) % scores.shape[1]) for i in flat]


@torch.no_grad()
def main(
    model_name: str = "smollm2-135m", out_dir: Path = Path("head_ablation"), mode: Mode = "mean", text: str = TEXT
) -> dict:
    start = time.perf_counter()
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    model = HookedTransformer.from_pretrained(model_name)

    tokens = model.to_tokens(text)
    effects, clean = head_ablation_effects(model, tokens, mode)
    best = top_heads(effects, 8)
    print(f"Text of {tokens.shape[1]} tokens; mean loss {clean:.3f} nats with every head.")
    print(f"Heads whose {mode}-ablation raises the loss most:")
    for layer, head in best:
        print(f"  L{layer}H{head}  +{effects[layer, head].item():.3f}")
    share = (effects.abs() < 0.01).float().mean().item()
    print(f"{share:.0%} of the {effects.numel()} heads change the loss by less than 0.01 nats.")

    png = out_dir / "head_ablation.png"
    plot_layer_head_grid(
        effects,
        png,
        title=f"Rise in loss when each head is {mode}-ablated",
        colorbar_label="loss change (nats)",
    )
    print(f"Wrote {png} ({time.perf_counter() - start:.1f} s in all)")
    return {"effects": effects, "clean_loss": clean, "top_heads": best, "files": [png]}


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="smollm2-135m", help="a short name, checkpoint folder, or .gguf file")
    parser.add_argument("--out-dir", type=Path, default=Path("head_ablation"))
    parser.add_argument("--mode", choices=["mean", "zero"], default="mean")
    args = parser.parse_args()
    main(args.model, args.out_dir, args.mode)
