"""Stacked weights: every block's parameters as one tensor with a leading layer axis.

TransformerLens users read `model.W_Q[layer, head]` and friends; here they are properties that stack
the per-block parameters on each access (a fresh tensor that stays in the autograd graph, not a
view: editing it does not edit the model). Layout is TransformerLens's, `x @ W`:

- W_Q, W_K, W_V [n_layers, n_heads, d_model, d_head]; W_O [n_layers, n_heads, d_head, d_model]
- b_Q, b_K, b_V [n_layers, n_heads, d_head]; b_O [n_layers, d_model]
- W_in, W_gate [n_layers, d_model, d_mlp]; W_out [n_layers, d_mlp, d_model]
- b_in [n_layers, d_mlp]; b_out [n_layers, d_model]
- QK, OV: FactoredMatrix [n_layers, n_heads, d_model, d_model]

Grouped-query models store n_kv_heads key/value heads; on access they are expanded to n_heads with
`repeat_interleave` (kv head g serves query heads g * groups ... (g + 1) * groups - 1), exactly the
expansion attention itself performs, so `W_K[l, h]` is the key weight query head h really uses.
A bias the model does not have reads as zeros, so formulas need no special case.
"""

from __future__ import annotations

import torch
from jaxtyping import Float
from torch import Tensor, nn

from hooked.config import HookedTransformerConfig
from hooked.factored_matrix import FactoredMatrix

TokensLike = str | int | list | Tensor


def expand_kv(stacked: Tensor, n_key_value_groups: int) -> Tensor:
    """Repeat each kv head of a stacked [n_layers, n_kv_heads, ...] tensor so it is indexed by query head."""
    return stacked.repeat_interleave(n_key_value_groups, dim=1)


class WeightsMixin:
    """Stacked-weight properties and weight helpers for HookedTransformer (needs cfg, blocks, embed, unembed)."""

    cfg: HookedTransformerConfig
    blocks: nn.ModuleList
    embed: nn.Module
    unembed: nn.Module

    def _stack(self, module: str, name: str, zeros_shape: tuple[int, ...]) -> Tensor:
        """Per-block `blocks[i].{module}.{name}` stacked over layers; an absent (None) one is zeros."""
        like = self.embed.W_E
        parts = []
        for block in self.blocks:
            param = getattr(getattr(block, module), name)
            parts.append(param if param is not None else torch.zeros(zeros_shape, dtype=like.dtype, device=like.device))
        return torch.stack(parts, dim=0)

    # ---- embeddings ----------------------------------------------------------------------------

    @property
    def W_E(self) -> Float[Tensor, "d_vocab d_model"]:
        return self.embed.W_E

    @property
    def W_pos(self) -> Float[Tensor, "n_ctx d_model"]:
        """Learned absolute positions; rotary models have none (AttributeError)."""
        return self.pos_embed.W_pos

    @property
    def W_E_pos(self) -> Float[Tensor, "d_vocab_plus_n_ctx d_model"]:
        """W_E and W_pos stacked, [d_vocab + n_ctx, d_model] (TransformerLens's; learned positions only)."""
        return torch.cat([self.W_E, self.W_pos], dim=0)

    @property
    def W_U(self) -> Float[Tensor, "d_model d_vocab_out"]:
        return self.unembed.W_U

    @property
    def b_U(self) -> Float[Tensor, " d_vocab_out"]:
        b_U = self.unembed.b_U
        return b_U if b_U is not None else self.W_U.new_zeros(self.cfg.d_vocab_out)

    # ---- attention -------------------------------------------------------------------------------

    @property
    def W_Q(self) -> Float[Tensor, "n_layers n_heads d_model d_head"]:
        return self._stack("attn", "W_Q", ())

    @property
    def W_K(self) -> Float[Tensor, "n_layers n_heads d_model d_head"]:
        return expand_kv(self._stack("attn", "W_K", ()), self.cfg.n_key_value_groups)

    @property
    def W_V(self) -> Float[Tensor, "n_layers n_heads d_model d_head"]:
        return expand_kv(self._stack("attn", "W_V", ()), self.cfg.n_key_value_groups)

    @property
    def W_O(self) -> Float[Tensor, "n_layers n_heads d_head d_model"]:
        return self._stack("attn", "W_O", ())

    @property
    def b_Q(self) -> Float[Tensor, "n_layers n_heads d_head"]:
        return self._stack("attn", "b_Q", (self.cfg.n_heads, self.cfg.d_head))

    @property
    def b_K(self) -> Float[Tensor, "n_layers n_heads d_head"]:
        b_K = self._stack("attn", "b_K", (self.cfg.n_key_value_heads, self.cfg.d_head))
        return expand_kv(b_K, self.cfg.n_key_value_groups)

    @property
    def b_V(self) -> Float[Tensor, "n_layers n_heads d_head"]:
        b_V = self._stack("attn", "b_V", (self.cfg.n_key_value_heads, self.cfg.d_head))
        return expand_kv(b_V, self.cfg.n_key_value_groups)

    @property
    def b_O(self) -> Float[Tensor, "n_layers d_model"]:
        return self._stack("attn", "b_O", (self.cfg.d_model,))

    @property
    def QK(self) -> FactoredMatrix:
        """W_Q @ W_K^T per head, [n_layers, n_heads, d_model, d_model]: query-side resid x key-side resid."""
        return FactoredMatrix(self.W_Q, self.W_K.mT)

    @property
    def OV(self) -> FactoredMatrix:
        """W_V @ W_O per head, [n_layers, n_heads, d_model, d_model]: what a head writes for what it reads."""
        return FactoredMatrix(self.W_V, self.W_O)

    # ---- MLP -----------------------------------------------------------------------------------

    @property
    def W_in(self) -> Float[Tensor, "n_layers d_model d_mlp"]:
        return self._stack("mlp", "W_in", ())

    @property
    def W_gate(self) -> Float[Tensor, "n_layers d_model d_mlp"] | None:
        """The gate branch of a gated MLP; None for a standard MLP (as TransformerLens returned)."""
        return self._stack("mlp", "W_gate", ()) if self.cfg.gated_mlp else None

    @property
    def W_out(self) -> Float[Tensor, "n_layers d_mlp d_model"]:
        return self._stack("mlp", "W_out", ())

    @property
    def b_in(self) -> Float[Tensor, "n_layers d_mlp"]:
        return self._stack("mlp", "b_in", (self.cfg.d_mlp,))

    @property
    def b_out(self) -> Float[Tensor, "n_layers d_model"]:
        return self._stack("mlp", "b_out", (self.cfg.d_model,))

    # ---- helpers -------------------------------------------------------------------------------

    def accumulated_bias(
        self, layer: int, mlp_input: bool = False, include_mlp_biases: bool = True
    ) -> Float[Tensor, " d_model"]:
        """The sum of the biases written to the residual stream before `layer`'s attention reads it.

        That is b_O (and, with `include_mlp_biases`, b_out) of every layer < `layer`; with `mlp_input`,
        also b_O of `layer` itself (the stream its MLP reads; not in a parallel block, whose MLP reads
        resid_pre). `layer` runs 0..n_layers (n_layers: the final residual, after every block). In
        blocks with post-norms (Gemma 2/3, OLMo 2) a bias reaches the residual through the norm, as a
        different vector at each position: this raw sum is not what they write (the "bias" entry of
        `ActivationCache.get_full_resid_decomposition` is). A mixture of experts whose experts have no biases
        writes no MLP bias; one whose experts have biases (GPT-OSS) is refused with `include_mlp_biases`. In
        post-LN blocks (OPT-350m), which renormalize the stream itself, no sum of biases is in the stream.
        """
        n_layers = self.cfg.n_layers
        if not 0 <= layer <= n_layers:
            raise ValueError(f"layer must be in 0..{n_layers} (n_layers means after every block), got {layer}.")
        if mlp_input and layer == n_layers:
            raise ValueError(f"mlp_input=True needs a block's MLP: layer must be below n_layers={n_layers}.")
        total = self.b_O[:layer].sum(0)
        if include_mlp_biases and self.cfg.num_experts and self.cfg.mlp_bias:
            raise ValueError(
                "This model's experts have output biases, which reach the residual weighted by the router, a "
                "different vector at each token: there is no per-layer MLP bias to add. Use "
                "include_mlp_biases=False, or the cache's stack_expert_results."
            )
        if include_mlp_biases and not self.cfg.attn_only and not self.cfg.num_experts:  # experts without biases
            total = total + self.b_out[:layer].sum(0)
        if mlp_input and not self.cfg.parallel_attn_mlp:
            total = total + self.b_O[layer]
        return total

    def all_head_labels(self) -> list[str]:
        """["L0H0", "L0H1", ..., f"L{n_layers-1}H{n_heads-1}"], layer-major (the order of stacked heads)."""
        return [f"L{layer}H{head}" for layer in range(self.cfg.n_layers) for head in range(self.cfg.n_heads)]

    def tokens_to_residual_directions(self, tokens: TokensLike) -> Float[Tensor, "... d_model"]:
        """The direction each token's logit reads from the final norm's normalized output: the unembedding
        column W_U[:, token] times ln_final's weight, shaped like the tokens plus d_model.

        The weight is included so that the same vectors come back whether or not `fold_ln` moved it into
        W_U (TransformerLens models were folded by default, so its users dotted these with
        `apply_ln_to_stack`'s output): `cache.apply_ln_to_stack(stack) @ direction` is each component's
        logit, up to the constant from the norm's bias and b_U. A str (one token), an int or a 0-d tensor
        gives [d_model]; a list (of ints or single-token strs) or a tensor of ids gives [*tokens.shape, d_model].
        """
        if isinstance(tokens, str):
            tokens = self.to_single_token(tokens)
        elif isinstance(tokens, list):
            tokens = [self.to_single_token(t) if isinstance(t, str) else int(t) for t in tokens]
        ids = torch.as_tensor(tokens, device=self.W_U.device)
        if ids.is_floating_point():
            raise TypeError(f"Token ids must be integers, got a {ids.dtype} tensor.")
        directions = self.W_U.T[ids]
        w = getattr(self.ln_final, "w", None)  # None: no final norm, or one without a weight
        return directions * w if w is not None else directions
