"""HookedTransformer: a decoder-only transformer in which every activation passes through a HookPoint.

The forward pass is the residual-stream equation, block by block (see `components/block.py`). Token
helpers live in `tokenization.py`, loading in `hooked.loading`; the methods here only delegate.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Mapping
from typing import Literal

import torch
from jaxtyping import Float, Int
from torch import Tensor, nn

from hooked import placement, processing, tokenization
from hooked.analysis import linearize
from hooked.analysis.activation_cache import ActivationCache
from hooked.analysis.losses import lm_cross_entropy_loss
from hooked.components.block import Position, make_block
from hooked.components.embeddings import Embed, PosEmbed, Unembed
from hooked.components.kv_cache import KVCache
from hooked.components.masks import positions_and_masks
from hooked.components.norms import make_norm
from hooked.components.positional import Rotary
from hooked.config import HookedTransformerConfig
from hooked.dictionaries.methods import DictionaryMethods
from hooked.generation import generate, generate_stream
from hooked.hook_points import HookedRootModule, HookPoint
from hooked.loading import load_pretrained
from hooked.tl_methods import TransformerLensMethods
from hooked.tl_state_dict import accept_transformerlens_keys
from hooked.weights import WeightsMixin

ReturnType = Literal["logits", "loss", "both"] | None


class HookedTransformer(
    tokenization.TokenMethods, DictionaryMethods, TransformerLensMethods, WeightsMixin, HookedRootModule
):
    cache_class = ActivationCache  # what run_with_cache returns (HookedRootModule's is a plain CacheMapping)
    layer_devices: tuple[torch.device, ...] | None = None  # each block's device, then the output's (placement.py)

    def __init__(
        self,
        cfg: HookedTransformerConfig | Mapping,
        tokenizer=None,
        move_to_device: bool = True,
        default_padding_side: tokenization.PaddingSide = "right",
    ) -> None:
        """A randomly initialized model (use `from_pretrained` for trained weights).

        `cfg` may also be a dict of config fields, as TransformerLens allowed. Its TransformerLens fields
        take effect here: `tokenizer_name` loads that tokenizer when none is passed, `seed` makes the init
        reproducible, `init_weights=False` skips it (for `load_state_dict`, which also takes
        TransformerLens's state dicts: see `tl_state_dict.py`), `device` and `dtype` place the model
        (`move_to_device=False` leaves it on the CPU, as in TransformerLens).
        """
        super().__init__()
        if isinstance(cfg, Mapping):
            cfg = HookedTransformerConfig.from_dict(cfg)
        self.cfg = cfg
        if tokenizer is None and cfg.tokenizer_name is not None:
            tokenizer = tokenization.named_tokenizer(cfg.tokenizer_name)
        if not cfg.d_vocab:  # TransformerLens's d_vocab=-1: the tokenizer's vocabulary size
            if tokenizer is None:
                raise ValueError("cfg.d_vocab is not set: pass a tokenizer (its vocabulary gives it) or set d_vocab.")
            d_vocab = max(tokenizer.get_vocab().values()) + 1
            cfg = cfg.replace(d_vocab=d_vocab, d_vocab_out=cfg.d_vocab_out or d_vocab)
            self.cfg = cfg
        self.tokenizer = tokenizer
        self.default_padding_side = default_padding_side

        self.hook_tokens = HookPoint()  # [batch, pos]
        self.embed = Embed(cfg)
        self.hook_embed = HookPoint()  # [batch, pos, d_model]
        if cfg.positional_embedding_type in ("standard", "shortformer"):
            self.pos_embed = PosEmbed(cfg)
            self.hook_pos_embed = HookPoint()  # [batch, pos, d_model]
        elif cfg.positional_embedding_type == "rotary":
            self.rotary = Rotary(cfg)
            if cfg.rotary_base_local:
                self.rotary_local = Rotary(cfg, local=True)
        self.blocks = nn.ModuleList([make_block(cfg, layer) for layer in range(cfg.n_layers)])
        self.ln_final = make_norm(cfg.final_normalization_type, cfg.d_model, cfg.eps)
        self.unembed = Unembed(cfg)
        self.register_load_state_dict_pre_hook(accept_transformerlens_keys)
        if self.embed.W_E.device.type != "meta":  # a loader builds on meta, then sets every weight itself
            if cfg.device is not None or cfg.dtype is not None:
                self.to(device=cfg.device if move_to_device else None, dtype=cfg.dtype)
            if cfg.init_weights:
                self.init_weights()
            elif cfg.tie_word_embeddings:
                self.unembed.W_U = nn.Parameter(self.embed.W_E.data.T)
            self.cfg = cfg.replace(device=str(self.device), dtype=self.dtype)
        self.setup()

    def _apply(self, fn, recurse=True):
        # Every .to() / .half() / .cuda() ends here: cfg.device and cfg.dtype (TransformerLens code reads
        # them, e.g. torch.tensor(..., device=model.cfg.device)) follow the weights.
        result = super()._apply(fn, recurse)
        if self.layer_devices is not None:  # placed by a device map: follow where the blocks now are
            self.__dict__["layer_devices"] = placement.observed_devices(self)
        if self.embed.W_E.device.type != "meta":
            self.cfg = self.cfg.replace(device=str(self.device), dtype=self.dtype)
        return result

    def init_weights(self) -> None:
        """Normal(0, initializer_range) matrices, unit norm weights, zero biases; with `cfg.seed`, the
        matrices come from a generator seeded with it (the same seed gives the same weights)."""
        generator = None
        if self.cfg.seed is not None:
            generator = torch.Generator(self.embed.W_E.device).manual_seed(self.cfg.seed)
        with torch.no_grad():
            for name, param in self.named_parameters():
                parts = name.split(".")
                leaf = parts[-2] if parts[-1].isdigit() else parts[-1]  # a ParameterList entry: per-head norm weights
                if leaf == "w":
                    param.fill_(1.0)
                elif leaf.startswith("b"):
                    param.zero_()
                else:
                    param.normal_(0.0, self.cfg.initializer_range, generator=generator)
        if self.cfg.tie_word_embeddings:
            self.unembed.W_U = nn.Parameter(self.embed.W_E.data.T)

    # ---- the forward pass -------------------------------------------------------------------

    def forward(
        self,
        input: str | list[str] | Int[Tensor, "batch pos"] | Int[Tensor, " pos"] | Float[Tensor, "batch pos d_model"],
        return_type: ReturnType = "logits",
        loss_per_token: bool = False,
        prepend_bos: bool | None = None,
        padding_side: tokenization.PaddingSide | None = None,
        attention_mask: Int[Tensor, "batch pos"] | None = None,
        start_at_layer: int | None = None,
        stop_at_layer: int | None = None,
        past_kv_cache: KVCache | None = None,
        tokens: Int[Tensor, "batch pos"] | None = None,
        logits_to_keep: int = 0,
    ):
        """Logits [batch, pos, d_vocab], the loss, both, None, or (with `stop_at_layer`) the residual.

        `start_at_layer` takes the residual stream entering that block as `input` (pass `tokens` for a
        loss). `stop_at_layer` is exclusive and may be negative. A padded batch needs `attention_mask`
        (computed for you from strings, and, when the model pads on the left, from the pad tokens a row
        of ids starts with, as TransformerLens did); positions then count real tokens only. `past_kv_cache` (a
        `KVCache`) holds earlier tokens' keys and values: pass only the new tokens, and their mask.
        `logits_to_keep=n` runs the final norm and unembedding on the last n positions only (as
        transformers' argument of that name; generation uses 1); 0 keeps them all.
        """
        self.check_thread()
        # Inputs are checked here, cheaply (one min/max of the ids), so that a wrong one is named rather
        # than failing deep inside torch.
        if isinstance(input, (str, list)):
            tokenization.check_texts(input)
            input, attention_mask = tokenization.tokenize(self, input, prepend_bos, padding_side, truncate=False)
        elif start_at_layer is None:
            tokenization.check_tokens(input, self.cfg.d_vocab)
            if input.ndim == 1:
                input = input.unsqueeze(0)  # one sequence of ids (TransformerLens added the batch axis too)
            if attention_mask is None and past_kv_cache is None:
                attention_mask = tokenization.left_padding_mask(self, input)
        else:
            self._check_residual(input, start_at_layer)
        if past_kv_cache is not None:
            if start_at_layer or stop_at_layer is not None:
                raise ValueError("past_kv_cache runs the whole model; it cannot be combined with start/stop_at_layer.")
            past_kv_cache.check_fits(self.cfg, self.dtype, (self.layer_devices or (self.device,))[0])
        # A run that raises part-way must not leave some layers' keys appended to the cache.
        with past_kv_cache.rollback_on_error() if past_kv_cache is not None else contextlib.nullcontext():
            if start_at_layer is None:
                tokens = input
                residual, positions, masks = self._embed(tokens, attention_mask, past_kv_cache)
            else:
                residual = input
                positions, masks = positions_and_masks(self.cfg, attention_mask, *residual.shape[:2], residual.device)
            rotaries = self._rotaries(positions, residual.dtype)
            for layer in range(self.cfg.n_layers)[start_at_layer:stop_at_layer]:
                past_kv = past_kv_cache.layers[layer] if past_kv_cache is not None else None
                kind = self.cfg.layer_attn_type(layer)
                position, mask = rotaries[kind], masks[kind]
                if self.layer_devices is not None:  # placed by a device map: the block's inputs go to its device
                    residual, position, mask = placement.to_device(self.layer_devices[layer], residual, position, mask)
                residual = self.blocks[layer](residual, position, mask, past_kv)
        if stop_at_layer is not None:
            return residual
        if self.layer_devices is not None:
            residual = placement.move_tensor(residual, self.layer_devices[-1])
        if logits_to_keep:
            if return_type in ("loss", "both"):
                raise ValueError("logits_to_keep computes only some logits, so it cannot give a loss.")
            residual = residual[:, -logits_to_keep:]
        logits = self.unembed(self.ln_final(residual))
        if cap := self.cfg.output_logits_soft_cap:  # read at run time: code may set it (circuit-tracer sets 0)
            logits = torch.tanh(logits / cap) * cap
        if return_type == "logits":
            return logits
        if return_type is None:
            return None
        if tokens is None:
            raise ValueError("A loss needs the tokens: pass tokens=... together with start_at_layer.")
        loss = lm_cross_entropy_loss(logits, tokens, attention_mask, per_token=loss_per_token)
        if return_type == "loss":
            return loss
        if return_type == "both":
            return logits, loss
        raise ValueError(f"return_type must be 'logits', 'loss', 'both' or None, got {return_type!r}.")

    def _check_residual(self, residual, start_at_layer: int) -> None:
        is_residual = isinstance(residual, Tensor) and residual.is_floating_point() and residual.ndim == 3
        if not is_residual or residual.shape[-1] != self.cfg.d_model:
            got = f"{residual.dtype} {tuple(residual.shape)}" if isinstance(residual, Tensor) else type(residual)
            raise TypeError(
                f"start_at_layer={start_at_layer} takes the residual stream entering that block, a float tensor "
                f"[batch, pos, d_model={self.cfg.d_model}], got {got}. Token ids start at the embedding: drop "
                "start_at_layer (model(tokens, stop_at_layer=k) returns the residual stream entering block k)."
            )

    def _embed(self, tokens: Tensor, attention_mask: Tensor | None, cache: KVCache | None):
        if tokens.ndim == 1:
            tokens = tokens.unsqueeze(0)
        past = len(cache) if cache is not None else 0
        if past + tokens.shape[1] > self.cfg.n_ctx:
            raise ValueError(
                f"Input has {past + tokens.shape[1]} tokens (with {past} cached) but the model's context is "
                f"n_ctx={self.cfg.n_ctx}; truncate it (model.to_tokens(text, truncate=True)) or pass a shorter input."
            )
        tokens = self.hook_tokens(tokens.to(self.embed.W_E.device))
        positions, masks = positions_and_masks(self.cfg, attention_mask, *tokens.shape, tokens.device, cache)
        residual = self.hook_embed(self.embed(tokens))
        if self.cfg.positional_embedding_type == "standard":  # shortformer positions go to attention instead
            residual = residual + self.hook_pos_embed(self.pos_embed(positions))
        return residual, positions, masks

    def _rotaries(self, positions: Tensor, dtype: torch.dtype) -> dict[str, Position]:
        """What global and local layers get about positions (see `components/block.py`): the rotary cos/sin
        tables (the same unless local layers have their own base), or a shortformer model's position
        embedding (through hook_pos_embed), or None."""
        if self.cfg.positional_embedding_type == "shortformer":
            pos_embed = self.hook_pos_embed(self.pos_embed(positions))
            return {"global": pos_embed, "local": pos_embed}
        if not hasattr(self, "rotary"):
            return {"global": None, "local": None}
        rotary = self.rotary(positions, dtype)
        local = self.rotary_local(positions, dtype) if hasattr(self, "rotary_local") else rotary
        return {"global": rotary, "local": local}

    def frozen(self, patterns: bool = True, norm_scales: bool = True):
        """Context manager: attention patterns and norm scales detached, so gradients see the linear local
        model (analysis/linearize.py); the forward numbers are unchanged."""
        return linearize.frozen(self, patterns, norm_scales)

    # ---- settings -----------------------------------------------------------------------------

    def set_attn_implementation(self, implementation: Literal["sdpa", "eager"]) -> None:
        """'sdpa' (default) uses torch's fused attention when no hook needs the pattern; 'eager' never does."""
        if implementation not in ("sdpa", "eager"):
            raise ValueError(f"implementation must be 'sdpa' or 'eager', got {implementation!r}.")
        for block in self.blocks:
            block.attn.use_sdpa = implementation == "sdpa"

    def set_tokenizer(self, tokenizer, default_padding_side: tokenization.PaddingSide = "right") -> None:
        """Use `tokenizer`, padding on `default_padding_side` (written to the tokenizer's padding_side, as
        TransformerLens did, so that `model.tokenizer.padding_side = "left"` later has the same effect)."""
        self.tokenizer = tokenizer
        self.default_padding_side = default_padding_side

    @property
    def default_padding_side(self) -> tokenization.PaddingSide:
        """Where a batch of strings is padded: the tokenizer's padding_side where there is a tokenizer."""
        return getattr(self.tokenizer, "padding_side", None) or self._padding_side

    @default_padding_side.setter
    def default_padding_side(self, side: tokenization.PaddingSide) -> None:
        if side not in ("left", "right"):
            raise ValueError(f"padding side must be 'left' or 'right', got {side!r}.")
        self._padding_side = side
        if self.tokenizer is not None:
            self.tokenizer.padding_side = side

    @property
    def default_prepend_bos(self) -> bool:
        """Whether strings get a BOS token unless a call says otherwise (kept in cfg, as TransformerLens did)."""
        return self.cfg.default_prepend_bos

    @default_prepend_bos.setter
    def default_prepend_bos(self, value: bool) -> None:
        self.cfg.default_prepend_bos = bool(value)

    @property
    def device(self) -> torch.device:
        return self.embed.W_E.device

    @property
    def dtype(self) -> torch.dtype:
        return self.embed.W_E.dtype

    # ---- generation (see generation.py) ----------------------------------------------------

    def generate(
        self,
        input: str | list[str] | Int[Tensor, "batch pos"] = "",
        max_new_tokens: int = 10,
        stop_at_eos: bool = True,
        eos_token_id: int | list[int] | None = None,
        do_sample: bool = True,
        top_k: int | None = None,
        top_p: float | None = None,
        temperature: float = 1.0,
        freq_penalty: float = 0.0,
        use_past_kv_cache: bool = True,
        prepend_bos: bool | None = None,
        padding_side: tokenization.PaddingSide | None = None,
        return_type: Literal["input", "str", "tokens"] = "input",
        verbose: bool = True,
        seed: int | None = None,
        attention_mask: Int[Tensor, "batch pos"] | None = None,
        repetition_penalty: float = 1.0,
        return_cache: bool = False,
        names_filter=None,
    ):
        """Continue `input` (a string, strings, or token ids) by up to `max_new_tokens` tokens, with the hooks
        that are active applied at every step. `do_sample=False` is greedy; otherwise `temperature`, `top_k`,
        `top_p`, `freq_penalty` and `repetition_penalty` shape the sampling (see `hooked.sampling`), `seed` makes
        it reproducible. Rows stop at EOS (`stop_at_eos`, `eos_token_id`), and generation stops, with a warning,
        where the sequence fills n_ctx. Returns prompt + continuation as the input's type (`return_type`), and
        with `return_cache=True` also the activations of every returned position (see `hooked.generation`).
        On the key-value cache hooks see the prompt, then one position per step ([batch, 1, ...]); its absolute
        position is `pattern.shape[-1] - 1` at `hook_pattern` (the rule: `hooked.generation.generate`)."""
        return generate(
            self, input, max_new_tokens, stop_at_eos, eos_token_id, do_sample, top_k, top_p, temperature,
            freq_penalty, use_past_kv_cache, prepend_bos, padding_side, return_type, verbose, seed, attention_mask,
            repetition_penalty, return_cache, names_filter,
        )  # fmt: skip

    def generate_stream(self, input, max_new_tokens: int = 10, **kwargs):
        """Yield each step's new tokens; see `hooked.generation.generate_stream`."""
        return generate_stream(self, input, max_new_tokens, **kwargs)

    # ---- loading (see the loading package) ---------------------------------------------------

    @classmethod
    def from_pretrained(
        cls,
        name_or_path: str | os.PathLike | None = None,
        *,
        dtype: torch.dtype | str = torch.float32,
        device: torch.device | str | None = None,
        tokenizer=None,
        hf_model: nn.Module | None = None,
        fold_ln: bool = False,
        center_writing_weights: bool = False,
        center_unembed: bool = False,
        fold_value_biases: bool = False,
        refactor_factored_attn_matrices: bool = False,
        n_ctx: int | None = None,
        first_n_layers: int | None = None,
        revision: str | None = None,
        trust_remote_code: bool = False,
        default_prepend_bos: bool | None = None,
        default_padding_side: tokenization.PaddingSide = "right",
        progress: bool | None = None,
        device_map: placement.DeviceMap | None = None,
        max_memory: dict | None = None,
        **kwargs,
    ) -> HookedTransformer:
        """Load a checkpoint as this class: a hub id or TransformerLens short name, a local folder, a `.gguf`
        file, an embedded model's name ("smollm2-135m"), or a live transformers model (`hf_model=`).

        The weights are converted tensor by tensor; nothing is processed unless a flag asks (`fold_ln`,
        `center_writing_weights`, `center_unembed`, `fold_value_biases`, `refactor_factored_attn_matrices`),
        so the numbers are Hugging Face's. `dtype` (a torch dtype or its name), `device`; `n_ctx` shortens the
        context, `first_n_layers` keeps only the first layers; `revision` picks a hub revision;
        `trust_remote_code` lets transformers run a folder's custom tokenizer/config code. BOS is prepended by
        default unless the checkpoint's tokenizer says it adds none (`default_prepend_bos` overrides);
        `default_padding_side` is where batches of strings are padded. `progress`: a bar while the weights load
        (None: only in a notebook or on a terminal). TransformerLens's spellings are accepted in `kwargs`:
        `model_name=`, `torch_dtype=`, `move_to_device=`, `n_devices=1`. `device_map` ("auto" or a dict, with
        accelerate's `max_memory`) spreads the layers over devices after loading on the CPU
        (`hooked.placement`; untested on real multi-GPU machines)."""
        if device_map is not None and device is not None:
            raise ValueError("Pass device or device_map, not both (device_map places every layer itself).")
        model = load_pretrained(
            cls, name_or_path, dtype=dtype, device=device, tokenizer=tokenizer, hf_model=hf_model, fold_ln=fold_ln,
            center_writing_weights=center_writing_weights, center_unembed=center_unembed,
            fold_value_biases=fold_value_biases, refactor_factored_attn_matrices=refactor_factored_attn_matrices,
            n_ctx=n_ctx, first_n_layers=first_n_layers, revision=revision, trust_remote_code=trust_remote_code,
            default_prepend_bos=default_prepend_bos, default_padding_side=default_padding_side, progress=progress,
            **kwargs,
        )  # fmt: skip
        if device_map is not None:
            placement.place(model, device_map, max_memory)
        return model

    @classmethod
    def from_pretrained_no_processing(cls, name_or_path=None, **kwargs) -> HookedTransformer:
        """Same as from_pretrained: the defaults already apply no weight processing."""
        return cls.from_pretrained(name_or_path, **kwargs)

    # ---- weight processing (see processing.py) -----------------------------------------------

    def fold_layer_norm(self, fold_biases: bool = True, center_weights: bool = True) -> None:
        """Fold norm weights/biases into the weights reading them; logits unchanged (processing.py)."""
        processing.fold_layer_norm(self, fold_biases, center_weights)

    def center_writing_weights(self) -> None:
        """Center residual writers over d_model (LayerNorm models); logits unchanged (processing.py)."""
        processing.center_writing_weights(self)

    def center_unembed(self) -> None:
        """Center W_U/b_U over the vocab: logits shift per position, log-probs unchanged (processing.py)."""
        processing.center_unembed(self)

    def fold_value_biases(self) -> None:
        """Move b_V into b_O (patterns sum to 1); logits unchanged (processing.py)."""
        processing.fold_value_biases(self)

    def refactor_factored_attn_matrices(self) -> None:
        """Rebalance W_Q/W_K and W_V/W_O by SVD; QK, OV and logits unchanged (processing.py)."""
        processing.refactor_factored_attn_matrices(self)

    def process_weights_(
        self,
        fold_ln: bool = True,
        center_writing_weights: bool = True,
        center_unembed: bool = True,
        fold_value_biases: bool = True,
        refactor_factored_attn_matrices: bool = False,
    ) -> None:
        """Apply the requested steps in order, in place; log-probs unchanged (processing.py)."""
        processing.process_weights_(
            self, fold_ln, center_writing_weights, center_unembed, fold_value_biases, refactor_factored_attn_matrices
        )
