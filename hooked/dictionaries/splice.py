"""Splicing a dictionary into a model: the SAE's reconstruction takes the place of the activation it reads.

A `Splice` runs at its hook point ahead of the point's hooks (`HookPoint.splice`), so every hook on the
point, caching included, sees what the model goes on with. The SAE's hook points become children of
that point, named `<hook>.hook_sae_input`, `.hook_sae_acts_pre`, `.hook_sae_acts_post`,
`.hook_sae_recons`, `.hook_sae_error`, `.hook_sae_output` (SAELens's names): ordinary hook points, so
features are read and edited with ordinary hooks. A transcoder reads its input hook and writes its
output hook; its points live under the output hook, as in SAELens.

With the error term, the output is

    output = activation + (recons - recons_clean) + (error - error_clean)

where `recons_clean` and `error_clean = activation - recons_clean` are what the SAE gives with no hook
editing it. Unedited, both brackets are exactly zero, so the model's numbers are bit-identical to the
clean run's; an edited feature changes `recons` and so the output by exactly its decoder's share. The
gradient the activation receives is the clean model's (the encoder reads it detached; the error is a
constant), and each feature receives what its decoder direction would. SAELens computes
`recons + error` instead (equal up to float rounding) and lets the gradient pass through the encoder.
Without the error term the output is the reconstruction, and gradients flow through the SAE.

`gradient` chooses, with the error term, which way gradients go back through the splice (the forward
numbers are the same in all three): "model" (the default, above); "replacement", the replacement model's
own gradient (the activation is detached, so nothing flows back through what produced it, e.g. the MLP,
and everything flows through the dictionary's encoder and decoder); "skip", the linear local replacement
model of attribution graphs (features are constants to the input, gradients flow only through a skip
transcoder's linear `W_skip` path, and each feature's activation still receives its decoder's gradient).

Per-head points: an SAE whose d_in is n_heads times the point's last axis reads the heads flattened
(SAELens's reshape_activations="hook_z"), its output unflattened; one whose d_in is the last axis reads
every head alike.
"""

from __future__ import annotations

import contextlib
import re

import torch
from torch import Tensor

from hooked.config import HookedTransformerConfig
from hooked.dictionaries.sae import SAE
from hooked.hook_points import HookPoint, may_edit

SAE_POINTS = (
    "hook_sae_input",
    "hook_sae_acts_pre",
    "hook_sae_acts_post",
    "hook_sae_recons",
    "hook_sae_error",
    "hook_sae_output",
)
_EDITS_FEATURES = SAE_POINTS[:4]  # points whose edits change the reconstruction
GRADIENTS = ("model", "replacement", "skip")


def activation_width(cfg: HookedTransformerConfig, hook_name: str) -> tuple[int | None, int]:
    """(heads, width) of the activation at `hook_name`: [batch, pos, width], or [batch, pos, heads, width]."""
    leaf = hook_name.rsplit(".", 1)[-1]
    n_heads, n_kv = cfg.n_heads, cfg.n_key_value_heads
    per_head = {
        "hook_q": (n_heads, cfg.d_head),
        "hook_rot_q": (n_heads, cfg.d_head),
        "hook_z": (n_heads, cfg.d_head),
        "hook_k": (n_kv, cfg.d_head),
        "hook_v": (n_kv, cfg.d_head),
        "hook_rot_k": (n_kv, cfg.d_head),
        "hook_result": (n_heads, cfg.d_model),
    }
    if re.search(r"\.attn\.hook_\w+$", hook_name) and leaf in per_head:
        return per_head[leaf]
    if leaf in ("hook_attn_in", "hook_q_input"):
        return n_heads, cfg.d_model
    if leaf in ("hook_k_input", "hook_v_input"):
        return n_kv, cfg.d_model
    if re.search(r"(^|\.)mlp\.hook_(pre|post|pre_linear)$", hook_name):
        return None, cfg.d_mlp
    residual = ("hook_embed", "hook_pos_embed", "hook_resid_pre", "hook_resid_mid", "hook_resid_post")
    writes = ("hook_attn_out", "hook_mlp_out", "hook_mlp_in")
    if leaf in residual + writes or hook_name == "unembed.hook_in" or re.search(r"\.mlp\.hook_(in|out)$", hook_name):
        return None, cfg.d_model
    if leaf == "hook_normalized" and not re.search(r"\.(q|k)_norm\.", hook_name):
        return None, cfg.d_model
    raise ValueError(
        f"Cannot splice a dictionary at {hook_name!r}: its activation is not one whose width is known here (the "
        "residual stream and what writes to it, norm outputs, MLP neurons, per-head q/k/v/z/result and inputs)."
    )


class Layout:
    """How an activation is shaped for the SAE: heads flattened into one axis, or left as they are."""

    def __init__(self, cfg: HookedTransformerConfig, hook_name: str, d: int, what: str, sae: SAE) -> None:
        heads, width = activation_width(cfg, hook_name)
        if d == width:
            self.flatten = False
        elif heads is not None and d == heads * width:
            self.flatten = True
        else:
            fits = f"{width}" if heads is None else f"{width} (each head) or {heads * width} (heads flattened)"
            raise ValueError(
                f"{type(sae).__name__} has {what}={d} but {hook_name!r} is {fits} wide in this model "
                f"(d_model={cfg.d_model}); load the SAE trained for this model and hook."
            )

    def to_sae(self, activation: Tensor) -> Tensor:
        return activation.flatten(-2) if self.flatten else activation

    def from_sae(self, x: Tensor, like: Tensor) -> Tensor:
        x = x.unflatten(-1, like.shape[-2:]) if self.flatten else x
        return x.to(like.dtype)  # back to the model's dtype from the SAE's


class Splice:
    """One dictionary spliced into a model at its hook (and, for a transcoder, reading another)."""

    def __init__(self, model, sae: SAE, use_error_term: bool, gradient: str = "model") -> None:
        check_fits(model, sae)
        if gradient not in GRADIENTS:
            raise ValueError(f"gradient={gradient!r}: choose one of {GRADIENTS} (see hooked.dictionaries.splice).")
        if gradient != "model" and not use_error_term:
            raise ValueError(
                f"gradient={gradient!r} chooses how gradients pass a splice with the error term; without it the "
                "model runs on the reconstruction and gradients flow through the SAE: pass use_error_term=True."
            )
        self.sae, self.use_error_term, self.gradient = sae, use_error_term, gradient
        self.in_layout = Layout(model.cfg, sae.hook_name, sae.d_in, "d_in", sae)
        self.out_layout = Layout(model.cfg, sae.hook_name_out, sae.d_out, "d_out", sae)
        self.in_point: HookPoint = model.hook_dict[sae.hook_name]
        self.out_point: HookPoint = model.hook_dict[sae.hook_name_out]
        self._captured: Tensor | None = None
        self._handles: list[tuple[HookPoint, object]] = []

    def attach(self) -> None:
        for name in SAE_POINTS:
            self.out_point.add_module(name, getattr(self.sae, name))
        if self.sae.is_transcoder:
            self._handles.append((self.in_point, self.in_point.splice(_Capture(self))))
        self._handles.append((self.out_point, self.out_point.splice(self)))
        self.sae.spliced_at = self.out_point.name

    def detach(self) -> None:
        for point, handle in self._handles:
            point.unsplice(handle)
        self._handles = []
        for name in SAE_POINTS:
            if name in self.out_point._modules:
                delattr(self.out_point, name)
        self.sae.spliced_at = None
        self.sae.setup()  # the points take back their names inside the SAE

    @property
    def read_only(self) -> bool:
        """Whether this run cannot change the activation (so components may skip per-head work): with the
        error term, no hook that may edit a feature or the output, and no gradient wanted for the SAE."""
        if not self.use_error_term or any(may_edit(getattr(self.sae, name)) for name in SAE_POINTS):
            return False
        return not torch.is_grad_enabled() or not any(p.requires_grad for p in self.sae.parameters())

    def __call__(self, activation: Tensor) -> Tensor | None:
        read_only = self.read_only
        with torch.no_grad() if read_only else contextlib.nullcontext():
            output = self._run(activation)
        return None if read_only else output

    def _run(self, activation: Tensor) -> Tensor:
        sae = self.sae
        source = activation
        if sae.is_transcoder:
            source, self._captured = self._captured, None
            if source is None:
                raise RuntimeError(
                    f"Transcoder for {sae.hook_name_out!r} found no input: {sae.hook_name!r} did not run before it "
                    "in this forward pass."
                )
        x = self.in_layout.to_sae(source)
        if not self.use_error_term:
            recons = self.out_layout.from_sae(sae.reconstruct(x, sae.encode(x)), activation)
            return sae.hook_sae_output(recons)
        encoder_input = x if self.gradient == "replacement" else x.detach()
        edited = any(may_edit(getattr(sae, name)) for name in _EDITS_FEATURES)
        recons = sae.decode(sae.encode(encoder_input))
        skip = sae.skip_term(encoder_input if self.gradient == "model" else x)
        recons = recons if skip is None else recons + skip
        with torch.no_grad():
            clean = sae.reconstruct_without_hooks(x) if edited else recons.detach()
        recons = self.out_layout.from_sae(recons, activation)
        clean = self.out_layout.from_sae(clean, activation)
        error_clean = (activation - clean).detach()
        # The error hook gets a copy where it may edit: an in-place edit of error_clean itself would vanish below.
        error = sae.hook_sae_error(error_clean.clone() if may_edit(sae.hook_sae_error) else error_clean)
        base = activation if self.gradient == "model" else activation.detach()
        return sae.hook_sae_output(base + (recons - clean) + (error - error_clean))


class _Capture:
    """A transcoder's reader at its input hook: keeps the activation for the output hook, changes nothing."""

    read_only = True

    def __init__(self, splice: Splice) -> None:
        self.splice = splice

    def __call__(self, activation: Tensor) -> None:
        self.splice._captured = activation


def check_fits(model, sae: SAE) -> None:
    """Refuse an SAE whose hooks this model lacks, or whose widths, device do not fit it (before any change)."""
    for name in dict.fromkeys((sae.hook_name, sae.hook_name_out)):
        if name not in model.hook_dict or ".hook_sae_" in name:
            raise KeyError(
                f"{type(sae).__name__} reads or writes {name!r}, which is no hook point of this model "
                f"({model.cfg.model_name}); see model.hook_dict for the names."
            )
    Layout(model.cfg, sae.hook_name, sae.d_in, "d_in", sae)
    Layout(model.cfg, sae.hook_name_out, sae.d_out, "d_out", sae)
    if sae.device != model.device:
        raise ValueError(f"The SAE is on {sae.device} and the model on {model.device}; move it: sae.to(model.device).")
    if getattr(sae, "spliced_at", None) is not None:
        raise ValueError(
            f"This SAE is already spliced in at {sae.spliced_at!r}; reset it there first, or splice a copy "
            "(copy.deepcopy(sae))."
        )
