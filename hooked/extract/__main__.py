"""`python -m hooked.extract`: extract activations from the command line, alone or under torchrun.

    python -m hooked.extract --model smollm2-135m --hook blocks.10.hook_resid_post --corpus corpus.txt \
        --out acts/ --context 1024 --dtype bfloat16
    torchrun --nproc_per_node 4 -m hooked.extract ...   # each rank a disjoint quarter of the batches

Under torchrun (WORLD_SIZE > 1) the process group is set up here: NCCL on GPUs, gloo on CPUs.
"""

from __future__ import annotations

import argparse
import os
from pathlib import Path

import torch
import torch.distributed as dist

from hooked.extract.run import DTYPES, extract
from hooked.model import HookedTransformer


def parse_pos_slice(text: str | None):
    """--pos-slice's text: "1:" is slice(1, None), "-1" is -1, "0,4,7" is [0, 4, 7], "2:10:2" is slice(2, 10, 2)."""
    if text is None:
        return None
    if ":" in text:
        return slice(*(int(part) if part else None for part in text.split(":")))
    if "," in text:
        return [int(part) for part in text.split(",")]
    return int(text)


def load_corpus(args):
    """The corpus the arguments name: a text file, a .safetensors file of "tokens", or a `datasets` dataset."""
    if args.dataset is not None:
        try:
            import datasets
        except ImportError as error:
            raise SystemExit("--dataset needs the datasets package: pip install datasets") from error
        return datasets.load_dataset(args.dataset, split=args.split, streaming=True)
    if args.corpus is None:
        raise SystemExit("Name a corpus: --corpus FILE (text, one document per line, or .safetensors) or --dataset.")
    if args.corpus.suffix == ".safetensors":
        from safetensors.torch import load_file

        tokens = load_file(args.corpus)
        if "tokens" not in tokens:
            raise SystemExit(f"{args.corpus} holds {sorted(tokens)}, not a 'tokens' tensor [rows, pos].")
        return tokens["tokens"]
    return args.corpus


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m hooked.extract", description=__doc__.splitlines()[0])
    parser.add_argument("--model", required=True, help="a short name, checkpoint folder or .gguf file")
    parser.add_argument("--hook", action="append", required=True, help="a hook point name (repeat for more)")
    parser.add_argument("--corpus", type=Path, help="text file (one document per line) or .safetensors of 'tokens'")
    parser.add_argument("--dataset", help="a Hugging Face datasets name, streamed (needs `datasets`)")
    parser.add_argument("--split", default="train")
    parser.add_argument("--column", default="text")
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--context", type=int, help="tokens per packed row (default 1024, or n_ctx if shorter)")
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--dtype", choices=list(DTYPES), default="float32", help="storage dtype")
    parser.add_argument("--model-dtype", choices=list(DTYPES), default="float32")
    parser.add_argument("--tokens-per-shard", type=int, default=65536)
    parser.add_argument("--pos-slice", help='positions to keep: "1:", "-1", "0,4,7"')
    parser.add_argument("--keep-bos", action="store_true", help="also store the leading BOS token")
    parser.add_argument("--prepend-bos", action=argparse.BooleanOptionalAction, default=None)
    parser.add_argument("--max-contexts", type=int, help="stop after this many rows of the corpus")
    parser.add_argument("--device", help="default: cuda:LOCAL_RANK when there is a GPU, else cpu")
    parser.add_argument("--threads", type=int, help="torch CPU threads")
    parser.add_argument("--no-progress", action="store_true")
    args = parser.parse_args(argv)

    if args.threads:
        torch.set_num_threads(args.threads)
    local_rank = int(os.environ.get("LOCAL_RANK", 0))
    device = args.device or (f"cuda:{local_rank}" if torch.cuda.is_available() else "cpu")
    distributed = int(os.environ.get("WORLD_SIZE", 1)) > 1
    if distributed:
        if device.startswith("cuda"):
            torch.cuda.set_device(torch.device(device))
        dist.init_process_group("nccl" if device.startswith("cuda") else "gloo")
    try:
        model = HookedTransformer.from_pretrained(args.model, device=device, dtype=DTYPES[args.model_dtype]).eval()
        extract(
            model,
            load_corpus(args),
            args.hook,
            args.out,
            context=args.context,
            batch_size=args.batch_size,
            dtype=args.dtype,
            tokens_per_shard=args.tokens_per_shard,
            pos_slice=parse_pos_slice(args.pos_slice),
            exclude_bos=not args.keep_bos,
            prepend_bos=args.prepend_bos,
            max_contexts=args.max_contexts,
            column=args.column,
            model_name=args.model,
            progress=not args.no_progress,
        )
    finally:
        if distributed:
            dist.destroy_process_group()


if __name__ == "__main__":
    main()
