"""Sparse dictionaries: SAEs and transcoders, each of their activations passing through a HookPoint.

A sparse autoencoder (Bricken et al. 2023, "Towards Monosemanticity"; SAELens's `StandardSAE`) reads an
activation x [..., d_in] at its hook point and writes back a reconstruction:

    acts_pre  = (x - b_dec) @ W_enc + b_enc     (b_dec is subtracted only with apply_b_dec_to_input)
    acts_post = act(acts_pre)                   [..., d_sae], the feature activations
    recons    = acts_post @ W_dec + b_dec       [..., d_out]  (+ x @ W_skip.T for a skip transcoder)

`act` is what the classes differ in: ReLU (`SAE`), JumpReLU (`JumpReLUSAE`, Rajamanoharan et al. 2024),
TopK (`TopKSAE`, Gao et al. 2024) and BatchTopK (`BatchTopKSAE`, Bussmann et al. 2024). A transcoder
(Dunefsky et al. 2024) is any of them given `hook_name_out`: it reads one hook (an MLP's input) and
writes another (its output), `d_out` wide. Weights use SAELens's layout, W_enc [d_in, d_sae] and
W_dec [d_sae, d_out], so its files load as they are (`hooked.dictionaries.load_sae`).

Each is a HookedRootModule: `sae.run_with_cache(x)` works on its own, and spliced into a model
(`model.add_sae(sae)`) its hook points join the model's under `<hook>.hook_sae_*`.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import ClassVar

import torch
from jaxtyping import Float
from torch import Tensor, nn

from hooked.hook_points import HookedRootModule, HookPoint


class SAE(HookedRootModule):
    """A ReLU sparse autoencoder (SAELens's architecture "standard"); a transcoder with `hook_name_out`."""

    architecture: ClassVar[str] = "standard"

    def __init__(
        self,
        d_in: int,
        d_sae: int,
        hook_name: str,
        *,
        hook_name_out: str | None = None,
        d_out: int | None = None,
        apply_b_dec_to_input: bool | None = None,
        skip: bool = False,
        dtype: torch.dtype = torch.float32,
        device: torch.device | str | None = None,
    ) -> None:
        """Random weights as SAELens initializes them (kaiming-uniform W_dec, W_enc its transpose where the
        shapes allow); load trained ones with `from_state_dict` or `load_sae`. `apply_b_dec_to_input`
        defaults to True for an SAE and False for a transcoder, whose b_dec lives in the output space."""
        super().__init__()
        self.d_in, self.d_sae, self.d_out = d_in, d_sae, d_out or d_in
        self.hook_name = hook_name
        self.hook_name_out = hook_name_out or hook_name
        if apply_b_dec_to_input is None:
            apply_b_dec_to_input = self.hook_name_out == hook_name
        if apply_b_dec_to_input and self.d_out != d_in:
            raise ValueError(
                f"apply_b_dec_to_input subtracts b_dec [d_out={self.d_out}] from the input [d_in={d_in}]; "
                "a transcoder whose output width differs must use apply_b_dec_to_input=False."
            )
        self.apply_b_dec_to_input = apply_b_dec_to_input
        factory = {"dtype": dtype, "device": device}
        W_dec = torch.empty(d_sae, self.d_out, **factory)
        nn.init.kaiming_uniform_(W_dec)
        W_enc = W_dec.T.clone() if self.d_out == d_in else nn.init.kaiming_uniform_(torch.empty(d_in, d_sae, **factory))
        self.W_enc = nn.Parameter(W_enc.contiguous())  # [d_in, d_sae]
        self.b_enc = nn.Parameter(torch.zeros(d_sae, **factory))
        self.W_dec = nn.Parameter(W_dec)  # [d_sae, d_out]
        self.b_dec = nn.Parameter(torch.zeros(self.d_out, **factory))
        self.W_skip = nn.Parameter(torch.zeros(self.d_out, d_in, **factory)) if skip else None  # [d_out, d_in]
        self.hook_sae_input = HookPoint()  # [..., d_in]
        self.hook_sae_acts_pre = HookPoint()  # [..., d_sae]
        self.hook_sae_acts_post = HookPoint()  # [..., d_sae]
        self.hook_sae_recons = HookPoint()  # [..., d_out]
        self.hook_sae_error = HookPoint()  # the activation's shape; only when spliced with the error term
        self.hook_sae_output = HookPoint()  # [..., d_out] alone; the activation's shape when spliced
        self.spliced_at: str | None = None  # the model hook whose place it takes, while spliced
        self.setup()

    @property
    def is_transcoder(self) -> bool:
        return self.hook_name_out != self.hook_name

    @property
    def dtype(self) -> torch.dtype:
        return self.W_enc.dtype

    @property
    def device(self) -> torch.device:
        return self.W_enc.device

    def encode(self, x: Float[Tensor, "... d_in"]) -> Float[Tensor, "... d_sae"]:
        """The feature activations of x (cast to the SAE's dtype, as SAELens does)."""
        x = self.hook_sae_input(x.to(self.dtype))
        acts_pre = self.hook_sae_acts_pre(self.pre_activation(x))
        return self.hook_sae_acts_post(self.activation(acts_pre))

    def pre_activation(self, x: Float[Tensor, "... d_in"]) -> Float[Tensor, "... d_sae"]:
        if self.apply_b_dec_to_input:
            x = x - self.b_dec
        return x @ self.W_enc + self.b_enc

    def activation(self, acts_pre: Float[Tensor, "... d_sae"]) -> Float[Tensor, "... d_sae"]:
        return torch.relu(acts_pre)

    def decode(self, acts: Float[Tensor, "... d_sae"]) -> Float[Tensor, "... d_out"]:
        """The reconstruction from feature activations (without a skip transcoder's skip term)."""
        return self.hook_sae_recons(self.decoder(acts))

    def decoder(self, acts: Float[Tensor, "... d_sae"]) -> Float[Tensor, "... d_out"]:
        return acts @ self.W_dec + self.b_dec

    def write_directions(self) -> Float[Tensor, "d_sae d_out"]:
        """What one unit of each feature's activation adds to the reconstruction (W_dec's rows here)."""
        return self.W_dec

    def skip_term(self, x: Float[Tensor, "... d_in"]) -> Float[Tensor, "... d_out"] | None:
        """A skip transcoder's linear path x @ W_skip.T, added to the reconstruction; None without one."""
        return None if self.W_skip is None else x.to(self.dtype) @ self.W_skip.T

    def reconstruct(self, x: Float[Tensor, "... d_in"], acts: Tensor) -> Float[Tensor, "... d_out"]:
        """decode(acts), plus the skip term of x."""
        recons = self.decode(acts)
        skip = self.skip_term(x)
        return recons if skip is None else recons + skip

    def reconstruct_without_hooks(self, x: Float[Tensor, "... d_in"]) -> Float[Tensor, "... d_out"]:
        """What forward computes, with no hook point on the way (so no hook can edit it)."""
        x = x.to(self.dtype)
        recons = self.decoder(self.activation(self.pre_activation(x)))
        skip = self.skip_term(x)
        return recons if skip is None else recons + skip

    def forward(self, x: Float[Tensor, "... d_in"]) -> Float[Tensor, "... d_out"]:
        return self.hook_sae_output(self.reconstruct(x, self.encode(x)))

    # ---- from weights ---------------------------------------------------------------------------

    @classmethod
    def from_state_dict(
        cls, state_dict: Mapping[str, Tensor], hook_name: str, *, hook_name_out: str | None = None, **options
    ) -> SAE:
        """This class with the given weights (SAELens's names and layout); sizes are read from W_enc and W_dec.

        Every tensor must be one this class has (`threshold` for JumpReLU, `W_skip` for a skip transcoder)
        and every one it needs must be there: a missing or unexpected name is an error naming it.
        `options` are the constructor's (k, apply_b_dec_to_input, ...); dtype and device follow W_enc.
        """
        for name in ("W_enc", "W_dec"):
            if name not in state_dict:
                raise KeyError(
                    f"The state dict has no {name!r}; an SAE needs W_enc [d_in, d_sae] and W_dec [d_sae, d_out]."
                )
        (d_in, d_sae), d_out = state_dict["W_enc"].shape, state_dict["W_dec"].shape[-1]
        if state_dict["W_dec"].shape[0] != d_sae:
            raise ValueError(
                f"W_enc is {tuple(state_dict['W_enc'].shape)} [d_in, d_sae] but W_dec is "
                f"{tuple(state_dict['W_dec'].shape)}; W_dec must be [d_sae={d_sae}, d_out]."
            )
        w = state_dict["W_enc"]
        with torch.device("meta"):
            skip = "W_skip" in state_dict
            sae = cls(d_in, d_sae, hook_name, hook_name_out=hook_name_out, d_out=d_out, skip=skip, **options)
        expected, given = set(sae.state_dict()), set(state_dict)
        if expected != given:
            missing, unexpected = sorted(expected - given), sorted(given - expected)
            raise KeyError(
                f"A {cls.__name__} ({cls.architecture!r}) has the tensors {sorted(expected)}; the state dict lacks "
                f"{missing} and has unexpected {unexpected}. Pick the class whose architecture the weights are."
            )
        sae.load_state_dict({name: t.to(w.dtype) for name, t in state_dict.items()}, assign=True)
        return sae.to(w.device)


class JumpReLUSAE(SAE):
    """Same as SAE except: a feature is active only above its own threshold, relu(pre) * (pre > threshold)."""

    architecture: ClassVar[str] = "jumprelu"

    def __init__(self, d_in: int, d_sae: int, hook_name: str, **kwargs) -> None:
        super().__init__(d_in, d_sae, hook_name, **kwargs)
        self.threshold = nn.Parameter(torch.zeros(d_sae, dtype=self.W_enc.dtype, device=self.W_enc.device))

    def activation(self, acts_pre: Tensor) -> Tensor:
        return torch.relu(acts_pre) * (acts_pre > self.threshold).to(acts_pre.dtype)


class TopKSAE(SAE):
    """Same as SAE except: only each token's k largest pre-activations are kept (then ReLU'd).

    With `rescale_acts_by_decoder_norm` (SAELens's option of that name) the pre-activations are scaled by
    each feature's decoder norm before the top k are chosen, and the decoder divides them out again."""

    architecture: ClassVar[str] = "topk"

    def __init__(
        self, d_in: int, d_sae: int, hook_name: str, *, k: int, rescale_acts_by_decoder_norm: bool = False, **kwargs
    ) -> None:
        super().__init__(d_in, d_sae, hook_name, **kwargs)
        if not 0 < k <= d_sae:
            raise ValueError(f"k={k} must be in 1..d_sae={d_sae}.")
        self.k, self.rescale_acts_by_decoder_norm = k, rescale_acts_by_decoder_norm

    def activation(self, acts_pre: Tensor) -> Tensor:
        if self.rescale_acts_by_decoder_norm:
            acts_pre = acts_pre * self.W_dec.norm(dim=-1)
        top = torch.topk(acts_pre, k=self.k, dim=-1, sorted=False)
        return torch.zeros_like(acts_pre).scatter(-1, top.indices, top.values.relu())

    def decoder(self, acts: Tensor) -> Tensor:
        if self.rescale_acts_by_decoder_norm:  # acts / norm, then W_dec: SAELens's order, for its exact numbers
            acts = acts * (1 / self.W_dec.norm(dim=-1))
        return super().decoder(acts)

    def write_directions(self) -> Tensor:
        """W_dec's rows, divided by their norms where the activations were scaled by them."""
        if self.rescale_acts_by_decoder_norm:
            return self.W_dec / self.W_dec.norm(dim=-1, keepdim=True)
        return self.W_dec


class BatchTopKSAE(TopKSAE):
    """Same as TopKSAE except: the k * n_tokens largest activations of the whole batch are kept, so tokens
    share a budget of k per token on average (a training-time activation: SAELens saves a trained one as
    a JumpReLU SAE with the learned threshold, which is how it is meant to be used on single inputs)."""

    architecture: ClassVar[str] = "batchtopk"

    def activation(self, acts_pre: Tensor) -> Tensor:
        if self.rescale_acts_by_decoder_norm:
            acts_pre = acts_pre * self.W_dec.norm(dim=-1)
        acts = acts_pre.relu().flatten()
        top = torch.topk(acts, int(self.k * acts_pre.shape[:-1].numel()), dim=-1)
        return torch.zeros_like(acts).scatter(-1, top.indices, top.values).reshape(acts_pre.shape)
