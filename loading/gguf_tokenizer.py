"""A Hugging Face fast tokenizer rebuilt from a GGUF file's `tokenizer.ggml.*` metadata.

Two of llama.cpp's tokenizer models are supported:
- "gpt2": byte-level BPE with the file's merges, split first by the regex `tokenizer.ggml.pre` names;
- "llama": SentencePiece BPE. The file lists tokens but no merges, so they are derived: every way a
  token splits into two tokens is a merge, ranked by the merged token's score (Llama 2, Mistral) or, for
  Gemma, whose scores do not follow its merge order, by its position in the vocabulary; the longer left
  piece first among one token's splits. Spaces become "\u2581" (Llama also puts one before the text,
  unless `add_space_prefix` is false); unknown bytes fall back to the <0xNN> tokens. Gemma stores its runs
  of spaces as real spaces, respelled here as "\u2581"s.
These are the layouts transformers' GGUF loading builds for the same files; tests/test_gguf_reader.py
and tests/test_gemma3_gguf.py compare the two on the same texts.
"""

from __future__ import annotations

import warnings

from hooked.loading.gguf import SPECIAL_IDS, GGUFCheckpoint, _meta, read_gguf
from hooked.loading.gguf_format import GGUFFile

# Pre-tokenizer regexes by `tokenizer.ggml.pre` (llama.cpp's names). GPT-2's is ByteLevel's own;
# smollm/starcoder/refact also split every digit apart first.
GPT2_PRE = ("default", "gpt2", "mpt", "olmo", "smollm", "starcoder", "refact")
SPLIT_DIGITS_PRE = ("smollm", "starcoder", "refact")
LLAMA3_PRE = ("llama-bpe", "llama3")
LLAMA3_REGEX = (
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}"
    r"| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"
)
GEMMA_ARCHITECTURES = ("gemma", "gemma2", "gemma3")
SPACE = "\u2581"
CONTROL, USER_DEFINED = 3, 4  # GGUF token types: control tokens are special, user-defined ones matched verbatim


def tokenizer_from_gguf(source):
    """A fast tokenizer from the file's `tokenizer.ggml.*` metadata.

    Takes a path or a `GGUFCheckpoint` (reusing its parsed header).
    """
    from tokenizers import AddedToken, decoders, normalizers, pre_tokenizers, processors
    from transformers import PreTrainedTokenizerFast

    file = (source if isinstance(source, GGUFCheckpoint) else read_gguf(source)).file
    kind, arch = _meta(file, "tokenizer.ggml.model"), _meta(file, "general.architecture")
    tokens = _meta(file, "tokenizer.ggml.tokens", required=True)
    if kind == "gpt2":
        tok, vocab = _byte_level_bpe(file, tokens), tokens
    elif kind == "llama" and arch in GEMMA_ARCHITECTURES:
        vocab = [SPACE * len(t) if " " in t and not t.strip() else t for t in tokens]
        tok = _sentencepiece_bpe(vocab, [-rank for rank in range(len(vocab))])  # earlier tokens merge first
        tok.normalizer = normalizers.Replace(" ", SPACE)
        tok.decoder = decoders.Sequence([decoders.Replace(SPACE, " "), decoders.ByteFallback(), decoders.Fuse()])
    elif kind == "llama":  # Llama 2, Mistral, TinyLlama...: "▁" before the text, merges by score
        vocab, prefix = tokens, bool(_meta(file, "tokenizer.ggml.add_space_prefix", True))
        tok = _sentencepiece_bpe(vocab, _meta(file, "tokenizer.ggml.scores", required=True))
        tok.pre_tokenizer = pre_tokenizers.Metaspace(SPACE, prepend_scheme="first" if prefix else "never", split=False)
        steps = [decoders.Replace(SPACE, " "), decoders.ByteFallback(), decoders.Fuse()]
        tok.decoder = decoders.Sequence(steps + [decoders.Strip(" ", 1, 0)] * prefix)
    else:
        raise ValueError(
            f"GGUF tokenizer model {kind!r} is not supported (supported: 'gpt2' byte-level BPE, 'llama' "
            "SentencePiece BPE). Pass tokenizer= to from_pretrained, e.g. AutoTokenizer.from_pretrained(<repo>)."
        )
    types = _meta(file, "tokenizer.ggml.token_type") or [1] * len(tokens)
    known = set(vocab)
    tok.add_tokens(
        [
            AddedToken(t, special=k == CONTROL, normalized=False)
            for t, k in zip(tokens, types, strict=True)
            if k in (CONTROL, USER_DEFINED) and t in known  # a respelled token is left to the model
        ]
    )

    ids = {key: _meta(file, f"tokenizer.ggml.{m}_token_id") for key, m in SPECIAL_IDS}
    named = {key: vocab[i] if i is not None and i < len(vocab) else None for key, i in ids.items()}
    add = {
        key: bool(_meta(file, f"tokenizer.ggml.add_{key}_token", False)) and named[key] is not None
        for key in ("bos", "eos")
    }
    if any(add.values()):  # e.g. "<s> $A" (transformers 5 rebuilds the same from add_bos_token/add_eos_token)
        first, last = [f"{named['bos']}:0"] * add["bos"], [f"{named['eos']}:0"] * add["eos"]
        tok.post_processor = processors.TemplateProcessing(
            single=[*first, "$A:0", *last],
            pair=[*first, "$A:0", *last, "$B:1"],
            special_tokens=[(named[key], ids[key]) for key in ("bos", "eos") if add[key]],
        )
    return PreTrainedTokenizerFast(
        tokenizer_object=tok,
        bos_token=named["bos"],
        eos_token=named["eos"],
        unk_token=named["unk"],
        pad_token=named["pad"],
        add_bos_token=add["bos"],
        add_eos_token=add["eos"],
        chat_template=_meta(file, "tokenizer.chat_template"),
    )


def _byte_level_bpe(file: GGUFFile, tokens: list[str]):
    """llama.cpp's "gpt2" model: byte-level BPE with the file's merges and pre-tokenizer."""
    from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers

    merges = [tuple(merge.split(" ", 1)) for merge in _meta(file, "tokenizer.ggml.merges", required=True)]
    tok = Tokenizer(models.BPE(vocab={t: i for i, t in enumerate(tokens)}, merges=merges, fuse_unk=False))
    pre = _meta(file, "tokenizer.ggml.pre", "default")
    if pre not in (*GPT2_PRE, *LLAMA3_PRE):
        warnings.warn(f"GGUF pre-tokenizer {pre!r} is not known here; splitting text as GPT-2 does.", stacklevel=3)
    steps = [pre_tokenizers.Digits(individual_digits=True)] if pre in SPLIT_DIGITS_PRE else []
    steps += [pre_tokenizers.Split(Regex(LLAMA3_REGEX), behavior="isolated")] if pre in LLAMA3_PRE else []
    byte_level = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=pre not in LLAMA3_PRE)  # GPT-2's regex
    tok.pre_tokenizer = pre_tokenizers.Sequence([*steps, byte_level])
    tok.decoder = decoders.ByteLevel()
    return tok


def _sentencepiece_bpe(vocab: list[str], priority: list[float]):
    """SentencePiece BPE with byte fallback; merges derived from the vocabulary (see the module docstring),
    ranked by the merged token's `priority`, highest first."""
    from tokenizers import Tokenizer, models

    index = {t: i for i, t in enumerate(vocab)}
    merges = []  # (-priority of the merged token, -length of the left piece, -length of the right one, left, right)
    for token, score in zip(vocab, priority, strict=True):
        for cut in range(1, len(token)):
            left, right = token[:cut], token[cut:]
            if left in index and right in index:
                merges.append((-score, -cut, cut - len(token), left, right))
    merges.sort(key=lambda merge: merge[:3])  # stable: ties keep the vocabulary's order
    model = models.BPE(
        vocab=index,
        merges=[(left, right) for *_, left, right in merges],
        unk_token="<unk>" if "<unk>" in index else None,
        fuse_unk=True,
        byte_fallback=True,
    )
    return Tokenizer(model)
