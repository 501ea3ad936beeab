"""A first look inside a real language model, offline, in under a minute on a laptop CPU.

Loads the embedded default model (SmolLM2-135M), caches every activation of one prompt, finds
previous-token and induction heads from their attention patterns, and shows what zero-ablating the
induction heads does to the loss on a repeated sequence. Writes a picture of one layer's patterns.

    python demos/quickstart.py [--model smollm2-135m] [--out-dir quickstart]
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import torch

from hooked import HookedTransformer

PROMPT = "The Eiffel Tower is in the city of"


def top_next_tokens(model: HookedTransformer, prompt: str, k: int = 5) -> list[tuple[str, float]]:
    logits, cache = model.run_with_cache(prompt)
    probs = logits[0, -1].softmax(-1)
    top = probs.topk(k)
    print(f"\nPrompt: {prompt!r}")
    for p, token in zip(top.values, top.indices, strict=True):
        print(f"  {model.to_single_str_token(int(token))!r:>14}  {p.item():6.1%}")
    print(f"\nCached {len(cache)} activations, for example:")
    for name in ("hook_embed", "blocks.0.attn.hook_pattern", "blocks.0.attn.hook_k", "blocks.0.mlp.hook_post"):
        print(f"  {name:<28} {tuple(cache[name].shape)}")
    return [(model.to_single_str_token(int(t)), p.item()) for p, t in zip(top.values, top.indices, strict=True)]


def repeated_tokens(model: HookedTransformer, half: int, seed: int = 0) -> torch.Tensor:
    """BOS, then `half` random tokens, then the same tokens again."""
    generator = torch.Generator().manual_seed(seed)
    random = torch.randint(1000, model.cfg.d_vocab - 1000, (1, half), generator=generator)
    bos = model.to_tokens("", prepend_bos=True)[:, :1]
    return torch.cat([bos, random, random], dim=1).to(model.device)


def head_scores(model: HookedTransformer, tokens: torch.Tensor, half: int) -> tuple[torch.Tensor, torch.Tensor]:
    """[layers, heads] mean attention to the previous token, and to the token after the earlier copy."""
    _, cache = model.run_with_cache(tokens, names_filter=lambda name: name.endswith("hook_pattern"))
    patterns = torch.stack([cache["pattern", layer][0] for layer in range(model.cfg.n_layers)])  # [L, H, q, k]
    previous = patterns.diagonal(offset=-1, dim1=-2, dim2=-1).mean(-1)
    # In the second copy (q > half) the token at q was seen at q - half; an induction head attends to the
    # token after that one. The diagonal starts at q = half - 1, so the second copy starts at its index 2.
    induction = patterns.diagonal(offset=1 - half, dim1=-2, dim2=-1)[..., 2:].mean(-1)
    return previous, induction


def top_heads(scores: torch.Tensor, k: int) -> list[tuple[int, int]]:
    flat = scores.flatten().topk(k).indices
    return [(int(i) // scores.shape[1], int(i) % scores.shape[1]) for i in flat]


def repeated_half_loss(model: HookedTransformer, tokens: torch.Tensor, half: int, fwd_hooks=()) -> float:
    per_token = model.run_with_hooks(tokens, return_type="loss", loss_per_token=True, fwd_hooks=list(fwd_hooks))
    # per_token[t] scores the prediction of token t + 1; copies' tokens from the 2nd on are predictable.
    return per_token[0, half + 1 :].mean().item()


def ablation_hooks(heads: list[tuple[int, int]]):
    def zero_heads(z, hook):
        for layer, head in heads:
            if layer == hook.layer():
                z[:, :, head] = 0.0

    return [(f"blocks.{layer}.attn.hook_z", zero_heads) for layer in sorted({layer for layer, _ in heads})]


def plot_patterns(model: HookedTransformer, tokens: torch.Tensor, layer: int, path: Path | None = None):
    """One layer's heads side by side (query position down, key position across), one shared colour scale."""
    from matplotlib.figure import Figure

    _, cache = model.run_with_cache(tokens, names_filter=f"blocks.{layer}.attn.hook_pattern")
    pattern = cache["pattern", layer][0].float().cpu().numpy()
    n_heads = pattern.shape[0]
    cols = min(n_heads, 3)
    rows = -(-n_heads // cols)
    fig = Figure(figsize=(4 * cols + 1, 4 * rows))
    axes = fig.subplots(rows, cols, squeeze=False)
    for head, ax in enumerate(axes.flat):
        if head >= n_heads:
            ax.axis("off")
            continue
        image = ax.imshow(pattern[head], cmap="Blues", vmin=0, vmax=1, interpolation="nearest")
        ax.set_title(f"L{layer}H{head}")
        ax.set_xlabel("key position")
        ax.set_ylabel("query position")
    fig.colorbar(image, ax=axes, label="attention weight", fraction=0.03)
    fig.suptitle(f"Layer {layer} attention on a repeated random sequence (query down, key across)")
    if path is not None:
        fig.savefig(path, dpi=80)
    return fig


@torch.no_grad()
def main(model_name: str = "smollm2-135m", out_dir: Path = Path("quickstart"), half: int = 40) -> dict:
    start = time.perf_counter()
    model = HookedTransformer.from_pretrained(model_name)
    cfg = model.cfg
    print(
        f"Loaded {model_name} in {time.perf_counter() - start:.1f} s: {cfg.n_layers} layers, "
        f"d_model {cfg.d_model}, {cfg.n_heads} heads ({cfg.n_key_value_heads} key/value heads)"
    )

    top = top_next_tokens(model, PROMPT)

    tokens = repeated_tokens(model, half)
    previous, induction = head_scores(model, tokens, half)
    prev_heads, induction_heads = top_heads(previous, 3), top_heads(induction, 5)
    print("\nHeads attending most to the previous token:")
    for layer, head in prev_heads:
        print(f"  L{layer}H{head}  score {previous[layer, head].item():.2f}")
    print(f"Strongest induction heads (repeated sequence of {half} random tokens):")
    for layer, head in induction_heads:
        print(f"  L{layer}H{head}  score {induction[layer, head].item():.2f}")

    clean = repeated_half_loss(model, tokens, half)
    ablated = repeated_half_loss(model, tokens, half, ablation_hooks(induction_heads))
    print(
        f"\nLoss on the repeated half: {clean:.3f} -> {ablated:.3f} with those {len(induction_heads)} heads "
        f"zero-ablated (+{ablated - clean:.3f})"
    )

    out = Path(out_dir) / "attention.png"
    out.parent.mkdir(parents=True, exist_ok=True)
    plot_patterns(model, tokens, induction_heads[0][0], out)
    print(f"Wrote {out} ({time.perf_counter() - start:.1f} s in all)")
    return {
        "top": top,
        "previous_heads": prev_heads,
        "induction_heads": induction_heads,
        "induction_scores": induction,
        "clean_loss": clean,
        "ablated_loss": ablated,
        "plot": out,
    }


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="smollm2-135m", help="a short name, checkpoint folder, or .gguf file")
    parser.add_argument("--out-dir", type=Path, default=Path("quickstart"))
    args = parser.parse_args()
    main(args.model, args.out_dir)
