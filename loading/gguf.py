"""GGUF files (llama.cpp's format): config, tensors and tokenizer, read without building any model.

The file's metadata becomes a Hugging Face style config dict and its tensors are renamed to Hugging
Face's names and dequantized one at a time with the `gguf` package, so the family adapters load a
GGUF exactly like a safetensors folder. Facts used (GGUF spec, llama.cpp's convert_hf_to_gguf.py):
tensor dims are stored innermost-first, so a dequantized matrix comes out [out, in] as in
`nn.Linear`; and the converter reorders the rows of each query/key head from Hugging Face's
half-split rotary layout to interleaved pairs, which `_unpermute` undoes.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor

SUPPORTED = ("llama",)

# GGUF tensor name (with {i} for the block) -> Hugging Face Llama name.
LLAMA_NAMES = {
    "token_embd.weight": "model.embed_tokens.weight",
    "output_norm.weight": "model.norm.weight",
    "output.weight": "lm_head.weight",
    "blk.{i}.attn_norm.weight": "model.layers.{i}.input_layernorm.weight",
    "blk.{i}.ffn_norm.weight": "model.layers.{i}.post_attention_layernorm.weight",
    "blk.{i}.attn_q.weight": "model.layers.{i}.self_attn.q_proj.weight",
    "blk.{i}.attn_k.weight": "model.layers.{i}.self_attn.k_proj.weight",
    "blk.{i}.attn_v.weight": "model.layers.{i}.self_attn.v_proj.weight",
    "blk.{i}.attn_output.weight": "model.layers.{i}.self_attn.o_proj.weight",
    "blk.{i}.ffn_gate.weight": "model.layers.{i}.mlp.gate_proj.weight",
    "blk.{i}.ffn_up.weight": "model.layers.{i}.mlp.up_proj.weight",
    "blk.{i}.ffn_down.weight": "model.layers.{i}.mlp.down_proj.weight",
}


def _field(reader, key: str, default: Any = None) -> Any:
    field = reader.fields.get(key)
    return default if field is None else field.contents()


def _unpermute(weight: np.ndarray, n_heads: int) -> np.ndarray:
    """Undo llama.cpp's per-head row order (pairs interleaved) back to Hugging Face's (halves)."""
    out, d_in = weight.shape
    return weight.reshape(n_heads, out // n_heads // 2, 2, d_in).swapaxes(1, 2).reshape(out, d_in)


class GGUFCheckpoint:
    """A GGUF file seen as a checkpoint: Hugging Face tensor names, dequantized on request."""

    def __init__(self, path: str | Path) -> None:
        from gguf import GGUFReader

        self.path = Path(path)
        try:
            self.reader = GGUFReader(self.path)
        except Exception as error:  # the reader raises assorted errors on a malformed file
            raise ValueError(f"{self.path} is not a readable GGUF file: {error}") from error
        architecture = _field(self.reader, "general.architecture")
        if architecture not in SUPPORTED:
            raise ValueError(
                f"{self.path.name}: GGUF architecture {architecture!r} is not supported "
                f"(supported: {', '.join(SUPPORTED)})."
            )
        self.config = self._config(architecture)
        n_layers = self.config["num_hidden_layers"]
        renames = {}
        for gguf_name, hf_name in LLAMA_NAMES.items():
            for i in range(n_layers) if "{i}" in gguf_name else [None]:
                renames[gguf_name.format(i=i)] = hf_name.format(i=i)
        self.tensors = {}
        for tensor in self.reader.tensors:
            if tensor.name not in renames:
                raise ValueError(f"{self.path.name}: unexpected GGUF tensor {tensor.name!r}.")
            self.tensors[renames[tensor.name]] = tensor
        self.config["tie_word_embeddings"] = "lm_head.weight" not in self.tensors

    def _config(self, arch: str) -> dict[str, Any]:
        r = self.reader
        n_heads = int(_field(r, f"{arch}.attention.head_count"))
        d_model = int(_field(r, f"{arch}.embedding_length"))
        d_head = int(_field(r, f"{arch}.attention.key_length", d_model // n_heads))
        vocab = _field(r, f"{arch}.vocab_size") or len(r.fields["tokenizer.ggml.tokens"].data)
        rope = {"rope_type": "default", "rope_theta": float(_field(r, f"{arch}.rope.freq_base", 10000.0))}
        if _field(r, f"{arch}.rope.scaling.type") not in (None, "none"):
            raise ValueError(f"{self.path.name}: rope scaling in GGUF metadata is not supported yet.")
        return {
            "architectures": ["LlamaForCausalLM"],
            "hidden_size": d_model,
            "intermediate_size": int(_field(r, f"{arch}.feed_forward_length")),
            "num_hidden_layers": int(_field(r, f"{arch}.block_count")),
            "num_attention_heads": n_heads,
            "num_key_value_heads": int(_field(r, f"{arch}.attention.head_count_kv", n_heads)),
            "head_dim": d_head,
            "vocab_size": int(vocab),
            "max_position_embeddings": int(_field(r, f"{arch}.context_length")),
            "rms_norm_eps": float(_field(r, f"{arch}.attention.layer_norm_rms_epsilon")),
            "rope_parameters": rope,
            "hidden_act": "silu",
            "attention_bias": False,
            "mlp_bias": False,
            "bos_token_id": _field(r, "tokenizer.ggml.bos_token_id"),
            "eos_token_id": _field(r, "tokenizer.ggml.eos_token_id"),
            "pad_token_id": _field(r, "tokenizer.ggml.padding_token_id"),
            "_name_or_path": str(self.path),
        }

    @property
    def add_bos_token(self) -> bool | None:
        """Whether the model was trained with a BOS token before each text (None if the file does not say)."""
        return _field(self.reader, "tokenizer.ggml.add_bos_token")

    def names(self) -> list[str]:
        return list(self.tensors)

    def get(self, name: str) -> Tensor:
        from gguf import GGMLQuantizationType
        from gguf.quants import dequantize

        tensor = self.tensors[name]
        try:
            if tensor.tensor_type in (GGMLQuantizationType.F32, GGMLQuantizationType.F16):
                array = np.asarray(tensor.data, dtype=np.float32)
            else:
                array = dequantize(tensor.data, tensor.tensor_type)
        except NotImplementedError as error:
            raise ValueError(
                f"{self.path.name}: tensor {tensor.name} uses {tensor.tensor_type.name}, which the installed "
                f"gguf package cannot dequantize ({error}); upgrading gguf may help."
            ) from error
        array = array.reshape(tuple(reversed(tensor.shape.tolist())))  # GGUF dims are innermost-first
        if name.endswith("q_proj.weight"):
            array = _unpermute(array, self.config["num_attention_heads"])
        elif name.endswith("k_proj.weight"):
            array = _unpermute(array, self.config["num_key_value_heads"])
        array = np.ascontiguousarray(array, dtype=np.float32)
        if not array.flags.writeable:  # unquantized tensors are views of the read-only memory map
            array = array.copy()
        return torch.from_numpy(array)

    def close(self) -> None:
        pass


def read_gguf(path: str | Path) -> GGUFCheckpoint:
    return GGUFCheckpoint(path)


def tokenizer_from_gguf(path_or_checkpoint: str | Path | GGUFCheckpoint):
    """A fast tokenizer built from the file's `tokenizer.ggml.*` metadata (byte-level BPE, "gpt2" model)."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    checkpoint = path_or_checkpoint if isinstance(path_or_checkpoint, GGUFCheckpoint) else read_gguf(path_or_checkpoint)
    r = checkpoint.reader
    kind = _field(r, "tokenizer.ggml.model")
    if kind != "gpt2":
        raise ValueError(f"{checkpoint.path.name}: GGUF tokenizer model {kind!r} is not supported (supported: gpt2).")
    tokens = _field(r, "tokenizer.ggml.tokens")
    merges = [tuple(merge.split(" ", 1)) for merge in _field(r, "tokenizer.ggml.merges")]
    bpe = Tokenizer(models.BPE(vocab={t: i for i, t in enumerate(tokens)}, merges=merges, fuse_unk=False))
    bpe.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
    bpe.decoder = decoders.ByteLevel()
    types = _field(r, "tokenizer.ggml.token_type")
    special = [t for t, kind in zip(tokens, types, strict=True) if kind == 3]  # 3 = control token
    bpe.add_special_tokens(special)

    def token(key: str) -> str | None:
        index = _field(r, f"tokenizer.ggml.{key}_token_id")
        return None if index is None else tokens[index]

    return PreTrainedTokenizerFast(
        tokenizer_object=bpe,
        bos_token=token("bos"),
        eos_token=token("eos"),
        unk_token=token("unknown"),
        pad_token=token("padding"),
        chat_template=_field(r, "tokenizer.chat_template"),
    )
