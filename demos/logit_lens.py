"""The logit lens: what would the model predict if it stopped after each layer?

Each residual stream, from the embeddings ("0_pre") to the final one, is read with the model's own
final norm and unembedding (nostalgebraist 2020). `cache.logit_lens()` does this, normalizing every
layer's residual by its own statistics (its rows are `cache.accumulated_resid()`'s streams). For
"The Eiffel Tower is in the city of" we follow " Paris" at the last position: its rank and
probability at each layer, and the layer from which it is the top prediction to the end.

    python demos/logit_lens.py [--model smollm2-135m] [--out-dir logit_lens] [--prompt ...] [--target " Paris"]
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import torch
from torch import Tensor

from hooked import HookedTransformer
from hooked.viz import plot_logit_lens_table

PROMPT = "The Eiffel Tower is in the city of"
TARGET = " Paris"


@torch.no_grad()
def lens_probs(model: HookedTransformer, prompt: str | Tensor) -> tuple[Tensor, list[str], list[str]]:
    """Probabilities [streams, pos, d_vocab] read from each residual stream, the stream labels, the tokens."""
    tokens = model.to_tokens(prompt) if isinstance(prompt, str) else prompt
    _, cache = model.run_with_cache(tokens)
    logits, labels = cache.logit_lens(return_labels=True)  # [streams, batch, pos, d_vocab]
    return logits[:, 0].float().softmax(-1), labels, model.to_str_tokens(tokens)


def top_predictions(model: HookedTransformer, probs: Tensor) -> tuple[Tensor, list[list[str]]]:
    """The top probability [streams, pos] and its token string, for every stream and position."""
    top = probs.max(-1)
    strings = model.to_str_tokens(top.indices.flatten())
    n_pos = probs.shape[1]
    return top.values, [strings[i : i + n_pos] for i in range(0, len(strings), n_pos)]


def target_trace(probs: Tensor, target: int, pos: int = -1) -> tuple[Tensor, Tensor]:
    """The target's probability and rank (0 = top) in each stream, at one position."""
    at_pos = probs[:, pos]
    return at_pos[:, target], (at_pos > at_pos[:, target : target + 1]).sum(-1)


def emergence(ranks: Tensor) -> int | None:
    """The first stream from which the target stays the top prediction to the end (None if it never is)."""
    is_top = (ranks == 0).tolist()
    if not is_top[-1]:
        return None
    first = len(is_top) - 1
    while first > 0 and is_top[first - 1]:
        first -= 1
    return first


@torch.no_grad()
def main(
    model_name: str = "smollm2-135m", out_dir: Path = Path("logit_lens"), prompt: str = PROMPT, target: str = TARGET
) -> dict:
    start = time.perf_counter()
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    model = HookedTransformer.from_pretrained(model_name)

    probs, labels, tokens = lens_probs(model, prompt)
    top_probs, top_tokens = top_predictions(model, probs)
    target_id = model.to_single_token(target)
    target_probs, ranks = target_trace(probs, target_id)
    first = emergence(ranks)
    print(f"Prompt {prompt!r}: top prediction at the last position after each layer")
    for stream, label in enumerate(labels):
        print(
            f"  {label:>10}  {top_tokens[stream][-1]!r:<12} {top_probs[stream, -1].item():6.1%}"
            f"   {target!r}: rank {ranks[stream].item():>5}, p {target_probs[stream].item():6.1%}"
        )
    top10 = emergence(torch.where(ranks < 10, 0, ranks))
    print("(stream 'L_pre' is the residual entering block L, that is after L blocks)")
    if first is None:
        print(f"{target!r} is not the final prediction.")
    else:
        print(
            f"{target!r} enters the top 10 at {labels[top10]!r} and becomes the top prediction at "
            f"{labels[first]!r}, staying there to the end."
        )

    png = out_dir / "logit_lens.png"
    plot_logit_lens_table(
        top_probs,
        top_tokens,
        png,
        tokens=tokens,
        layer_labels=labels,
        title=f"Logit lens on {prompt!r}: top token read from each residual stream",
    )
    print(f"Wrote {png} ({time.perf_counter() - start:.1f} s in all)")
    return {
        "labels": labels,
        "top_tokens": top_tokens,
        "top_probs": top_probs,
        "target_probs": target_probs,
        "target_ranks": ranks,
        "emergence_stream": first,
        "emergence_label": None if first is None else labels[first],
        "top10_stream": top10,
        "files": [png],
    }


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="smollm2-135m", help="a short name, checkpoint folder, or .gguf file")
    parser.add_argument("--out-dir", type=Path, default=Path("logit_lens"))
    parser.add_argument("--prompt", default=PROMPT)
    parser.add_argument("--target", default=TARGET, help="a single token to follow, with its leading space")
    args = parser.parse_args()
    main(args.model, args.out_dir, args.prompt, args.target)
