"""The architecture of a HookedTransformer, as a frozen dataclass of facts.

Axis names used in shape annotations throughout the package, defined once here:
batch, pos, d_model, n_heads, n_kv_heads, d_head, d_mlp, d_vocab, query_pos, key_pos.

Field names follow TransformerLens's `HookedTransformerConfig` where it had one, so notebooks that
read `model.cfg.n_layers` or `model.cfg.normalization_type` keep working. Device, dtype, tokenizer
and analysis switches are not architecture facts and live elsewhere.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field, replace
from typing import Literal

ActFn = Literal["gelu_new", "gelu", "gelu_pytorch_tanh", "silu", "relu"]


@dataclass(frozen=True)
class RopeScaling:
    """Rescaling of rotary frequencies for long context (Hugging Face `rope_type` "linear" or "llama3")."""

    kind: Literal["linear", "llama3"]
    factor: float
    low_freq_factor: float = 1.0  # llama3 only
    high_freq_factor: float = 4.0  # llama3 only
    original_max_position_embeddings: int = 8192  # llama3 only


@dataclass(frozen=True)
class HookedTransformerConfig:
    d_model: int  # width of the residual stream
    n_layers: int  # number of transformer blocks
    n_heads: int  # query heads per attention layer
    d_vocab: int  # vocabulary size (rows of W_E, columns of W_U)
    n_ctx: int  # longest sequence the model accepts
    d_head: int = 0  # width of one head; 0 means d_model // n_heads
    n_key_value_heads: int = 0  # key/value heads (GQA/MQA); 0 means n_heads
    d_mlp: int = 0  # hidden width of the MLP; 0 means 4 * d_model
    act_fn: ActFn = "gelu_new"
    gated_mlp: bool = False  # MLP is W_out(act(x W_gate) * (x W_in)) (SwiGLU-style)
    normalization_type: Literal["LN", "RMS"] = "LN"
    eps: float = 1e-5  # added to the variance inside every norm
    positional_embedding_type: Literal["standard", "rotary"] = "standard"  # standard = learned absolute
    rotary_dim: int = 0  # dims of each head that rotate (partial rotary); 0 means d_head
    rotary_base: float = 10000.0
    rope_scaling: RopeScaling | None = None
    attn_scale: float = 0.0  # attention scores are divided by this; 0 means sqrt(d_head)
    attn_qkv_bias: bool = True  # q, k, v projections have biases
    attn_out_bias: bool = True  # output projection has a bias
    mlp_bias: bool = True
    unembed_bias: bool = False
    tie_word_embeddings: bool = False  # W_U is W_E transposed (one tensor in memory)
    sliding_window: int | None = None  # a query sees only the last `sliding_window` keys
    initializer_range: float = 0.02  # std of random init (random models only)
    original_architecture: str | None = None  # Hugging Face class this config came from, if any
    model_name: str = field(default="custom", compare=False)

    def __post_init__(self) -> None:
        derived = {
            "d_head": self.d_model // self.n_heads if self.n_heads else 0,
            "n_key_value_heads": self.n_heads,
            "d_mlp": 4 * self.d_model,
        }
        for name, value in derived.items():
            if getattr(self, name) == 0:
                object.__setattr__(self, name, value)
        if self.rotary_dim == 0 and self.positional_embedding_type == "rotary":
            object.__setattr__(self, "rotary_dim", self.d_head)
        if self.attn_scale == 0.0:
            object.__setattr__(self, "attn_scale", math.sqrt(self.d_head))
        self._validate()

    def _validate(self) -> None:
        for name in ("d_model", "n_layers", "n_heads", "d_vocab", "n_ctx", "d_head", "n_key_value_heads", "d_mlp"):
            if getattr(self, name) <= 0:
                raise ValueError(f"Config field {name} must be positive, got {getattr(self, name)}.")
        if self.n_heads % self.n_key_value_heads:
            raise ValueError(
                f"n_heads ({self.n_heads}) must be a multiple of n_key_value_heads ({self.n_key_value_heads})."
            )
        if self.positional_embedding_type == "rotary" and (self.rotary_dim % 2 or self.rotary_dim > self.d_head):
            raise ValueError(f"rotary_dim ({self.rotary_dim}) must be even and at most d_head ({self.d_head}).")
        if self.rope_scaling is not None and self.positional_embedding_type != "rotary":
            raise ValueError("rope_scaling is set but positional_embedding_type is not 'rotary'.")

    @property
    def n_key_value_groups(self) -> int:
        """How many query heads share one key/value head."""
        return self.n_heads // self.n_key_value_heads

    @property
    def d_vocab_out(self) -> int:
        return self.d_vocab

    def replace(self, **changes) -> HookedTransformerConfig:
        """A copy with some fields changed (validated again)."""
        return replace(self, **changes)
