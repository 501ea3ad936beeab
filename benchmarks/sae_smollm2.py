"""A small TopK SAE on SmolLM2-135M, end to end on hooked: extraction, a few hundred training steps, evaluation.

The figures the README quotes for what `hooked` adds to SAE work (the data and the evaluation; training
proper is SAELens's job, so the loop here is the minimum: Adam on the MSE of a TopK SAE, decoder rows kept
at unit norm):

1. `hooked.extract` writes `blocks.10.hook_resid_post` of a text corpus (packed 128-token contexts, BOS
   excluded) as float32 shards;
2. a `TopKSAE` (d_sae = 8 x d_model, k = 32) trains on `ActivationShards(...).batches(...)`, shuffled;
3. `evaluate_sae` on held-out contexts of the same corpus: MSE, explained variance, L0 and the share of
   the CE loss recovered (against zero-ablating the layer's output).

The corpus defaults to the text files beside the repository (../shared/seeds/*.txt, the documents our
users learned from) or, where those are absent, the repository's own Markdown; the last 8 contexts are
held out. Writes benchmarks/results/sae_smollm2.json.

    python benchmarks/sae_smollm2.py [--steps 300] [--contexts 256] [--corpus FILE ...]
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import torch

from hooked import HookedTransformer
from hooked.dictionaries import TopKSAE, evaluate_sae
from hooked.extract import ActivationShards, extract

ROOT = Path(__file__).resolve().parent.parent
LAYER, CONTEXT, HELD_OUT = 10, 128, 8
HOOK = f"blocks.{LAYER}.hook_resid_post"


def corpus_texts(files: list[Path]) -> list[str]:
    if not files:
        files = sorted((ROOT.parent / "shared" / "seeds").glob("*.txt")) or sorted(ROOT.glob("*.md"))
    return [line for path in files for line in path.read_text(errors="replace").splitlines() if line.strip()]


def packed(model, texts: list[str], n_contexts: int) -> torch.Tensor:
    """Contexts of CONTEXT tokens, each BOS and then the next CONTEXT - 1 tokens of the token stream."""
    stream = torch.cat([model.to_tokens(text, prepend_bos=False)[0] for text in texts])
    n = min(n_contexts, len(stream) // (CONTEXT - 1))
    rows = stream[: n * (CONTEXT - 1)].reshape(n, CONTEXT - 1)
    bos = torch.full((n, 1), model.tokenizer.bos_token_id)
    return torch.cat([bos, rows], dim=1)


def train(sae: TopKSAE, shards: ActivationShards, steps: int, batch: int, lr: float) -> list[float]:
    """Adam on the summed squared error per token; decoder rows renormalized after each step."""
    optimizer = torch.optim.Adam(sae.parameters(), lr=lr)
    losses: list[float] = []
    with torch.no_grad():  # b_dec starts at the data's mean, as SAELens's "mean" initialization does
        sae.b_dec.copy_(shards[torch.arange(min(len(shards), 4096))].mean(0))
    epoch = 0
    while len(losses) < steps:
        for x in shards.batches(batch, seed=epoch, drop_last=True):
            loss = (sae(x) - x).pow(2).sum(-1).mean()
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            with torch.no_grad():
                sae.W_dec /= sae.W_dec.norm(dim=-1, keepdim=True)
            losses.append(float(loss.detach()))
            if len(losses) == steps:
                break
        epoch += 1
    return losses


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=300)
    parser.add_argument("--contexts", type=int, default=256, help="contexts of 128 tokens to extract")
    parser.add_argument("--batch", type=int, default=512)
    parser.add_argument("--lr", type=float, default=4e-4)
    parser.add_argument("--corpus", type=Path, nargs="*", default=[])
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "sae_smollm2.json")
    args = parser.parse_args()
    torch.manual_seed(0)

    model = HookedTransformer.from_pretrained("smollm2-135m")
    tokens = packed(model, corpus_texts(args.corpus), args.contexts + HELD_OUT)
    train_tokens, held_out = tokens[:-HELD_OUT], tokens[-HELD_OUT:]
    with tempfile.TemporaryDirectory() as folder:
        start = time.perf_counter()
        extract(model, train_tokens, HOOK, folder, batch_size=8, progress=False)
        extract_s = time.perf_counter() - start
        shards = ActivationShards(folder)
        sae = TopKSAE(model.cfg.d_model, 8 * model.cfg.d_model, HOOK, k=32)
        start = time.perf_counter()
        losses = train(sae, shards, args.steps, args.batch, args.lr)
        train_s = time.perf_counter() - start
        n_train = len(shards)
    sae.eval()
    with torch.no_grad():
        evaluation = evaluate_sae(model, sae, held_out)
    result = {
        "model": "SmolLM2-135M-Instruct (embedded GGUF, float32)",
        "hook": HOOK,
        "sae": {"architecture": "topk", "d_in": sae.d_in, "d_sae": sae.d_sae, "k": sae.k},
        "training": {
            "tokens": n_train,
            "steps": args.steps,
            "batch": args.batch,
            "lr": args.lr,
            "first_loss": losses[0],
            "last_loss": sum(losses[-10:]) / 10,
        },
        "extract_s": extract_s,
        "train_s": train_s,
        "held_out_tokens": int(held_out.numel()),
        "evaluation": evaluation.as_dict(),
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
