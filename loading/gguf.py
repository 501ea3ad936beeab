"""GGUF files (llama.cpp's single-file format) as checkpoints: Hugging Face config, names and layout.

The file is read with the `gguf` package's `GGUFReader`, which memory-maps it, and each tensor is
dequantized to float32 with `gguf.quants.dequantize` only when it is asked for, so a load holds one
dequantized tensor at a time. Format: https://github.com/ggml-org/ggml/blob/master/docs/gguf.md
(metadata keys such as `llama.attention.head_count`; tensor shapes listed fastest axis first, so
numpy's row-major shape is the reverse, which is already Hugging Face's [out, in]).

One fact from llama.cpp's `convert_hf_to_gguf.py` (LlamaModel.permute): the rows of the query and
key projections are reordered on conversion, within each head, from Hugging Face's rotate-half
rotary layout [first halves..., second halves...] to interleaved pairs, i.e.
`w.reshape(n_head, 2, d_head // 2, ...).swapaxes(1, 2)`, with n_head the key/value head count for
keys. `_unpermute` applies the inverse. Llama 3's rope scaling is stored as per-frequency divisors in
a `rope_freqs` tensor rather than as metadata; `_llama3_scaling` recovers Hugging Face's parameters.
"""

from __future__ import annotations

import math
import re
import warnings
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from gguf import GGUFReader, GGUFValueType
from gguf.quants import dequantize

SUPPORTED_ARCHITECTURES = ("llama",)
SPECIAL_IDS = (("bos", "bos"), ("eos", "eos"), ("unk", "unknown"), ("pad", "padding"))  # HF name, GGUF key name

# GGUF tensor name (within `blk.{i}.` for layers) -> Hugging Face name, without the .weight/.bias suffix.
GLOBAL_NAMES = {"token_embd": "model.embed_tokens", "output_norm": "model.norm", "output": "lm_head"}
LAYER_NAMES = {
    **{f"attn_{x}": f"self_attn.{x}_proj" for x in "qkv"},
    **{f"ffn_{x}": f"mlp.{x}_proj" for x in ("gate", "up", "down")},
    "attn_output": "self_attn.o_proj",
    "attn_norm": "input_layernorm",
    "ffn_norm": "post_attention_layernorm",
}
# Pre-tokenizer regexes by `tokenizer.ggml.pre` (llama.cpp's names). GPT-2's is ByteLevel's own;
# smollm/starcoder/refact also split every digit apart first.
GPT2_PRE = ("default", "gpt2", "mpt", "olmo", "smollm", "starcoder", "refact")
SPLIT_DIGITS_PRE = ("smollm", "starcoder", "refact")
LLAMA3_PRE = ("llama-bpe", "llama3")
LLAMA3_REGEX = (
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}"
    r"| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"
)


@dataclass
class GGUFCheckpoint:
    """A GGUF file seen as a Hugging Face Llama checkpoint: config dict, tensor names, tensors on request."""

    config: dict
    tensor_names: list[str]
    path: Path
    reader: GGUFReader = field(repr=False)
    sources: dict = field(repr=False)  # Hugging Face name -> (gguf ReaderTensor, heads to un-permute or None)

    @property
    def add_bos_token(self) -> bool | None:
        """Whether the tokenizer puts BOS before each text (None where the file does not say)."""
        return _meta(self.reader, "tokenizer.ggml.add_bos_token")

    def get_tensor(self, name: str) -> torch.Tensor:
        """One tensor, dequantized to float32 in Hugging Face's layout."""
        if name not in self.sources:
            raise ValueError(f"{self.path.name} has no tensor for {name!r} (see .tensor_names).")
        tensor, heads = self.sources[name]
        try:
            array = dequantize(tensor.data, tensor.tensor_type)
        except NotImplementedError as error:
            raise ValueError(
                f"GGUF tensor {tensor.name} has type {tensor.tensor_type.name}, which the installed "
                f"gguf package cannot dequantize ({error})."
            ) from None
        array = array.reshape(tuple(int(n) for n in reversed(tensor.shape)))
        if heads is not None:
            array = _unpermute(array, heads)
        return torch.from_numpy(np.array(array, dtype=np.float32, order="C"))  # a writable copy, not the memmap

    # The interface loading.pretrained.build uses for every checkpoint kind.
    def names(self) -> list[str]:
        return list(self.tensor_names)

    def get(self, name: str) -> torch.Tensor:
        return self.get_tensor(name)

    def close(self) -> None:
        pass


def _unpermute(w: np.ndarray, n_head: int) -> np.ndarray:
    """Undo llama.cpp's per-head interleaving of q/k rows (see the module docstring)."""
    return w.reshape(n_head, w.shape[0] // n_head // 2, 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


def _meta(reader: GGUFReader, key: str, default=None, required: bool = False):
    """A metadata value as Python (str, int, float, bool, or a list of them), or `default`."""
    f = reader.fields.get(key)
    if f is None and required:
        raise ValueError(f"The GGUF file has no {key!r} metadata.")
    if f is None:
        return default
    if f.types[0] == GGUFValueType.ARRAY:
        if f.types[-1] == GGUFValueType.STRING:
            return [bytes(f.parts[i]).decode("utf-8") for i in f.data]
        return [f.parts[i].tolist()[0] for i in f.data]
    part = f.parts[f.data[0]]
    return bytes(part).decode("utf-8") if f.types[0] == GGUFValueType.STRING else part.tolist()[0]


def read_gguf(path: str | Path) -> GGUFCheckpoint:
    """Open a GGUF file: metadata and tensor index now, tensor data (memory-mapped) when asked."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"No GGUF file at {path}.")
    try:
        reader = GGUFReader(path)
    except Exception as error:  # the reader raises assorted errors (bad magic, truncation) on a malformed file
        raise ValueError(f"{path} is not a readable GGUF file: {error}") from error
    arch = _meta(reader, "general.architecture")
    if arch not in SUPPORTED_ARCHITECTURES:
        raise ValueError(
            f"{path.name}: GGUF architecture {arch!r} is not supported "
            f"(supported: {', '.join(SUPPORTED_ARCHITECTURES)})."
        )
    tensors = {t.name: t for t in reader.tensors}
    n_layers = int(_meta(reader, f"{arch}.block_count", required=True))
    n_heads = int(_meta(reader, f"{arch}.attention.head_count", required=True))
    n_kv = int(_meta(reader, f"{arch}.attention.head_count_kv", n_heads))
    d_model = int(_meta(reader, f"{arch}.embedding_length", required=True))
    head_dim = int(_meta(reader, f"{arch}.attention.key_length", d_model // n_heads))

    sources, unexpected = {}, []
    for name, tensor in tensors.items():
        match = re.fullmatch(r"(?:blk\.(\d+)\.)?(\w+)\.(weight|bias)", name)
        layer, part, suffix = match.groups() if match else (None, None, None)
        if layer is None:
            hf = GLOBAL_NAMES.get(part)
        else:
            hf = f"model.layers.{layer}.{LAYER_NAMES[part]}" if part in LAYER_NAMES and int(layer) < n_layers else None
        if hf is not None:
            sources[f"{hf}.{suffix}"] = (tensor, {"attn_q": n_heads, "attn_k": n_kv}.get(part))
        elif name != "rope_freqs.weight":  # rope_freqs holds Llama 3's rope scaling: it becomes config
            unexpected.append(name)
    if unexpected:
        raise ValueError(f"{path.name}: GGUF tensors with no Llama equivalent: {', '.join(unexpected[:10])}.")
    wanted = ["model.embed_tokens.weight", "model.norm.weight"] + [
        f"model.layers.{i}.{hf}.weight" for i in range(n_layers) for hf in LAYER_NAMES.values()
    ]
    if missing := [name for name in wanted if name not in sources]:
        raise ValueError(f"{path.name} lacks {len(missing)} tensors, for {', '.join(missing[:10])} ...")

    rope_dims = int(_meta(reader, f"{arch}.rope.dimension_count", head_dim))
    if rope_dims != head_dim:
        raise ValueError(f"{path.name}: rotary over {rope_dims} of {head_dim} head dims is not supported for llama.")
    theta = float(_meta(reader, f"{arch}.rope.freq_base", 10000.0))
    rope = {"rope_type": "default", "rope_theta": theta}
    scaling = _meta(reader, f"{arch}.rope.scaling.type", "none")
    if "rope_freqs.weight" in tensors:
        divisors = dequantize(tensors["rope_freqs.weight"].data, tensors["rope_freqs.weight"].tensor_type)
        original = int(_meta(reader, f"{arch}.rope.scaling.original_context_length", 8192))
        rope.update(_llama3_scaling(np.asarray(divisors, dtype=np.float64).ravel(), theta, head_dim, original))
    elif scaling == "linear":
        rope.update(rope_type="linear", factor=float(_meta(reader, f"{arch}.rope.scaling.factor", required=True)))
    elif scaling != "none":
        raise ValueError(f"{path.name}: rope scaling {scaling!r} is not supported (supported: none, linear, llama3).")

    config = {
        "architectures": ["LlamaForCausalLM"],
        "model_type": "llama",
        "vocab_size": int(tensors["token_embd.weight"].shape[1]),
        "hidden_size": d_model,
        "intermediate_size": int(_meta(reader, f"{arch}.feed_forward_length", required=True)),
        "num_hidden_layers": n_layers,
        "num_attention_heads": n_heads,
        "num_key_value_heads": n_kv,
        "head_dim": head_dim,
        "hidden_act": "silu",
        "rms_norm_eps": float(_meta(reader, f"{arch}.attention.layer_norm_rms_epsilon", required=True)),
        "max_position_embeddings": int(_meta(reader, f"{arch}.context_length", required=True)),
        "rope_parameters": rope,
        "tie_word_embeddings": "lm_head.weight" not in sources,
        "attention_bias": "model.layers.0.self_attn.q_proj.bias" in sources,
        "mlp_bias": "model.layers.0.mlp.up_proj.bias" in sources,
        **{f"{k}_token_id": _meta(reader, f"tokenizer.ggml.{m}_token_id") for k, m in SPECIAL_IDS if k != "unk"},
        "_name_or_path": str(path),
    }
    return GGUFCheckpoint(config, list(sources), path, reader, sources)


def _llama3_scaling(divisors: np.ndarray, theta: float, head_dim: int, original: int) -> dict:
    """Hugging Face's llama3 rope parameters from llama.cpp's per-frequency divisors (`rope_freqs`)."""
    wavelen = 2 * math.pi * theta ** (np.arange(0, head_dim, 2) / head_dim)
    factor = round(float(divisors.max()), 4)
    # Between the two cut-offs the divisor is 1 / ((1 - s) / factor + s), with s linear in 1 / wavelen.
    medium = (divisors > 1 + 1e-4) & (divisors < factor * (1 - 1e-4))
    low, high = 1.0, 4.0  # Llama 3's values, used when no frequency falls between the cut-offs
    if medium.sum() >= 2 and factor > 1:
        smooth = (1 / divisors[medium] - 1 / factor) / (1 - 1 / factor)
        # s = (original / wavelen - low) / (high - low): a line in original / wavelen.
        slope, intercept = np.polyfit(original / wavelen[medium], smooth, 1)
        low, high = round(float(-intercept / slope), 4), round(float((1 - intercept) / slope), 4)
    params = {
        "rope_type": "llama3",
        "factor": factor,
        "low_freq_factor": low,
        "high_freq_factor": high,
        "original_max_position_embeddings": original,
    }
    smooth = np.clip((original / wavelen - low) / (high - low), 0, 1)
    if not np.allclose(1 / ((1 - smooth) / factor + smooth), divisors, rtol=1e-4):
        raise ValueError(f"The GGUF file's rope_freqs tensor does not follow llama3 rope scaling (tried {params}).")
    return params


def tokenizer_from_gguf(path_or_reader):
    """A fast tokenizer from the file's `tokenizer.ggml.*` metadata (byte-level BPE, llama.cpp's "gpt2" model).

    Takes a path, a `GGUFCheckpoint` (reusing its open reader) or a `gguf.GGUFReader`.
    """
    from tokenizers import AddedToken, Regex, Tokenizer, decoders, models, pre_tokenizers, processors
    from transformers import PreTrainedTokenizerFast

    reader = path_or_reader.reader if isinstance(path_or_reader, GGUFCheckpoint) else path_or_reader
    reader = reader if isinstance(reader, GGUFReader) else read_gguf(reader).reader
    kind = _meta(reader, "tokenizer.ggml.model")
    if kind != "gpt2":
        raise ValueError(f"GGUF tokenizer model {kind!r} is not supported (supported: 'gpt2', byte-level BPE).")
    tokens = _meta(reader, "tokenizer.ggml.tokens", required=True)
    merges = [tuple(merge.split(" ", 1)) for merge in _meta(reader, "tokenizer.ggml.merges", required=True)]
    tok = Tokenizer(models.BPE(vocab={t: i for i, t in enumerate(tokens)}, merges=merges, fuse_unk=False))
    pre = _meta(reader, "tokenizer.ggml.pre", "default")
    if pre not in (*GPT2_PRE, *LLAMA3_PRE):
        warnings.warn(f"GGUF pre-tokenizer {pre!r} is not known here; splitting text as GPT-2 does.", stacklevel=2)
    steps = [pre_tokenizers.Digits(individual_digits=True)] if pre in SPLIT_DIGITS_PRE else []
    steps += [pre_tokenizers.Split(Regex(LLAMA3_REGEX), behavior="isolated")] if pre in LLAMA3_PRE else []
    byte_level = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=pre not in LLAMA3_PRE)  # GPT-2's regex
    tok.pre_tokenizer = pre_tokenizers.Sequence([*steps, byte_level])
    tok.decoder = decoders.ByteLevel()
    # Token types (GGUF spec): 3 control tokens are special, 4 user-defined ones are matched verbatim.
    types = _meta(reader, "tokenizer.ggml.token_type") or [1] * len(tokens)
    tok.add_tokens(
        [AddedToken(t, special=k == 3, normalized=False) for t, k in zip(tokens, types, strict=True) if k in (3, 4)]
    )

    ids = {key: _meta(reader, f"tokenizer.ggml.{m}_token_id") for key, m in SPECIAL_IDS}
    named = {key: tokens[i] if i is not None and i < len(tokens) else None for key, i in ids.items()}
    add = {
        key: bool(_meta(reader, f"tokenizer.ggml.add_{key}_token", False)) and named[key] is not None
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
        chat_template=_meta(reader, "tokenizer.chat_template"),
    )
