"""The architecture of a HookedTransformer, as a frozen dataclass of facts.

Axis names used in shape annotations throughout the package, defined once here:
batch, pos, d_model, n_heads, n_kv_heads, d_head, d_mlp, d_vocab, query_pos, key_pos.

Field names follow TransformerLens's `HookedTransformerConfig` where it had one, so notebooks that
read `model.cfg.n_layers` or `model.cfg.normalization_type` keep working. A config written for
TransformerLens (for example ARENA's attention-only toy model) is accepted as it is: its fields that
are not architecture facts (device, dtype, tokenizer name, seed, hook switches) are kept in a
separate section, excluded from equality. A value this library does not implement raises, naming the
field and the values it supports; none is ignored.
"""

from __future__ import annotations

import dataclasses
import functools
import math
import typing
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from typing import Any, Literal

import torch

ActFn = Literal["gelu_new", "gelu", "gelu_pytorch_tanh", "gelu_fast", "silu", "relu", "quick_gelu", "xielu"]
AttnType = Literal["global", "local"]
# Derived int fields, where TransformerLens wrote None (or -1) for "derive it"; here 0 means that.
_DERIVED_INTS = (
    "n_heads",
    "d_vocab",
    "d_head",
    "n_key_value_heads",
    "d_mlp",
    "rotary_dim",
    "num_experts",
    "experts_per_token",
)


@dataclass(frozen=True)
class RopeScaling:
    """Rescaling of rotary frequencies for long context: Hugging Face's `rope_type` "linear", "llama3",
    "yarn", "longrope" or "dynamic" (their formulas are in components/positional.py)."""

    kind: Literal["linear", "llama3", "yarn", "longrope", "dynamic"]
    factor: float
    low_freq_factor: float = 1.0  # llama3 only
    high_freq_factor: float = 4.0  # llama3 only
    # The context the model was pretrained with (llama3, yarn, longrope); for dynamic, the length up to which
    # the frequencies are unscaled (transformers' max_position_embeddings).
    original_max_position_embeddings: int = 8192
    attention_factor: float = 1.0  # yarn, longrope: cos and sin are multiplied by it
    beta_fast: float = 32.0  # yarn: rotations beyond which a frequency is kept (extrapolated)
    beta_slow: float = 1.0  # yarn: rotations below which a frequency is divided by factor (interpolated)
    truncate: bool = True  # yarn: the correction range is rounded outwards to whole dims
    short_factor: tuple[float, ...] = ()  # longrope: per-frequency divisors up to original_max_position_embeddings
    long_factor: tuple[float, ...] = ()  # longrope: per-frequency divisors beyond it

    def __post_init__(self) -> None:
        for name in ("short_factor", "long_factor"):  # lists from a saved config, made hashable
            object.__setattr__(self, name, tuple(float(x) for x in getattr(self, name)))
        kinds = typing.get_args(typing.get_type_hints(RopeScaling)["kind"])
        if self.kind not in kinds:
            raise ValueError(f"RopeScaling kind must be one of {', '.join(map(repr, kinds))}; got {self.kind!r}.")
        if self.kind == "longrope" and (not self.short_factor or len(self.short_factor) != len(self.long_factor)):
            raise ValueError("RopeScaling 'longrope' needs short_factor and long_factor, one per rotary frequency.")


# Fields TransformerLens code writes on a live model (`model.cfg.default_prepend_bos = False`, circuit-tracer's
# `model.cfg.output_logits_soft_cap = 0.0`): settings read at run time, not sizes a model was built with.
RUNTIME_FIELDS = frozenset(
    {
        "output_logits_soft_cap",
        "default_prepend_bos",
        "use_attn_result",
        "use_split_qkv_input",
        "use_hook_mlp_in",
        "use_attn_in",
        "use_hook_tokens",
        "model_name",
        "tokenizer_name",
        "seed",
        "device",
        "dtype",
    }
)


@dataclass(eq=True)
class HookedTransformerConfig:
    d_model: int  # width of the residual stream
    n_layers: int  # number of transformer blocks
    n_ctx: int  # longest sequence the model accepts
    n_heads: int = 0  # query heads per attention layer; 0 means d_model // d_head (d_head must then be given)
    d_vocab: int = 0  # vocabulary size (rows of W_E); 0 means the tokenizer's, filled in by HookedTransformer
    d_head: int = 0  # width of one head; 0 means d_model // n_heads
    n_key_value_heads: int = 0  # key/value heads (GQA/MQA); 0 means n_heads
    d_mlp: int = 0  # hidden width of the MLP (of each expert, with experts); 0 means 4 * d_model (none if attn_only)
    act_fn: ActFn = "gelu_new"
    gated_mlp: bool = False  # MLP is W_out(act(x W_gate) * (x W_in)) (SwiGLU-style)
    # "LN": LayerNorm with weight and bias; "LNPre": LayerNorm with neither (OLMo); "RMS": RMSNorm with a weight;
    # "RMSPre": RMSNorm without one; None: no norms at all (every norm is the identity, with no hook points).
    normalization_type: Literal["LN", "LNPre", "RMS", "RMSPre"] | None = "LN"
    eps: float = 1e-5  # added to the variance inside every norm
    # "standard": learned absolute positions added to the residual stream; "rotary": RoPE on q and k; "alibi":
    # per-head linear score biases (BLOOM); "shortformer": learned absolute positions (W_pos, hook_pos_embed) added
    # to every attention layer's query and key inputs (after ln1), not to its value input nor to the residual.
    positional_embedding_type: Literal["standard", "rotary", "alibi", "shortformer"] = "standard"
    rotary_dim: int = 0  # dims of each head that rotate (partial rotary); 0 means d_head
    rotary_base: float = 10000.0
    rope_scaling: RopeScaling | None = None
    rotary_adjacent_pairs: bool = False  # rotate pairs (2i, 2i+1) (GPT-J) instead of (i, i + rotary_dim/2)
    rotary_base_local: float = 0.0  # rotary base of "local" layers (Gemma 3), without rope_scaling; 0: rotary_base
    # Layers of a rotary model whose attention has no positional encoding at all (NoPE: SmolLM3, Cohere 2's global
    # layers): no rotation, and no hook_rot_q / hook_rot_k.
    nope_layers: tuple[int, ...] = ()
    attn_scale: float = 0.0  # attention scores are divided by this; 0 means sqrt(d_head)
    # Layer i's scores are also divided by i + 1 (GPT-2's scale_attn_by_inverse_layer_idx, Stanford CRFM's GPT-2s).
    scale_attn_by_inverse_layer_idx: bool = False
    attn_scores_soft_cap: float = 0.0  # scores become cap * tanh(scores / cap) before masking (Gemma 2); 0: none
    attn_qkv_bias: bool = True  # q, k, v projections have biases
    attn_out_bias: bool = True  # output projection has a bias
    clip_qkv: float = 0.0  # q, k and v projections are clamped to [-clip_qkv, clip_qkv] (OLMo); 0 means none
    # Queries and keys are normalized (with normalization_type's formula, no bias) before rotary: over d_head with
    # one weight for all heads ("shared": Qwen3, Gemma 3), over d_head with a weight per head ("per_head": StableLM 2),
    # or over all heads at once ("all_heads": OLMo 2). None: no query/key norm.
    qk_norm: Literal["shared", "per_head", "all_heads"] | None = None
    qk_norm_bias: bool = False  # the shared query/key LayerNorms also have a bias (Phi's qk_layernorm)
    mlp_bias: bool = True
    num_experts: int = 0  # mixture of experts: gated MLP experts per layer (Mixtral); 0 means a dense MLP
    experts_per_token: int = 0  # experts each token is routed to
    # The chosen experts' router probabilities are renormalized to sum to 1 (Mixtral, GPT-OSS, Granite MoE); False:
    # they stay the softmax over all experts (Hugging Face's norm_topk_prob=False: Qwen MoE, OLMoE).
    norm_topk_prob: bool = True
    router_bias: bool = False  # the router's logits have a bias, b_router (GPT-OSS)
    # Width of a shared expert every token goes through, its output scaled by sigmoid(x @ W_shared_gate)
    # (Qwen2-MoE); 0 means none.
    d_mlp_shared: int = 0
    # A gated MLP's gate is clamped to at most this, its linear branch to [-limit, limit] and offset by one:
    # post = act(min(pre, limit)) * (clamp(pre_linear) + 1) (GPT-OSS's experts). 0 means neither.
    gated_mlp_limit: float = 0.0
    # Each head has a learned logit `sinks` in its softmax's denominator, a key no query sees (GPT-OSS): pattern
    # rows sum to less than one.
    attn_sinks: bool = False
    parallel_attn_mlp: bool = False  # attention and MLP both read resid_pre; both outputs are added to it (GPT-J)
    # Where a block's norms sit: "pre" normalizes each sublayer's input (ln1, ln2); "pre_and_post" also each
    # sublayer's output before it is added to the residual (ln1_post, ln2_post: Gemma 2/3); "post" only the
    # outputs (OLMo 2); "post_residual" each residual sum, so the stream itself is renormalized (ln1_post,
    # ln2_post: the original Transformer's post-LN, OPT-350m), with no final norm (the last ln2_post is one).
    block_norms: Literal["pre", "pre_and_post", "post", "post_residual"] = "pre"
    embed_scale: float = 1.0  # token embeddings are multiplied by this (Gemma: sqrt(d_model))
    post_embedding_ln: bool = False  # the token embedding ends with a norm, embed.ln (BLOOM); hook_embed is after it
    unembed_bias: bool = False
    output_logits_soft_cap: float = 0.0  # logits become cap * tanh(logits / cap) (Gemma 2); 0 means none
    tie_word_embeddings: bool = False  # W_U is W_E transposed (one tensor in memory)
    sliding_window: int | None = None  # a "local" layer's query sees only the last `sliding_window` keys
    # Per layer, "global" (causal) or "local" (causal within sliding_window) attention. None: every layer is
    # local when sliding_window is set (Mistral), else global.
    attn_types: tuple[AttnType, ...] | None = None
    initializer_range: float = 0.02  # std of random init (random models only)
    original_architecture: str | None = None  # Hugging Face class this config came from, if any
    model_name: str = field(default="custom", compare=False)
    attn_only: bool = False  # blocks have no MLP: no ln2, mlp, hook_resid_mid, hook_mlp_in or hook_mlp_out
    # Causal (decoder) attention; TransformerLens's "bidirectional" (BERT) is not implemented and raises.
    attention_dir: Literal["causal", "bidirectional"] = "causal"
    final_rms: bool = False  # the final norm of an "LN" / "LNPre" model is an RMSNorm / RMSNormPre instead
    d_vocab_out: int = 0  # columns of W_U (logits per position); 0 means d_vocab

    # ---- TransformerLens's fields that are not architecture facts (excluded from ==) ----------------
    # They say how HookedTransformer(cfg) builds a random model; a model loaded by from_pretrained ignores them.
    seed: int | None = field(default=None, compare=False)  # seeds the random init (the global RNG is untouched)
    init_weights: bool = field(default=True, compare=False)  # False: leave weights uninitialized (load them next)
    tokenizer_name: str | None = field(default=None, compare=False)  # HookedTransformer(cfg) loads this tokenizer
    default_prepend_bos: bool = field(default=True, compare=False)  # the model's default for prepend_bos
    device: str | torch.device | None = field(default=None, compare=False)  # a random model is moved there
    dtype: torch.dtype | None = field(default=None, compare=False)  # a random model is cast to it; None: float32
    # Switches of hook points that TransformerLens computed only on request: accepted, no effect (every hook
    # point here always works; see API.md).
    use_attn_result: bool = field(default=False, compare=False)
    use_split_qkv_input: bool = field(default=False, compare=False)
    use_hook_mlp_in: bool = field(default=False, compare=False)
    use_attn_in: bool = field(default=False, compare=False)
    use_hook_tokens: bool = field(default=False, compare=False)

    def __post_init__(self) -> None:
        for name in _DERIVED_INTS:
            if getattr(self, name) in (None, -1):
                object.__setattr__(self, name, 0)
        if self.n_heads == 0:
            if not self.d_head or self.d_model % self.d_head:
                raise ValueError(
                    f"n_heads is not given, so it is d_model // d_head, which needs d_head to divide d_model "
                    f"({self.d_model}); got d_head={self.d_head}. Give n_heads or a d_head that divides d_model."
                )
            object.__setattr__(self, "n_heads", self.d_model // self.d_head)
        if self.d_vocab_out in (None, -1):
            object.__setattr__(self, "d_vocab_out", 0)
        derived = {
            "d_head": self.d_model // self.n_heads if self.n_heads else 0,
            "n_key_value_heads": self.n_heads,
            "d_mlp": 0 if self.attn_only else 4 * self.d_model,
            "d_vocab_out": self.d_vocab,
        }
        for name, value in derived.items():
            if getattr(self, name) == 0:
                object.__setattr__(self, name, value)
        if isinstance(self.dtype, str):  # "float32", "torch.bfloat16" (as a saved config holds it)
            object.__setattr__(self, "dtype", getattr(torch, self.dtype.removeprefix("torch."), self.dtype))
        if self.rotary_dim == 0 and self.positional_embedding_type == "rotary":
            object.__setattr__(self, "rotary_dim", self.d_head)
        if self.attn_scale == 0.0:
            object.__setattr__(self, "attn_scale", math.sqrt(self.d_head))
        if isinstance(self.attn_types, list):  # same values, made hashable like the rest of the config
            object.__setattr__(self, "attn_types", tuple(self.attn_types))
        if not isinstance(self.nope_layers, tuple):
            object.__setattr__(self, "nope_layers", tuple(self.nope_layers or ()))
        self._validate()
        object.__setattr__(self, "_built", True)

    def __setattr__(self, name: str, value: Any) -> None:
        # Architecture facts are fixed once the config exists (the model's weights were shaped by them);
        # the run-time settings in RUNTIME_FIELDS can be changed in place, as TransformerLens code does.
        if not self.__dict__.get("_built") or name in RUNTIME_FIELDS:
            if name == "output_logits_soft_cap" and value < 0:
                raise ValueError(f"output_logits_soft_cap must be positive (or 0 for none), got {value}.")
            object.__setattr__(self, name, value)
            return
        raise dataclasses.FrozenInstanceError(
            f"cfg.{name} is an architecture fact of a built model and cannot be changed in place; build a new "
            f"model from cfg.replace({name}=...). Settable at run time: {', '.join(sorted(RUNTIME_FIELDS))}."
        )

    def __delattr__(self, name: str) -> None:
        raise dataclasses.FrozenInstanceError(f"cfg.{name} cannot be deleted.")

    def __hash__(self) -> int:
        return hash(
            tuple(getattr(self, f.name) for f in dataclasses.fields(self) if f.compare and f.name not in RUNTIME_FIELDS)
        )

    def _validate(self) -> None:
        for name, choices in _literal_fields().items():
            if getattr(self, name) not in choices:
                raise ValueError(
                    f"HookedTransformerConfig field {name} must be one of {', '.join(map(repr, choices))}; "
                    f"got {getattr(self, name)!r}."
                )
        if self.attention_dir != "causal":
            raise NotImplementedError(
                f"attention_dir={self.attention_dir!r} is not implemented; the only supported value is 'causal'."
            )
        sizes = ("d_model", "n_layers", "n_heads", "n_ctx", "d_head", "n_key_value_heads")
        # d_vocab 0: not known yet, until a tokenizer says (HookedTransformer(cfg, tokenizer) fills it in).
        sizes += ("d_vocab", "d_vocab_out") if self.d_vocab else ()
        for name in sizes + (() if self.attn_only else ("d_mlp",)):
            if getattr(self, name) <= 0:
                raise ValueError(f"Config field {name} must be positive, got {getattr(self, name)}.")
        if self.dtype is not None and not isinstance(self.dtype, torch.dtype):
            raise ValueError(f"Config field dtype must be a torch.dtype (or its name), got {self.dtype!r}.")
        if self.tie_word_embeddings and self.d_vocab_out != self.d_vocab:
            raise ValueError(
                f"tie_word_embeddings needs d_vocab_out == d_vocab, got {self.d_vocab_out} and {self.d_vocab}."
            )
        if self.attn_only and (self.parallel_attn_mlp or self.block_norms != "pre"):
            raise ValueError(
                "attn_only blocks are pre-norm with no MLP: it needs parallel_attn_mlp=False and "
                f"block_norms='pre', got {self.parallel_attn_mlp} and {self.block_norms!r}."
            )
        if self.n_heads % self.n_key_value_heads:
            raise ValueError(
                f"n_heads ({self.n_heads}) must be a multiple of n_key_value_heads ({self.n_key_value_heads})."
            )
        if self.positional_embedding_type == "rotary" and (self.rotary_dim % 2 or self.rotary_dim > self.d_head):
            raise ValueError(f"rotary_dim ({self.rotary_dim}) must be even and at most d_head ({self.d_head}).")
        if self.rope_scaling is not None and self.positional_embedding_type != "rotary":
            raise ValueError("rope_scaling is set but positional_embedding_type is not 'rotary'.")
        if self.rope_scaling is not None and self.rope_scaling.kind == "longrope":
            if len(self.rope_scaling.short_factor) != self.rotary_dim // 2:
                raise ValueError(
                    f"longrope's short_factor and long_factor need one entry per rotary frequency (rotary_dim / 2 = "
                    f"{self.rotary_dim // 2}), got {len(self.rope_scaling.short_factor)}."
                )
        if (self.rotary_adjacent_pairs or self.rotary_base_local) and self.positional_embedding_type != "rotary":
            raise ValueError("rotary_adjacent_pairs / rotary_base_local need positional_embedding_type='rotary'.")
        if self.attn_types is not None:
            if len(self.attn_types) != self.n_layers or not set(self.attn_types) <= {"global", "local"}:
                raise ValueError(
                    f"attn_types must give 'global' or 'local' for each of the {self.n_layers} layers, "
                    f"got {self.attn_types!r}."
                )
            if "local" in self.attn_types and self.sliding_window is None:
                raise ValueError("attn_types has 'local' layers but sliding_window is not set.")
        if self.nope_layers and (
            self.positional_embedding_type != "rotary" or not set(self.nope_layers) <= set(range(self.n_layers))
        ):
            raise ValueError(
                f"nope_layers lists layers of a rotary model that do not rotate; got {self.nope_layers!r} for a "
                f"{self.positional_embedding_type!r} model of {self.n_layers} layers."
            )
        if self.sliding_window is not None and self.sliding_window <= 0:
            raise ValueError(f"sliding_window must be positive, got {self.sliding_window}.")
        for name in ("attn_scores_soft_cap", "output_logits_soft_cap", "clip_qkv"):
            if getattr(self, name) < 0:
                raise ValueError(f"{name} must be positive (or 0 for none), got {getattr(self, name)}.")
        if (self.num_experts > 0) != (self.experts_per_token > 0) or self.experts_per_token > self.num_experts:
            raise ValueError(
                f"A mixture of experts needs 0 < experts_per_token <= num_experts, got experts_per_token="
                f"{self.experts_per_token} and num_experts={self.num_experts} (both 0 for a dense MLP)."
            )
        if self.act_fn == "xielu" and self.gated_mlp:
            raise ValueError("act_fn='xielu' (whose parameters are the MLP's own) needs a plain MLP: gated_mlp=False.")
        if self.num_experts and not self.gated_mlp:
            raise ValueError("Experts are gated MLPs: num_experts > 0 needs gated_mlp=True.")
        if (self.d_mlp_shared or self.router_bias) and not self.num_experts:
            raise ValueError("d_mlp_shared and router_bias belong to a mixture of experts: they need num_experts > 0.")
        if self.d_mlp_shared < 0 or self.gated_mlp_limit < 0:
            raise ValueError(
                f"d_mlp_shared and gated_mlp_limit must be positive (or 0 for none), got {self.d_mlp_shared} and "
                f"{self.gated_mlp_limit}."
            )
        if self.gated_mlp_limit and not self.gated_mlp:
            raise ValueError("gated_mlp_limit clamps a gated MLP's branches: it needs gated_mlp=True.")
        if self.qk_norm is not None and self.normalization_type not in ("LN", "RMS"):
            raise ValueError(
                "qk_norm needs a norm with a weight: normalization_type 'LN' or 'RMS', "
                f"got {self.normalization_type!r}."
            )
        if self.qk_norm_bias and (self.qk_norm != "shared" or self.normalization_type != "LN"):
            raise ValueError(
                "qk_norm_bias is implemented for shared LayerNorms on queries and keys: it needs qk_norm='shared' "
                f"and normalization_type='LN', got {self.qk_norm!r} and {self.normalization_type!r}."
            )
        if self.parallel_attn_mlp and self.block_norms != "pre":
            raise ValueError(f"parallel_attn_mlp needs block_norms='pre', got {self.block_norms!r}.")

    def layer_attn_type(self, layer: int) -> AttnType:
        """Whether `layer` attends globally or within the sliding window."""
        if self.attn_types is not None:
            return self.attn_types[layer]
        return "local" if self.sliding_window is not None else "global"

    def layer_rotates(self, layer: int) -> bool:
        """Whether `layer`'s attention applies rotary positions (a rotary model's layer not in nope_layers)."""
        return self.positional_embedding_type == "rotary" and layer not in self.nope_layers

    def layer_attn_scale(self, layer: int) -> float:
        """What `layer`'s attention scores are divided by."""
        return self.attn_scale * (layer + 1) if self.scale_attn_by_inverse_layer_idx else self.attn_scale

    def kv_head(self, head: int) -> int:
        """The key/value head query head `head` reads (grouped-query attention: heads share one per group)."""
        if not 0 <= head < self.n_heads:
            raise IndexError(f"query head {head} does not exist: this model has {self.n_heads} heads per layer.")
        return head // self.n_key_value_groups

    @property
    def n_key_value_groups(self) -> int:
        """How many query heads share one key/value head."""
        return self.n_heads // self.n_key_value_heads

    @property
    def final_normalization_type(self) -> str | None:
        """The final norm's type: normalization_type, or with final_rms its RMS form (TransformerLens's rule)."""
        if self.block_norms == "post_residual":  # the last block's ln2_post already normalized the stream
            return None
        if self.final_rms and self.normalization_type in ("LN", "LNPre"):
            return "RMS" if self.normalization_type == "LN" else "RMSPre"
        return self.normalization_type

    @property
    def n_params(self) -> int:
        """TransformerLens's count of "hidden weight" parameters: W_Q, W_K, W_V, W_O and the MLP weights.

        Its formula exactly (embeddings, biases and norms left out, as in the scaling-laws papers): per
        layer 4 * d_model * d_head * n_heads (with n_heads, not n_key_value_heads, for K and V), plus,
        unless attn_only, d_model * d_mlp * (2, or 3 when gated); with experts, each expert's MLP plus
        d_model for its router weights.
        """
        n_params = self.n_layers * self.d_model * self.d_head * self.n_heads * 4
        if not self.attn_only:
            mlp = self.d_model * self.d_mlp * (3 if self.gated_mlp else 2)
            if self.num_experts:
                mlp = (mlp + self.d_model) * self.num_experts
            n_params += self.n_layers * mlp
        return n_params

    def replace(self, **changes) -> HookedTransformerConfig:
        """A copy with some fields changed (validated again)."""
        return replace(self, **changes)

    @classmethod
    def from_dict(cls, config: Mapping[str, Any]) -> HookedTransformerConfig:
        """A config from a dict of its fields (as TransformerLens's `from_dict`, or `to_dict`'s output).

        `n_params` may be present (TransformerLens's dicts have it): it is derived, so it is checked, not
        stored. Any other key that is not a field raises, naming it.
        """
        values = dict(config)
        n_params = values.pop("n_params", None)
        unknown = sorted(set(values) - {f.name for f in dataclasses.fields(cls)})
        if unknown:
            raise TypeError(
                f"HookedTransformerConfig has no field {', '.join(map(repr, unknown))}; see hooked/config.py "
                "for the fields it has."
            )
        if isinstance(values.get("rope_scaling"), Mapping):
            values["rope_scaling"] = RopeScaling(**values["rope_scaling"])
        cfg = cls(**values)
        if n_params is not None and n_params != cfg.n_params:
            raise ValueError(f"n_params={n_params} does not match the {cfg.n_params} this config describes.")
        return cfg

    def to_dict(self) -> dict[str, Any]:
        """Every field, and n_params (as TransformerLens's `to_dict`); `from_dict` reads it back."""
        values = {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}
        if self.rope_scaling is not None:
            values["rope_scaling"] = dataclasses.asdict(self.rope_scaling)
        return {**values, "n_params": self.n_params}


@functools.cache
def _literal_fields() -> dict[str, tuple]:
    """The allowed values of every field typed as a Literal (or a Literal or None)."""
    choices = {}
    for name, hint in typing.get_type_hints(HookedTransformerConfig).items():
        options = [hint] if typing.get_origin(hint) is Literal else list(typing.get_args(hint))
        if options and all(typing.get_origin(o) is Literal or o is type(None) for o in options):
            choices[name] = tuple(v for o in options for v in (typing.get_args(o) if o is not type(None) else (None,)))
    return choices
