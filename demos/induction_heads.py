"""Induction heads: find them by their attention on a repeated random sequence, then ablate them.

An induction head completes patterns: at a token it has seen before, it attends to the token that
came after the earlier occurrence and copies it (Elhage et al. 2021; Olsson et al. 2022). On a random
sequence repeated twice, the first copy is unpredictable and the second is predictable only by
looking back, so

  * the induction score of a head is its mean attention, from each query in the second copy, to the
    token just after that query's earlier occurrence (1 = a perfect induction head);
  * `hooked.analysis.head_detection.detect_head` finds the previous-token heads they compose with;
  * zero-ablating the best-scoring heads (`hooked.analysis.ablation.zero_ablate_heads`) should raise the loss on
    the second copy, far more than ablating as many heads chosen at random among the rest.

    python demos/induction_heads.py [--model smollm2-135m] [--out-dir induction_heads]
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Sequence
from pathlib import Path

import torch
from torch import Tensor

from hooked import HookedTransformer, ablation
from hooked.analysis.head_detection import detect_head
from hooked.viz import attention_html, plot_layer_head_grid


def repeated_tokens(model: HookedTransformer, half: int, seed: int = 0) -> Tensor:
    """[1, 1 + 2 * half]: a BOS token, then `half` random tokens, then the same tokens again."""
    generator = torch.Generator().manual_seed(seed)
    low = min(1000, model.cfg.d_vocab // 4)  # skip the lowest ids (special and byte tokens in most vocabularies)
    random = torch.randint(low, model.cfg.d_vocab - low, (1, half), generator=generator)
    bos = model.to_tokens("", prepend_bos=True)[:, :1].cpu()
    return torch.cat([bos, random, random], dim=1).to(model.device)


def induction_scores(patterns: Tensor, half: int) -> Tensor:
    """[layers, heads] induction score from patterns [layers, heads, query, key] of a repeated sequence.

    Position 0 is BOS and the copies are 1 .. half and half + 1 .. 2 * half. The token at a query q in
    the second copy first appeared at q - half, so an induction head attends to q - half + 1.
    """
    n = patterns.shape[-1]
    if n != 2 * half + 1 or patterns.shape[-2] != n:
        raise ValueError(
            f"patterns must be [..., {2 * half + 1}, {2 * half + 1}] for half={half}, got {patterns.shape}"
        )
    queries = torch.arange(half + 1, 2 * half + 1)
    return patterns[..., queries, queries - half + 1].mean(-1)


@torch.no_grad()
def head_patterns(model: HookedTransformer, tokens: Tensor) -> Tensor:
    """[layers, heads, pos, pos] attention patterns of one sequence."""
    _, cache = model.run_with_cache(tokens, names_filter=lambda name: name.endswith("hook_pattern"))
    return torch.stack([cache["pattern", layer][0] for layer in range(model.cfg.n_layers)])


def top_heads(scores: Tensor, k: int) -> list[tuple[int, int]]:
    flat = scores.flatten().topk(k).indices
    return [(int(i) // scores.shape[1], int(i) % scores.shape[1]) for i in flat]


@torch.no_grad()
def repeated_half_loss(
    model: HookedTransformer, tokens: Tensor, half: int, heads: Sequence[tuple[int, int]] = ()
) -> float:
    """Mean loss on predicting the second copy's tokens (after its first), with `heads` zero-ablated."""
    per_token = model.run_with_hooks(
        tokens, return_type="loss", loss_per_token=True, fwd_hooks=ablation.zero_ablate_heads(heads)
    )
    # per_token[t] scores the prediction of token t + 1; tokens half + 2 .. 2 * half are predictable.
    return per_token[0, half + 1 :].mean().item()


def random_heads(scores: Tensor, k: int, exclude: list[tuple[int, int]], seed: int = 0) -> list[tuple[int, int]]:
    """k heads drawn at random (seeded) from those not in `exclude`: the control for an ablation."""
    n_layers, n_heads = scores.shape
    pool = [(layer, head) for layer in range(n_layers) for head in range(n_heads) if (layer, head) not in exclude]
    order = torch.randperm(len(pool), generator=torch.Generator().manual_seed(seed))
    return [pool[int(i)] for i in order[:k]]


@torch.no_grad()
def main(model_name: str = "smollm2-135m", out_dir: Path = Path("induction_heads"), half: int = 40, k: int = 5) -> dict:
    start = time.perf_counter()
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    model = HookedTransformer.from_pretrained(model_name)

    tokens = repeated_tokens(model, half)
    patterns = head_patterns(model, tokens)
    scores = induction_scores(patterns, half)
    best = top_heads(scores, k)
    print(f"Induction scores on {half} random tokens repeated twice (1.0 = attends to the next token's earlier copy):")
    for layer, head in best:
        print(f"  L{layer}H{head}  {scores[layer, head].item():.2f}")
    print(f"  median head: {scores.median().item():.3f}")

    # The library's detectors (TransformerLens's measures) on the same patterns: previous-token heads,
    # the circuit's first half, and a cross-check of the induction ranking.
    cache = {f"blocks.{layer}.attn.hook_pattern": patterns[layer][None] for layer in range(model.cfg.n_layers)}
    previous = detect_head(model, tokens, "previous_token_head", cache=cache, exclude_bos=True)
    previous_heads = top_heads(previous, 3)
    detected = top_heads(detect_head(model, tokens, "induction_head", cache=cache), k)
    print(
        "Previous-token heads (detect_head, 'previous_token_head'): "
        + ", ".join(f"L{layer}H{head} {previous[layer, head].item():.2f}" for layer, head in previous_heads)
    )
    print(f"detect_head's 'induction_head' measure picks {len(set(detected) & set(best))} of the same top {k}.")

    clean = repeated_half_loss(model, tokens, half)
    print(f"\nLoss on the repeated half: {clean:.3f} nats with every head")
    cumulative = []
    for n in range(1, k + 1):
        cumulative.append(repeated_half_loss(model, tokens, half, best[:n]))
        print(f"  zero-ablating the top {n} induction head{'s' if n > 1 else ' '}: {cumulative[-1]:.3f}")
    control_heads = random_heads(scores, k, best)
    control = repeated_half_loss(model, tokens, half, control_heads)
    print(f"  zero-ablating {k} random other heads ({', '.join(f'L{l}H{h}' for l, h in control_heads)}): {control:.3f}")
    first_half = model(tokens, return_type="loss", loss_per_token=True)[0, :half].mean().item()
    print(f"  (for scale: the unpredictable first copy costs {first_half:.3f})")

    png = out_dir / "induction_scores.png"
    plot_layer_head_grid(scores, png, title="Induction score per head", colorbar_label="score")
    html_path = out_dir / "induction_attention.html"
    attention_html(
        model.to_str_tokens(tokens[0]),
        torch.stack([patterns[layer, head] for layer, head in best + previous_heads]),
        html_path,
        head_names=[f"L{layer}H{head} (induction {scores[layer, head]:.2f})" for layer, head in best]
        + [f"L{layer}H{head} (previous token {previous[layer, head]:.2f})" for layer, head in previous_heads],
        title="Induction and previous-token heads on a repeated random sequence",
    )
    print(f"\nWrote {png}, {html_path} ({time.perf_counter() - start:.1f} s in all)")
    return {
        "induction_scores": scores,
        "induction_heads": best,
        "previous_token_heads": previous_heads,
        "previous_token_scores": previous,
        "detect_head_overlap": len(set(detected) & set(best)),
        "clean_loss": clean,
        "ablated_losses": cumulative,
        "ablated_loss": cumulative[-1],
        "control_loss": control,
        "first_half_loss": first_half,
        "files": [png, html_path],
    }


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="smollm2-135m", help="a short name, checkpoint folder, or .gguf file")
    parser.add_argument("--out-dir", type=Path, default=Path("induction_heads"))
    parser.add_argument("--half", type=int, default=40, help="length of the random sequence that is repeated")
    parser.add_argument("--heads", type=int, default=5, help="how many top heads to ablate")
    args = parser.parse_args()
    main(args.model, args.out_dir, args.half, args.heads)
