"""hooked.extract in one process: shards equal `run_with_cache` of the same tokens, packing equals
`tokenize_and_concatenate`, the forward stops early, interrupted runs resume to the same bytes, the reader."""

from __future__ import annotations

import hashlib
import json
import random

import pytest
import torch
from conftest import tiny_llama, tiny_tokenizer
from safetensors.torch import load_file
from torch.utils.data import BatchSampler, DataLoader, RandomSampler

from hooked import HookedTransformer
from hooked.extract import ActivationShards, extract, stop_layer
from hooked.utils import tokenize_and_concatenate

WORDS = "the cat sat on mat . When Mary and John went to store , gave a drink ! hello world".split()
HOOKS = ["blocks.0.hook_resid_post", "blocks.1.attn.hook_pattern", "blocks.1.mlp.hook_post"]
CONTEXT, BATCH = 16, 4


def texts(n: int = 60, seed: int = 0) -> list[str]:
    rng = random.Random(seed)
    return [" ".join(rng.choice(WORDS) for _ in range(rng.randint(3, 30))) for _ in range(n)]


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    """Tiny matmuls on a loaded 2-core machine: one thread avoids OpenMP's hand-offs (30 ms per op here)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    cfg = tiny_llama(n_layers=3, d_vocab=48, n_ctx=64)
    return HookedTransformer(cfg, tokenizer=tiny_tokenizer()).eval()


def shard_bytes(folder) -> dict[str, bytes]:
    return {path.name: path.read_bytes() for path in sorted(folder.glob("shard-*.safetensors"))}


def expected_activations(model, tokens, name, keep, mask=None, cached=None):
    """run_with_cache of the hooks `cached` (default: `name`), batch by batch (the batches extraction runs),
    `name`'s activations at the kept positions, row-major. (Caching a pattern makes its layer compute the
    explicit attention, so the reference caches what the extraction did.)"""
    pieces = []
    for start in range(0, len(tokens), BATCH):
        rows = slice(start, start + BATCH)
        kwargs = {} if mask is None else {"attention_mask": mask[rows]}
        with torch.no_grad():
            _, cache = model.run_with_cache(tokens[rows], names_filter=cached or name, **kwargs)
        activation = cache[name]
        if name.endswith("hook_pattern"):
            activation = activation.transpose(1, 2)  # [batch, query_pos, n_heads, key_pos]
        pieces.append(activation[keep[rows]])
    return torch.cat(pieces)


def test_shards_equal_run_with_cache_of_the_same_tokens(model, tmp_path):
    corpus = texts()
    manifest = extract(
        model, corpus, HOOKS, tmp_path, context=CONTEXT, batch_size=BATCH, tokens_per_shard=50, prepend_bos=True
    )
    tokens = tokenize_and_concatenate(corpus, model.tokenizer, max_length=CONTEXT, add_bos_token=True)["tokens"]
    keep = torch.ones_like(tokens, dtype=torch.bool)
    keep[:, 0] = False  # every row starts with BOS, which is not stored
    for name in HOOKS:
        stored = ActivationShards(tmp_path, hook=name)[list(range(manifest["n_tokens"]))]
        assert torch.equal(stored, expected_activations(model, tokens, name, keep, cached=HOOKS)), name
    n = int(keep.sum())
    stored = {
        name: ActivationShards(tmp_path, hook=name)[list(range(n))] for name in ("token_ids", "context", "position")
    }
    rows, positions = keep.nonzero(as_tuple=True)
    assert torch.equal(stored["token_ids"].long(), tokens[:, 1:].flatten())
    assert torch.equal(stored["context"], rows) and torch.equal(stored["position"].long(), positions)
    assert manifest["n_tokens"] == n and manifest["n_contexts"] == len(tokens)
    assert manifest["stop_at_layer"] == 2
    assert manifest["hook_shapes"]["blocks.1.attn.hook_pattern"] == {"shape": [n, 4, CONTEXT], "dtype": "float32"}
    assert manifest["tokens_sha256"] == hashlib.sha256(tokens.to(torch.int32).numpy().tobytes()).hexdigest()
    assert json.loads((tmp_path / "manifest.json").read_text()) == manifest
    sizes = [shard["tokens"] for shard in manifest["shards"]]
    assert sizes == [50] * (n // 50) + ([n % 50] if n % 50 else [])
    # A reader needs no hooked code: each shard is a plain safetensors file.
    first = load_file(tmp_path / manifest["shards"][0]["file"])
    expected = expected_activations(model, tokens, HOOKS[0], keep, cached=HOOKS)[:50]
    assert torch.equal(first["blocks.0.hook_resid_post"], expected)


def test_every_corpus_form_gives_the_same_shards(model, tmp_path):
    corpus = texts()
    (tmp_path / "corpus.txt").write_text("\n\n".join(corpus) + "\n")  # one document per line, blank lines skipped
    tokens = tokenize_and_concatenate(corpus, model.tokenizer, max_length=CONTEXT, add_bos_token=False)["tokens"]
    forms = {
        "list": corpus,
        "file": tmp_path / "corpus.txt",
        "file_as_str": str(tmp_path / "corpus.txt"),
        "dicts": [{"text": text, "id": i} for i, text in enumerate(corpus)],  # a datasets dataset iterates so
        "tensor": tokens,
        "batches": [tokens[i : i + 3] for i in range(0, len(tokens), 3)],  # regrouped into batches of BATCH
        "dataloader": DataLoader(
            tokenize_and_concatenate(corpus, model.tokenizer, max_length=CONTEXT, add_bos_token=False), 5
        ),
    }
    results = {}
    for form, corpus_form in forms.items():
        out = tmp_path / form
        extract(
            model,
            corpus_form,
            HOOKS[:1],
            out,
            context=CONTEXT,
            batch_size=BATCH,
            tokens_per_shard=64,
            prepend_bos=False,
        )
        results[form] = shard_bytes(out)
    assert len(results["list"]) > 3
    for form, files in results.items():
        assert files == results["list"], form


def test_forward_stops_after_the_last_block_a_hook_needs(model, tmp_path):
    calls = []
    handles = [block.register_forward_hook(lambda *_, i=i: calls.append(i)) for i, block in enumerate(model.blocks)]
    try:
        extract(model, texts(8), ["blocks.0.hook_resid_post"], tmp_path, context=CONTEXT, batch_size=BATCH)
    finally:
        for handle in handles:
            handle.remove()
    assert calls and set(calls) == {0}
    assert stop_layer(["hook_embed"]) == 0
    assert stop_layer(["blocks.1.hook_resid_pre", "blocks.4.attn.hook_z"]) == 5
    assert stop_layer(["blocks.0.hook_resid_post", "ln_final.hook_scale"]) is None


def test_padding_pos_slice_bos_and_storage_dtype(model, tmp_path):
    rng = torch.Generator().manual_seed(1)
    tokens = torch.randint(4, 48, (10, CONTEXT), generator=rng)
    tokens[:, 0] = model.tokenizer.bos_token_id
    tokens[3, 0] = 7  # a row without BOS keeps its first token
    mask = torch.ones_like(tokens)
    mask[2, 9:] = 0  # right padding
    mask[5, 12:] = 0
    batches = [{"tokens": tokens[i : i + 4], "attention_mask": mask[i : i + 4]} for i in range(0, 10, 4)]
    name = "blocks.1.hook_resid_mid"
    manifest = extract(
        model, batches, name, tmp_path, context=CONTEXT, batch_size=BATCH, pos_slice=(0, 12), dtype="bfloat16"
    )
    keep = mask.bool()
    keep[:, 12:] = False
    keep[torch.arange(10), 0] &= tokens[:, 0] != model.tokenizer.bos_token_id
    expected = expected_activations(model, tokens, name, keep, mask).to(torch.bfloat16)
    stored = ActivationShards(tmp_path)[list(range(manifest["n_tokens"]))]
    assert stored.dtype == torch.bfloat16 and torch.equal(stored, expected)
    assert manifest["pos_slice"] == [0, 12, None] and manifest["dtype"] == "bfloat16"

    last = extract(model, tokens, name, tmp_path / "last", context=CONTEXT, pos_slice=-1, exclude_bos=False)
    assert last["n_tokens"] == 10
    assert torch.equal(ActivationShards(tmp_path / "last", hook="position")[list(range(10))], torch.full((10,), 15))


class Interrupted(Exception):
    pass


def interrupted_after(batches, n):
    """The corpus as an iterable that fails after yielding n batches: the run stops part-way."""
    for i, batch in enumerate(batches):
        if i == n:
            raise Interrupted
        yield batch


@pytest.mark.parametrize("stop_after", [1, 4, 6])
def test_an_interrupted_run_resumes_to_the_same_bytes(model, tmp_path, stop_after):
    tokens = tokenize_and_concatenate(texts(), model.tokenizer, max_length=CONTEXT)["tokens"]
    batches = [tokens[i : i + BATCH] for i in range(0, len(tokens), BATCH)]
    settings = dict(context=CONTEXT, batch_size=BATCH, tokens_per_shard=50, dtype="float16", progress=False)
    whole = extract(model, batches, HOOKS, tmp_path / "whole", **settings)
    with pytest.raises(Interrupted):
        extract(model, interrupted_after(batches, stop_after), HOOKS, tmp_path / "resumed", **settings)
    assert not (tmp_path / "resumed" / "manifest.json").exists()
    before = shard_bytes(tmp_path / "resumed")
    assert 0 < len(before) < len(shard_bytes(tmp_path / "whole"))
    (tmp_path / "resumed" / ".shard-r0000-000099.safetensors.tmp").write_bytes(b"half a shard")  # a killed write
    resumed = extract(model, batches, HOOKS, tmp_path / "resumed", **settings)
    assert shard_bytes(tmp_path / "resumed") == shard_bytes(tmp_path / "whole")
    assert not list((tmp_path / "resumed").glob(".*.tmp"))
    assert resumed == whole


def test_resume_refuses_other_settings_and_another_corpus(model, tmp_path):
    tokens = tokenize_and_concatenate(texts(), model.tokenizer, max_length=CONTEXT)["tokens"]
    corpus = [tokens[i : i + BATCH] for i in range(0, len(tokens), BATCH)]
    settings = dict(context=CONTEXT, batch_size=BATCH, tokens_per_shard=50, progress=False)
    with pytest.raises(Interrupted):
        extract(model, interrupted_after(corpus, 3), HOOKS[:1], tmp_path, **settings)
    with pytest.raises(ValueError, match="dtype='float32', but this run has dtype='bfloat16'"):
        extract(model, corpus, HOOKS[:1], tmp_path, **settings, dtype="bfloat16")
    changed = [batch.clone() for batch in corpus]
    changed[0][0, 5] = 7 if changed[0][0, 5] != 7 else 8  # one token, in a batch before the resume point
    with pytest.raises(ValueError, match="the corpus changed"):
        extract(model, changed, HOOKS[:1], tmp_path, **settings)
    manifest = extract(model, corpus, HOOKS[:1], tmp_path, **settings)
    stamps = {path: path.stat().st_mtime_ns for path in tmp_path.iterdir()}
    assert extract(model, corpus, HOOKS[:1], tmp_path, **settings) == manifest  # finished: nothing rewritten
    assert {path: path.stat().st_mtime_ns for path in tmp_path.iterdir()} == stamps
    with pytest.raises(ValueError, match="hooks="):
        extract(model, corpus, HOOKS[1:2], tmp_path, **settings)


def test_reader_shuffles_across_shards(model, tmp_path):
    manifest = extract(model, texts(), HOOKS[0], tmp_path, context=CONTEXT, batch_size=BATCH, tokens_per_shard=40)
    n = manifest["n_tokens"]
    acts, contexts, positions = (ActivationShards(tmp_path, hook=h) for h in (None, "context", "position"))
    assert len(acts) == n and len(manifest["shards"]) > 5
    in_order = acts[list(range(n))]
    all_tokens = list(range(n))
    where = {
        (int(c), int(p)): i for i, (c, p) in enumerate(zip(contexts[all_tokens], positions[all_tokens], strict=True))
    }
    order = []
    # The same seed gives the same order for every hook, so each activation can be matched to its token.
    for a, c, p in zip(*(ds.batches(64, seed=3) for ds in (acts, contexts, positions)), strict=True):
        index = torch.tensor([where[(int(x), int(y))] for x, y in zip(c, p, strict=True)])
        assert torch.equal(a, in_order[index])
        order.append(index)
    order = torch.cat(order)
    assert torch.equal(order.sort().values, torch.arange(n))  # every token exactly once
    assert not torch.equal(order, torch.arange(n))
    assert len(set((order[:64] // 40).tolist())) > 3, "a shuffled batch should draw from many shards"
    loader = DataLoader(acts, batch_size=None, sampler=BatchSampler(RandomSampler(acts), 100, drop_last=False))
    assert sum(len(batch) for batch in loader) == n
    assert torch.equal(acts[-1], in_order[-1]) and torch.equal(acts[5], in_order[5])


def test_errors_name_the_problem(model, tmp_path):
    with pytest.raises(KeyError, match="Did you mean"):
        extract(model, texts(4), "blocks.0.hook_resid_pots", tmp_path)
    with pytest.raises(FileNotFoundError, match="pass a text itself as a list"):
        extract(model, "no such file.txt", HOOKS[0], tmp_path)
    with pytest.raises(ValueError, match="dtype must be one of"):
        extract(model, texts(4), HOOKS[0], tmp_path, dtype="int8")
    with pytest.raises(ValueError, match="widths"):
        extract(model, [torch.zeros(2, 8, dtype=torch.long)], HOOKS[0], tmp_path, context=CONTEXT)
    with pytest.raises(FileNotFoundError, match="has not finished"):
        ActivationShards(tmp_path / "nothing")
