"""`extract`: stream a corpus through the model and write the activations of some hook points to shards.

One forward pass per batch serves every requested hook point, and it stops after the last block any of
them needs (`stop_at_layer`). Under torch.distributed each rank takes every world_size-th batch (batch b
goes to rank b % world_size) and writes its own shards; rank 0 writes `manifest.json` when all are done.
Every rank reads the whole corpus (tokenizing is cheap next to the forward pass), so that batch numbers,
context numbers and the corpus hash are the same on every rank.
"""

from __future__ import annotations

import hashlib
import json
import platform
import re
from importlib import metadata
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
import torch.distributed as dist
from torch import Tensor
from tqdm import tqdm

from hooked.extract.corpus import Batch, batches, token_bytes
from hooked.extract.shards import Cursor, ShardWriter, check_plan, write_atomically
from hooked.names import Slice, position_axis
from hooked.tokenization import bos_token_id

if TYPE_CHECKING:
    from hooked.model import HookedTransformer

FORMAT = "hooked-activations/1"
DTYPES = {"float16": torch.float16, "bfloat16": torch.bfloat16, "float32": torch.float32}
EMBEDDING_HOOKS = ("hook_tokens", "hook_embed", "hook_pos_embed", "embed.")  # computed before block 0


def extract(
    model: HookedTransformer,
    corpus: Any,
    hooks: str | list[str],
    out: str | Path,
    *,
    context: int | None = None,
    batch_size: int = 8,
    dtype: str | torch.dtype = "float32",
    tokens_per_shard: int = 65536,
    pos_slice: Any = None,
    exclude_bos: bool = True,
    prepend_bos: bool | None = None,
    max_contexts: int | None = None,
    column: str = "text",
    model_name: str | None = None,
    progress: bool = True,
) -> dict:
    """Write the activations of `hooks` on `corpus` to `out` as safetensors shards; return the manifest.

    `corpus`: a text file (one document per line), a list of strings, a `datasets` dataset or iterable of
    dicts (its `column`), a token tensor [n, pos], or an iterable of token batches (tensors, or dicts with
    "tokens" and optionally "attention_mask"). Texts are packed into rows of `context` tokens (default
    1024, or the model's n_ctx if shorter) as `utils.tokenize_and_concatenate` packs them: with
    `prepend_bos` (default: the model's `default_prepend_bos`) each row is BOS and `context - 1` tokens of
    the stream. Token rows are used as given, in batches of `batch_size` rows; `context`, if given, is
    checked against their width.

    Stored per row: the positions `pos_slice` selects (None: all; an int, a (start, stop[, step]) tuple, a
    slice or a list of positions), less padding (mask 0) and, with `exclude_bos`, the row's first real
    token when it is the BOS id. Stored as `dtype` ("float16", "bfloat16", "float32"); integer hooks
    (`hook_tokens`) keep their dtype. `max_contexts` stops after that many rows of the corpus.

    An interrupted run, started again with the same arguments, resumes where it stopped, and its shards
    are the bytes an uninterrupted run writes. A finished run (manifest present) with the same settings
    returns its manifest; with other settings it is refused.
    """
    names = [hooks] if isinstance(hooks, str) else list(hooks)
    if not names:
        raise ValueError("hooks is empty: name at least one hook point, e.g. 'blocks.0.hook_resid_post'.")
    _check_hooks(model, names)
    storage = _storage_dtype(dtype)
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    rank, world = _rank_and_world()
    prepend_bos = model.default_prepend_bos if prepend_bos is None else prepend_bos
    plan = {
        "format": FORMAT,
        "model": model_name or model.cfg.model_name,
        "n_layers": model.cfg.n_layers,
        "d_model": model.cfg.d_model,
        "hooks": names,
        "context": context,
        "batch_size": batch_size,
        "prepend_bos": prepend_bos,
        "exclude_bos": exclude_bos,
        "pos_slice": _pos_spec(pos_slice),
        "dtype": str(storage).removeprefix("torch."),
        "tokens_per_shard": tokens_per_shard,
        "world_size": world,
        "max_contexts": max_contexts,
    }
    manifest_path = out / "manifest.json"
    if manifest_path.exists():
        manifest = json.loads(manifest_path.read_text())
        check_plan({key: manifest.get(key) for key in plan}, plan, manifest_path)
        return manifest

    stop = stop_layer(names)
    writer = ShardWriter(out, rank, plan, tokens_per_shard)
    tokenizer = model.tokenizer
    bos = bos_token_id(tokenizer) if exclude_bos and tokenizer is not None else None
    corpus_hash, n_contexts, width = hashlib.sha256(), 0, None
    bar = tqdm(desc=f"extract rank {rank}/{world}", unit="tok", unit_scale=True, disable=not progress or rank != 0)
    with torch.inference_mode():
        text_context = min(1024, model.cfg.n_ctx)
        for batch in batches(corpus, tokenizer, context, batch_size, prepend_bos, column, max_contexts, text_context):
            corpus_hash.update(token_bytes(batch.tokens))
            n_contexts += len(batch.tokens)
            width = batch.tokens.shape[1]
            if batch.index % world != rank or (writer.cursor is not None and batch.index < writer.cursor.batch):
                continue
            digest = corpus_hash.copy().hexdigest()  # of every row up to this batch's: a resume checks it
            first = _resume_point(writer.cursor, batch.index, digest)
            tensors = _activations(model, names, stop, batch, bos, pos_slice, storage)
            if first:
                tensors = {name: tensor[first:] for name, tensor in tensors.items()}
            writer.add(batch.index, digest, tensors, first)
            bar.update(batch.tokens.numel())
    bar.close()
    writer.close()
    if n_contexts == 0:
        raise ValueError(
            f"The corpus gave no full row of {context or text_context} tokens: lower context, or give more text."
        )
    shards, shapes = _gather(writer.shards, writer.hook_shapes, world)
    n_tokens = sum(shard["tokens"] for shard in shards)
    manifest = {
        **plan,
        "hook_shapes": {name: _stacked(shapes.get(name), n_tokens) for name in names},
        "n_tokens": n_tokens,
        "n_contexts": n_contexts,
        "context_width": width,
        "bos_token_id": None if tokenizer is None else bos_token_id(tokenizer),
        "stop_at_layer": stop,
        "tokens_sha256": corpus_hash.hexdigest(),
        "tokens_hash_of": "every row of the corpus in order, as little-endian int32 [n_contexts, context_width]",
        "shards": shards,
        "layout": "each shard: one tensor per hook [tokens, ...]; token_ids, context (row), position (in the row)",
        "versions": _versions(),
    }
    if rank == 0:
        text = json.dumps(manifest, indent=2)
        write_atomically(manifest_path, lambda temporary: temporary.write_text(text))
    if world > 1:
        dist.barrier()  # no rank returns (and maybe exits) before the manifest is there
    return manifest


def stop_layer(names: list[str]) -> int | None:
    """The `stop_at_layer` that computes every hook point in `names`: one past the last block any of them
    is in, 0 when all are in the embedding, None (the whole model) for the final norm and unembedding."""
    stops = []
    for name in names:
        block = re.match(r"blocks\.(\d+)\.", name)
        if block is not None:
            stops.append(int(block.group(1)) + 1)
        elif name.startswith(EMBEDDING_HOOKS):
            stops.append(0)
        else:
            return None
    return max(stops)


def _activations(model, names, stop, batch: Batch, bos, pos_slice, storage) -> dict[str, Tensor]:
    """The kept tokens' activations of one batch [tokens, ...], with their token ids, rows and positions."""
    captured: dict[str, Tensor] = {}

    def grab(activation: Tensor, hook) -> None:
        captured[hook.name] = activation

    grab.read_only = True  # an observer: components need not copy anything for it
    tokens, mask = batch.tokens.to(model.device), batch.mask.to(model.device)
    with model.hooks([(name, grab) for name in names]):
        model(tokens, attention_mask=mask, stop_at_layer=stop, return_type=None)
    keep = _kept_positions(tokens, mask, bos, pos_slice)
    result = {}
    for name in names:
        activation = captured[name]
        activation = activation.movedim(position_axis(name, activation) % activation.ndim, 1)[keep]
        result[name] = (activation.to(storage) if activation.is_floating_point() else activation).cpu()
    rows, positions = keep.nonzero(as_tuple=True)
    result["token_ids"] = tokens[keep].to(torch.int32).cpu()
    result["context"] = (rows + batch.first_row).cpu().long()
    result["position"] = positions.to(torch.int32).cpu()
    return result


def _kept_positions(tokens: Tensor, mask: Tensor, bos: int | None, pos_slice: Any) -> Tensor:
    """[batch, pos] bool: real tokens at the positions `pos_slice` selects, less a leading BOS."""
    keep = mask.bool()
    if pos_slice is not None:
        selected = torch.zeros(tokens.shape[1], dtype=torch.bool, device=tokens.device)
        selected[Slice(pos_slice).indices(tokens.shape[1]).to(tokens.device)] = True
        keep = keep & selected
    if bos is not None:
        first = mask.argmax(dim=1)  # each row's first real token
        rows = torch.arange(len(tokens), device=tokens.device)
        keep[rows, first] &= tokens[rows, first] != bos
    return keep


def _stacked(shape: dict | None, n_tokens: int) -> dict:
    """A hook's shape and dtype over all shards (none known when no token was kept)."""
    if shape is None:
        return {"shape": None, "dtype": None}
    return {"shape": [n_tokens, *shape["shape"]], "dtype": shape["dtype"]}


def _resume_point(cursor: Cursor | None, batch: int, digest: str) -> int:
    """How many of batch `batch`'s tokens an earlier run already wrote (nonzero only for the cursor's batch,
    where the hash of the corpus so far must be the one that run saw)."""
    if cursor is None or batch != cursor.batch:
        return 0
    if digest != cursor.digest:
        raise ValueError(
            f"The corpus up to batch {batch} differs from the one the interrupted run read: the corpus "
            "changed. Resume with the same corpus, or extract into a new folder."
        )
    return cursor.taken


def _check_hooks(model, names: list[str]) -> None:
    model._check_names(names)
    for name in names:
        if not getattr(model.hook_dict[name], "batch_axis", True):
            raise ValueError(
                f"{name!r} has no [batch, pos] axes (a mixture-of-experts expert sees only its routed tokens), "
                "so its activations cannot be stored per token; extract the MLP's input or output instead."
            )


def _storage_dtype(dtype: str | torch.dtype) -> torch.dtype:
    name = str(dtype).removeprefix("torch.")
    if name not in DTYPES:
        raise ValueError(f"dtype must be one of {', '.join(DTYPES)}, got {dtype!r}.")
    return DTYPES[name]


def _pos_spec(pos_slice: Any) -> Any:
    """`pos_slice` as JSON (for the plan and manifest): None, an int, [start, stop, step], or {"indices"}."""
    if pos_slice is None or isinstance(pos_slice, int):
        return pos_slice
    if isinstance(pos_slice, tuple):
        pos_slice = slice(*pos_slice)
    if isinstance(pos_slice, slice):
        return [pos_slice.start, pos_slice.stop, pos_slice.step]
    return {"indices": [int(i) for i in pos_slice]}


def _rank_and_world() -> tuple[int, int]:
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def _gather(shards: list[dict], shapes: dict, world: int) -> tuple[list[dict], dict]:
    """Every rank's shard list (rank order) and the hook shapes, on every rank."""
    if world == 1:
        return shards, shapes
    gathered: list[Any] = [None] * world
    dist.all_gather_object(gathered, (shards, shapes))
    merged: dict = {}
    for _, rank_shapes in gathered:
        merged = {**rank_shapes, **merged}
    return [shard for rank_shards, _ in gathered for shard in rank_shards], merged


def _versions() -> dict[str, str]:
    versions = {"python": platform.python_version(), "torch": torch.__version__}
    for package in ("hooked-transformer", "transformers", "safetensors"):
        try:
            versions[package] = metadata.version(package)
        except metadata.PackageNotFoundError:
            versions[package] = "not installed"
    return versions
