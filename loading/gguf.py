"""GGUF files (llama.cpp's single-file format) as checkpoints: Hugging Face config, names and layout.

Architectures: "llama" (Llama, Mistral, SmolLM...) and "gemma3". The tokenizer is rebuilt from the
same file by loading/gguf_tokenizer.py.

The file's header is parsed by loading/gguf_format.py, which memory-maps the tensor data; each tensor
is dequantized to float32 with `gguf.quants.dequantize` only when it is asked for, so a load holds
one dequantized tensor at a time. Format: https://github.com/ggml-org/ggml/blob/master/docs/gguf.md
(metadata keys such as `llama.attention.head_count`; tensor shapes listed fastest axis first, so
numpy's row-major shape is the reverse, which is already Hugging Face's [out, in]).

One fact from llama.cpp's `convert_hf_to_gguf.py` (LlamaModel.permute): the rows of the query and
key projections are reordered on conversion, within each head, from Hugging Face's rotate-half
rotary layout [first halves..., second halves...] to interleaved pairs, i.e.
`w.reshape(n_head, 2, d_head // 2, ...).swapaxes(1, 2)`, with n_head the key/value head count for
keys. `_unpermute` applies the inverse (llama.cpp does this for "llama" only). Llama 3's rope
scaling is stored as per-frequency divisors in a `rope_freqs` tensor rather than as metadata;
`_llama3_scaling` recovers Hugging Face's parameters.

Gemma 3 facts from llama.cpp (convert_hf_to_gguf.py Gemma3Model, src/llama-model.cpp): every norm
weight is stored as 1 + w (Hugging Face's Gemma RMSNorm multiplies by 1 + w), so reading subtracts 1;
the metadata gives the global rotary base and the window but not what llama.cpp hard-codes: local
layers use rotary base 10000, every sixth layer is global, and queries are scaled by 1/sqrt(head_dim)
(1/sqrt(d_model / n_heads) for the 62-layer 27B model).
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from gguf.quants import dequantize

from hooked.loading.gguf_format import GGUFFile, open_gguf

SPECIAL_IDS = (("bos", "bos"), ("eos", "eos"), ("unk", "unknown"), ("pad", "padding"))  # HF name, GGUF key name

# GGUF tensor name (within `blk.{i}.` for layers) -> Hugging Face name, without the .weight/.bias suffix.
GLOBAL_NAMES = {"token_embd": "model.embed_tokens", "output_norm": "model.norm", "output": "lm_head"}
LLAMA_LAYER_NAMES = {
    **{f"attn_{x}": f"self_attn.{x}_proj" for x in "qkv"},
    **{f"ffn_{x}": f"mlp.{x}_proj" for x in ("gate", "up", "down")},
    "attn_output": "self_attn.o_proj",
    "attn_norm": "input_layernorm",
    "ffn_norm": "post_attention_layernorm",  # Llama's pre-MLP norm
}
GEMMA3_LAYER_NAMES = {
    **LLAMA_LAYER_NAMES,
    "ffn_norm": "pre_feedforward_layernorm",
    "post_attention_norm": "post_attention_layernorm",
    "post_ffw_norm": "post_feedforward_layernorm",
    "attn_q_norm": "self_attn.q_norm",
    "attn_k_norm": "self_attn.k_norm",
}


@dataclass(frozen=True)
class Header:
    """What every architecture's config is read from: the file's metadata, tensors and main sizes."""

    file: GGUFFile
    arch: str

    def get(self, key: str, default=None, required: bool = False):
        """An architecture-scoped metadata value, e.g. get("context_length") reads "llama.context_length"."""
        return _meta(self.file, f"{self.arch}.{key}", default, required)

    def size(self, key: str, default=None) -> int:
        """A size from the metadata, which must be a positive integer (a crafted 0 would divide by zero later)."""
        value = self.get(key, default, required=default is None)
        if not isinstance(value, int) or isinstance(value, bool) or value <= 0:
            raise ValueError(
                f"{self.file.path.name}: metadata {self.arch}.{key} is {value!r}; it must be a positive integer "
                "(the file is damaged or was not written by a GGUF converter)."
            )
        return value

    @property
    def n_layers(self) -> int:
        return self.size("block_count")

    @property
    def n_heads(self) -> int:
        return self.size("attention.head_count")

    @property
    def d_model(self) -> int:
        return self.size("embedding_length")

    @property
    def head_dim(self) -> int:
        return self.size("attention.key_length", self.d_model // self.n_heads)


@dataclass(frozen=True)
class Architecture:
    """How one GGUF architecture maps onto its Hugging Face counterpart."""

    hf_class: str
    model_type: str
    layer_names: dict[str, str]
    config: Callable[[Header], dict]  # the family's own config fields
    permuted_qk: bool = False  # q/k rows stored interleaved (see the module docstring)
    norm_offset: float = 0.0  # stored norm weight = Hugging Face's + norm_offset
    extra_tensors: tuple[str, ...] = ()  # tensors that become config, not weights


def _llama_config(h: Header) -> dict:
    rope_dims = int(h.get("rope.dimension_count", h.head_dim))
    if rope_dims != h.head_dim:
        raise ValueError(f"{h.file.path.name}: rotary over {rope_dims} of {h.head_dim} head dims is not supported.")
    theta = float(h.get("rope.freq_base", 10000.0))
    rope = {"rope_type": "default", "rope_theta": theta}
    scaling = h.get("rope.scaling.type", "none")
    if "rope_freqs.weight" in h.file.tensors:
        freqs = h.file.tensors["rope_freqs.weight"]
        divisors = np.asarray(dequantize(freqs.data, freqs.type), dtype=np.float64).ravel()
        original = int(h.get("rope.scaling.original_context_length", 8192))
        rope.update(_llama3_scaling(divisors, theta, h.head_dim, original))
    elif scaling == "linear":
        rope.update(rope_type="linear", factor=float(h.get("rope.scaling.factor", required=True)))
    elif scaling != "none":
        raise ValueError(
            f"{h.file.path.name}: rope scaling {scaling!r} is not supported (supported: none, linear, llama3)."
        )
    return {"hidden_act": "silu", "rope_parameters": rope, "mlp_bias": "blk.0.ffn_up.bias" in h.file.tensors}


def _gemma3_config(h: Header) -> dict:
    period = h.get("attention.sliding_window_pattern", 6)
    if not isinstance(period, int) or period < 1:
        raise ValueError(f"{h.file.path.name}: sliding_window_pattern {period!r} is not supported (a period is).")
    full = {"rope_type": "default", "rope_theta": float(h.get("rope.freq_base", 1000000.0))}
    scaling = h.get("rope.scaling.type", "none")
    if scaling == "linear":  # the 4B and larger models scale their global layers' rotary
        full.update(rope_type="linear", factor=float(h.get("rope.scaling.factor", required=True)))
    elif scaling != "none":
        raise ValueError(f"{h.file.path.name}: rope scaling {scaling!r} is not supported for gemma3 (none, linear).")
    soft_cap = h.get("final_logit_softcapping")
    return {
        "hidden_activation": "gelu_pytorch_tanh",
        "sliding_window": int(h.get("attention.sliding_window", required=True)),
        "layer_types": ["full_attention" if (i + 1) % period == 0 else "sliding_attention" for i in range(h.n_layers)],
        "rope_parameters": {
            "full_attention": full,
            "sliding_attention": {"rope_type": "default", "rope_theta": 10000.0},
        },
        "query_pre_attn_scalar": h.d_model // h.n_heads if h.n_layers == 62 else h.head_dim,
        "final_logit_softcapping": float(soft_cap) if soft_cap is not None else None,
        "attn_logit_softcapping": None,
        "use_bidirectional_attention": False,
    }


ARCHITECTURES = {
    "llama": Architecture(
        "LlamaForCausalLM",
        "llama",
        LLAMA_LAYER_NAMES,
        _llama_config,
        permuted_qk=True,
        extra_tensors=("rope_freqs.weight",),  # Llama 3's rope scaling
    ),
    "gemma3": Architecture("Gemma3ForCausalLM", "gemma3_text", GEMMA3_LAYER_NAMES, _gemma3_config, norm_offset=1.0),
}
SUPPORTED_ARCHITECTURES = tuple(ARCHITECTURES)


@dataclass
class GGUFCheckpoint:
    """A GGUF file seen as a Hugging Face checkpoint: config dict, tensor names, tensors on request."""

    config: dict
    tensor_names: list[str]
    path: Path
    file: GGUFFile = field(repr=False)
    # Hugging Face name -> (GGUFTensor, heads to un-permute or None, amount to subtract)
    sources: dict = field(repr=False)

    @property
    def add_bos_token(self) -> bool | None:
        """Whether the tokenizer puts BOS before each text (None where the file does not say)."""
        return _meta(self.file, "tokenizer.ggml.add_bos_token")

    def get_tensor(self, name: str) -> torch.Tensor:
        """One tensor, dequantized to float32 in Hugging Face's layout."""
        if name not in self.sources:
            raise ValueError(f"{self.path.name} has no tensor for {name!r} (see .tensor_names).")
        tensor, heads, offset = self.sources[name]
        try:
            array = dequantize(tensor.data, tensor.type)
        except NotImplementedError as error:
            raise ValueError(
                f"GGUF tensor {tensor.name} has type {tensor.type.name}, which the installed "
                f"gguf package cannot dequantize ({error})."
            ) from None
        array = array.reshape(tensor.shape)
        if heads is not None:
            array = _unpermute(array, heads)
        if offset:
            array = array.astype(np.float32) - np.float32(offset)
        return torch.from_numpy(np.array(array, dtype=np.float32, order="C"))  # a writable copy, not the memmap

    # The interface loading.pretrained.build uses for every checkpoint kind.
    def names(self) -> list[str]:
        return list(self.tensor_names)

    def shape(self, name: str) -> tuple[int, ...]:
        return self.sources[name][0].shape

    def get(self, name: str) -> torch.Tensor:
        return self.get_tensor(name)

    def close(self) -> None:
        pass


def _unpermute(w: np.ndarray, n_head: int) -> np.ndarray:
    """Undo llama.cpp's per-head interleaving of q/k rows (see the module docstring)."""
    return w.reshape(n_head, w.shape[0] // n_head // 2, 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


def _meta(file: GGUFFile, key: str, default=None, required: bool = False):
    """A metadata value (str, int, float, bool, or a list of them), or `default`."""
    if key not in file.metadata and required:
        raise ValueError(f"{file.path.name} has no {key!r} metadata.")
    return file.metadata.get(key, default)


def read_gguf(path: str | Path) -> GGUFCheckpoint:
    """Open a GGUF file: metadata and tensor index now, tensor data (memory-mapped) when asked."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"No GGUF file at {path}.")
    file = open_gguf(path)
    arch_name = _meta(file, "general.architecture")
    if arch_name not in ARCHITECTURES:
        raise ValueError(
            f"{path.name}: GGUF architecture {arch_name!r} is not supported "
            f"(supported: {', '.join(SUPPORTED_ARCHITECTURES)})."
        )
    arch, tensors = ARCHITECTURES[arch_name], file.tensors
    h = Header(file, arch_name)
    n_layers, n_heads = h.n_layers, h.n_heads
    n_kv = h.size("attention.head_count_kv", n_heads)
    # The per-layer name table below has block_count entries per layer name: check the count against the
    # layers the file has tensors for first, so that a crafted block_count costs nothing.
    present = {int(m.group(1)) for name in tensors if (m := re.match(r"blk\.(\d+)\.", name))}
    if n_layers > len(present):
        raise ValueError(
            f"{path.name}: metadata {arch_name}.block_count says {n_layers} layers, but the file has tensors for "
            f"{len(present)}; the file is damaged or its metadata does not describe its tensors."
        )
    sources, unexpected = {}, []
    for name, tensor in tensors.items():
        match = re.fullmatch(r"(?:blk\.(\d+)\.)?(\w+)\.(weight|bias)", name)
        layer, part, suffix = match.groups() if match else (None, None, None)
        if layer is None:
            hf = GLOBAL_NAMES.get(part)
        elif part in arch.layer_names and int(layer) < n_layers:
            hf = f"model.layers.{layer}.{arch.layer_names[part]}"
        else:
            hf = None
        if hf is not None:
            heads = {"attn_q": n_heads, "attn_k": n_kv}.get(part) if arch.permuted_qk else None
            offset = arch.norm_offset if part.endswith("norm") and suffix == "weight" else 0.0
            sources[f"{hf}.{suffix}"] = (tensor, heads, offset)
        elif name not in arch.extra_tensors:
            unexpected.append(name)
    if unexpected:
        raise ValueError(f"{path.name}: GGUF tensors with no {arch.hf_class} equivalent: {', '.join(unexpected[:10])}.")
    wanted = ["model.embed_tokens.weight", "model.norm.weight"] + [
        f"model.layers.{i}.{hf}.weight" for i in range(n_layers) for hf in arch.layer_names.values()
    ]
    if missing := [name for name in wanted if name not in sources]:
        raise ValueError(f"{path.name} lacks {len(missing)} tensors, for {', '.join(missing[:10])} ...")

    config = {
        "architectures": [arch.hf_class],
        "model_type": arch.model_type,
        "vocab_size": int(tensors["token_embd.weight"].shape[0]),
        "hidden_size": h.d_model,
        "intermediate_size": h.size("feed_forward_length"),
        "num_hidden_layers": n_layers,
        "num_attention_heads": n_heads,
        "num_key_value_heads": n_kv,
        "head_dim": h.head_dim,
        "rms_norm_eps": float(h.get("attention.layer_norm_rms_epsilon", required=True)),
        "max_position_embeddings": h.size("context_length"),
        "tie_word_embeddings": "lm_head.weight" not in sources,
        "attention_bias": "model.layers.0.self_attn.q_proj.bias" in sources,
        **arch.config(h),
        **{f"{k}_token_id": _meta(file, f"tokenizer.ggml.{m}_token_id") for k, m in SPECIAL_IDS if k != "unk"},
        "_name_or_path": str(path),
    }
    return GGUFCheckpoint(config, list(sources), path, file, sources)


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
