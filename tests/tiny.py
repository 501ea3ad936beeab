"""Tiny Hugging Face checkpoints and a tokenizer, built in-process (no download): shared by the main suite's
conftest.py and the client suites under tests/clients/, which run in their own environments."""

from __future__ import annotations

import contextlib
import copy
import functools
from pathlib import Path

import torch
import transformers
from transformers import AutoModelForCausalLM

# The suite runs on transformers 5 and, for clients that pin it (circuit-tracer), on 4.57.
TRANSFORMERS_5 = int(transformers.__version__.split(".")[0]) >= 5


def save_tiny(hf_config, folder: Path, seed: int = 0, **save_kwargs) -> torch.nn.Module:
    """A random eager float32 HF model for `hf_config`, saved to `folder`; returns the model."""
    torch.manual_seed(seed)
    with _biasless_layer_norms_initialized(hf_config):
        model = AutoModelForCausalLM.from_config(hf_config, attn_implementation="eager").eval()
    with torch.no_grad():  # random init leaves norms at 1 and biases at 0: perturb them so they matter
        for name, param in model.named_parameters():
            if name.endswith("bias") or "norm" in name or "ln_" in name:
                param.add_(0.1 * torch.randn_like(param))
    model.save_pretrained(folder, **save_kwargs)
    return model


@contextlib.contextmanager
def _biasless_layer_norms_initialized(hf_config):
    """Transformers 4's StableLM initializes every LayerNorm's bias, and the per-head q/k norms of
    qk_layernorm=True have none, so such a model cannot be built from a config (from_pretrained skips
    initializing the modules it loads, so real checkpoints are unaffected). Initialize those norms as
    transformers 5 does, weight 1 (save_tiny then perturbs them)."""
    if TRANSFORMERS_5 or hf_config.model_type != "stablelm":
        yield
        return
    from transformers.models.stablelm.modeling_stablelm import StableLmPreTrainedModel

    original = StableLmPreTrainedModel._init_weights

    def init_weights(self, module):
        if isinstance(module, torch.nn.LayerNorm) and module.bias is None:
            module.weight.data.fill_(1.0)
        else:
            original(self, module)

    StableLmPreTrainedModel._init_weights = init_weights
    try:
        yield
    finally:
        StableLmPreTrainedModel._init_weights = original


def tiny_tokenizer():
    """A deterministic byte-level word tokenizer built in-process (no download), with BOS/EOS/PAD/UNK: a
    fresh copy each call, since models write their padding side to it and tests may change it."""
    return copy.deepcopy(_tiny_tokenizer())


@functools.cache
def _tiny_tokenizer():
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    corpus = "the cat sat on the mat. When Mary and John went to the store, John gave a drink to Mary! hello world"
    split = pre_tokenizers.ByteLevel(add_prefix_space=False)
    texts = [variant for word in corpus.split() for variant in (word, " " + word)]
    words = sorted({piece for text in texts for piece, _ in split.pre_tokenize_str(text)})
    vocab = {token: i for i, token in enumerate(["<bos>", "<eos>", "<pad>", "<unk>", *words])}
    tok = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    tok.pre_tokenizer = split
    tok.decoder = decoders.ByteLevel()
    return PreTrainedTokenizerFast(
        tokenizer_object=tok, bos_token="<bos>", eos_token="<eos>", pad_token="<pad>", unk_token="<unk>"
    )
