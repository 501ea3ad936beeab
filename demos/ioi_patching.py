"""Activation patching on indirect object identification (IOI): where does the model decide " John"?

Clean prompt: "After John and Mary went to the store, Mary gave a bottle of milk to" (answer " John").
Corrupted prompt: the same with the second name swapped to " John" (answer " Mary"). Both tokenize to
the same length and differ at one position. We run the corrupted prompt, paste in one activation from
the clean run, and measure how much of the clean behaviour comes back:

    recovered = (patched logit diff - corrupted logit diff) / (clean logit diff - corrupted logit diff)

with logit diff = logit(" John") - logit(" Mary") at the last position: 1 means the patched piece alone
restores the clean answer, 0 means it carries nothing (Meng et al. 2022; Wang et al. 2022, the IOI paper).
First the residual stream, layer by layer and position by position, then each attention head's output.

The patching itself is `hooked.analysis.patching` (TransformerLens's helpers: `get_act_patch_resid_pre`,
`get_act_patch_attn_head_out_all_pos`), plus one row for the residual after the last block. It runs
several patches per forward pass, each starting at the patched layer; one patch per pass
(`patches_per_forward=1`) gives results in which the invariants hold exactly: the clean final residual
at the last position recovers 1.0, and at layer 0 the one differing position recovers 1.0, every other 0.0.

    python demos/ioi_patching.py [--model smollm2-135m] [--out-dir ioi_patching]
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Callable
from pathlib import Path

import torch
from torch import Tensor

from hooked import ActivationCache, HookedTransformer, patching
from hooked.viz import attention_html, plot_layer_head_grid, plot_layer_pos_grid

CLEAN = "After John and Mary went to the store, Mary gave a bottle of milk to"
CORRUPTED = "After John and Mary went to the store, John gave a bottle of milk to"
ANSWER, WRONG = " John", " Mary"


def prompt_tokens(model: HookedTransformer, clean: str, corrupted: str) -> tuple[Tensor, Tensor]:
    """Both prompts as [1, pos] tokens; they must have the same length to patch position by position."""
    clean_tokens, corrupted_tokens = model.to_tokens(clean), model.to_tokens(corrupted)
    if clean_tokens.shape != corrupted_tokens.shape:
        raise ValueError(
            f"The clean and corrupted prompts tokenize to {clean_tokens.shape[1]} and {corrupted_tokens.shape[1]} "
            "tokens; patching by position needs the same length (swap names that are one token each)."
        )
    return clean_tokens, corrupted_tokens


def logit_diff(logits: Tensor, answer: int, wrong: int) -> Tensor:
    """logit(answer) - logit(wrong) at the last position, one value per batch row."""
    return logits[:, -1, answer] - logits[:, -1, wrong]


def recovery_metric(clean_diff: float, corrupted_diff: float, answer: int, wrong: int) -> Callable[[Tensor], Tensor]:
    """Logits -> fraction of the clean-vs-corrupted logit difference that a patch restores (a 0-d tensor,
    differentiable, averaged over the batch rows)."""
    if clean_diff == corrupted_diff:
        raise ValueError("The clean and corrupted prompts give the same logit difference: nothing to recover.")

    def recovered(logits: Tensor) -> Tensor:
        return (logit_diff(logits, answer, wrong).mean() - corrupted_diff) / (clean_diff - corrupted_diff)

    return recovered


def patch_residual(
    model: HookedTransformer,
    corrupted_tokens: Tensor,
    clean_cache: ActivationCache,
    metric: Callable[[Tensor], Tensor],
    patches_per_forward: int | None = None,
) -> Tensor:
    """[n_layers + 1, pos]: the metric after patching the clean residual stream at one layer and position.

    Rows 0 .. n_layers - 1 patch the input of each block (`patching.get_act_patch_resid_pre`); the
    last row patches the final residual, the output of the last block (`hook_resid_post`).
    """
    args = (model, corrupted_tokens, clean_cache, metric)
    blocks = patching.get_act_patch_resid_pre(*args, patches_per_forward=patches_per_forward)
    last, n_pos = model.cfg.n_layers - 1, corrupted_tokens.shape[1]
    final = patching.generic_activation_patch(
        *args,
        patching.layer_pos_patch_setter,
        "resid_post",
        index_df=[[last, pos] for pos in range(n_pos)],
        patches_per_forward=patches_per_forward,
    )
    return torch.cat([blocks, final[None]]).cpu()


def patch_head_outputs(
    model: HookedTransformer,
    corrupted_tokens: Tensor,
    clean_cache: ActivationCache,
    metric: Callable[[Tensor], Tensor],
    patches_per_forward: int | None = None,
) -> Tensor:
    """[n_layers, n_heads]: the metric after patching one head's clean output (its `hook_z`, all positions)."""
    return patching.get_act_patch_attn_head_out_all_pos(
        model, corrupted_tokens, clean_cache, metric, patches_per_forward=patches_per_forward
    ).cpu()


@torch.no_grad()
def prepare(model: HookedTransformer, clean: str, corrupted: str, answer: str, wrong: str) -> dict:
    """Tokens, cached runs (residuals and head outputs), logit differences and the recovery metric."""
    clean_tokens, corrupted_tokens = prompt_tokens(model, clean, corrupted)
    answer_id, wrong_id = model.to_single_token(answer), model.to_single_token(wrong)
    names = lambda name: "hook_resid" in name or name.endswith("hook_z")  # noqa: E731
    clean_logits, clean_cache = model.run_with_cache(clean_tokens, names_filter=names)
    corrupted_logits, corrupted_cache = model.run_with_cache(corrupted_tokens, names_filter=names)
    clean_diff = logit_diff(clean_logits, answer_id, wrong_id).item()
    corrupted_diff = logit_diff(corrupted_logits, answer_id, wrong_id).item()
    return {
        "clean_tokens": clean_tokens,
        "corrupted_tokens": corrupted_tokens,
        "str_tokens": model.to_str_tokens(clean_tokens),
        "differing_positions": (clean_tokens[0] != corrupted_tokens[0]).nonzero().flatten().tolist(),
        "answer_ids": (answer_id, wrong_id),
        "clean_cache": clean_cache,
        "corrupted_cache": corrupted_cache,
        "clean_logit_diff": clean_diff,
        "corrupted_logit_diff": corrupted_diff,
        "metric": recovery_metric(clean_diff, corrupted_diff, answer_id, wrong_id),
    }


@torch.no_grad()
def run_patching(
    model: HookedTransformer,
    clean: str,
    corrupted: str,
    answer: str,
    wrong: str,
    patches_per_forward: int | None = None,
) -> dict:
    """Everything the demo computes, for any model whose tokenizer has the prompts and answers.

    `patches_per_forward=1` runs each patch alone; the default batches patches, which changes the
    results by float rounding only."""
    setup = prepare(model, clean, corrupted, answer, wrong)
    args = model, setup["corrupted_tokens"], setup["clean_cache"], setup["metric"], patches_per_forward
    keys = ("str_tokens", "differing_positions", "clean_logit_diff", "corrupted_logit_diff")
    return {
        **{key: setup[key] for key in keys},
        "resid": patch_residual(*args),
        "heads": patch_head_outputs(*args),
    }


def top_heads(scores: Tensor, k: int) -> list[tuple[int, int]]:
    flat = scores.flatten().topk(k).indices
    return [(int(i) // scores.shape[1], int(i) % scores.shape[1]) for i in flat]


@torch.no_grad()
def main(model_name: str = "smollm2-135m", out_dir: Path = Path("ioi_patching")) -> dict:
    start = time.perf_counter()
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    model = HookedTransformer.from_pretrained(model_name)
    result = run_patching(model, CLEAN, CORRUPTED, ANSWER, WRONG)
    tokens, resid, heads = result["str_tokens"], result["resid"], result["heads"]
    n_layers = model.cfg.n_layers
    print(f"Clean:     {CLEAN!r}\nCorrupted: {CORRUPTED!r} (differ at positions {result['differing_positions']})")
    print(
        f"logit({ANSWER!r}) - logit({WRONG!r}): clean {result['clean_logit_diff']:+.2f}, "
        f"corrupted {result['corrupted_logit_diff']:+.2f}"
    )

    s2 = result["differing_positions"][0]
    last = len(tokens) - 1
    crossover = next((layer for layer in range(n_layers + 1) if resid[layer, last] > resid[layer, s2]), None)
    print("\nResidual stream patching (fraction of the logit difference recovered):")
    for layer in range(0, n_layers + 1, 3):
        print(
            f"  layer {layer:>2}: at {tokens[s2]!r} {resid[layer, s2]:+.2f}"
            f"   at the final {tokens[last]!r} {resid[layer, last]:+.2f}"
        )
    print(f"The information moves from {tokens[s2]!r} (position {s2}) to the final position at layer {crossover}.")

    best = top_heads(heads, 5)
    print("\nHeads whose clean output recovers the most:")
    for layer, head in best:
        print(f"  L{layer}H{head}  {heads[layer, head].item():+.3f}")

    labels = [f"{layer}" for layer in range(n_layers)] + ["final"]
    resid_png = out_dir / "resid_patching.png"
    plot_layer_pos_grid(
        resid,
        tokens,
        resid_png,
        layer_labels=labels,
        title="IOI: residual stream patching (fraction of logit difference recovered)",
        colorbar_label="recovered",
    )
    heads_png = out_dir / "head_patching.png"
    plot_layer_head_grid(
        heads,
        heads_png,
        title="IOI: patching each head's output (all positions)",
        colorbar_label="recovered",
    )
    clean_tokens = model.to_tokens(CLEAN)
    _, cache = model.run_with_cache(clean_tokens, names_filter=lambda name: name.endswith("hook_pattern"))
    pattern = torch.stack([cache["pattern", layer][0, head] for layer, head in best])
    html_path = out_dir / "top_heads_attention.html"
    attention_html(
        tokens,
        pattern,
        html_path,
        head_names=[f"L{layer}H{head}" for layer, head in best],
        title="IOI: attention of the heads that matter most (clean prompt)",
    )
    print(f"\nWrote {resid_png}, {heads_png}, {html_path} ({time.perf_counter() - start:.1f} s in all)")
    return {
        **result,
        "crossover_layer": crossover,
        "top_heads": best,
        "best_head_recovery": heads[best[0]].item(),
        "files": [resid_png, heads_png, html_path],
    }


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="smollm2-135m", help="a short name, checkpoint folder, or .gguf file")
    parser.add_argument("--out-dir", type=Path, default=Path("ioi_patching"))
    args = parser.parse_args()
    main(args.model, args.out_dir)
