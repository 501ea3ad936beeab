"""Feed-forward layers: the standard MLP, the gated MLP (SwiGLU/GeGLU, Shazeer 2020), and the MLP whose
activation has parameters of its own (xIELU, Huang et al. 2024: Apertus)."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from jaxtyping import Float
from torch import Tensor, nn

from hooked.components.linear import linear
from hooked.config import HookedTransformerConfig
from hooked.hook_points import HookPoint


def gelu_new(x: Tensor) -> Tensor:
    """GPT-2's tanh approximation of GELU, written out as Hugging Face's NewGELUActivation is."""
    return 0.5 * x * (1.0 + torch.tanh(math.sqrt(2.0 / math.pi) * (x + 0.044715 * torch.pow(x, 3.0))))


def gelu_fast(x: Tensor) -> Tensor:
    """The same tanh approximation with the constant rounded, as Hugging Face's FastGELUActivation (BLOOM's)."""
    return 0.5 * x * (1.0 + torch.tanh(x * 0.7978845608 * (1.0 + 0.044715 * x * x)))


ACTIVATIONS = {
    "gelu_new": gelu_new,
    "gelu_fast": gelu_fast,
    "gelu": F.gelu,
    "gelu_pytorch_tanh": lambda x: F.gelu(x, approximate="tanh"),
    "silu": F.silu,
    "relu": F.relu,
    "quick_gelu": lambda x: x * torch.sigmoid(1.702 * x),  # Hugging Face's QuickGELUActivation (GPT-OSS's GLU)
}


def in_weight(d_in: int, d_out: int) -> nn.Parameter:
    """An empty [d_in, d_out] weight stored as the transpose of a contiguous [d_out, d_in] (Linear's layout)."""
    return nn.Parameter(torch.empty(d_out, d_in).T)


class MLP(nn.Module):
    def __init__(self, cfg: HookedTransformerConfig) -> None:
        super().__init__()
        if cfg.act_fn in ACTIVATIONS:  # not xIELU, which is XIELUMLP's method
            self.act = ACTIVATIONS[cfg.act_fn]
        self.W_in = in_weight(cfg.d_model, cfg.d_mlp)
        self.b_in = nn.Parameter(torch.zeros(cfg.d_mlp)) if cfg.mlp_bias else None
        self.W_out = in_weight(cfg.d_mlp, cfg.d_model)
        self.b_out = nn.Parameter(torch.zeros(cfg.d_model)) if cfg.mlp_bias else None
        self.hook_pre = HookPoint()  # [batch, pos, d_mlp]
        self.hook_post = HookPoint()  # [batch, pos, d_mlp]

    def forward(self, x: Float[Tensor, "batch pos d_model"]) -> Float[Tensor, "batch pos d_model"]:
        pre = self.hook_pre(linear(x, self.W_in.T, self.b_in))
        post = self.hook_post(self.act(pre))
        return linear(post, self.W_out.T, self.b_out)


def xielu(x: Tensor, alpha_p: Tensor, alpha_n: Tensor, beta: Tensor, eps: Tensor) -> Tensor:
    """xIELU (arXiv 2411.13010) as Hugging Face's XIELUActivation computes it (its Python path): a quadratic
    for x > 0, an exponential below, with the slopes softplus(alpha_p) and beta + softplus(alpha_n)."""
    a_p, a_n = F.softplus(alpha_p), beta + F.softplus(alpha_n)
    return torch.where(x > 0, a_p * x * x + beta * x, (torch.expm1(torch.min(x, eps)) - x) * a_n + beta * x)


class XIELUMLP(MLP):
    # Same as MLP except: the activation is xIELU, with the layer's own four numbers (alpha_p, alpha_n learned;
    # beta, eps fixed in training but stored in the checkpoint). A random model draws them as it draws its
    # matrices (init_weights); a loaded one has the checkpoint's.
    def __init__(self, cfg: HookedTransformerConfig) -> None:
        super().__init__(cfg)
        for name in ("xielu_alpha_p", "xielu_alpha_n", "xielu_beta", "xielu_eps"):
            setattr(self, name, nn.Parameter(torch.zeros(1 if "alpha" in name else ())))

    def act(self, x: Float[Tensor, "batch pos d_mlp"]) -> Float[Tensor, "batch pos d_mlp"]:
        return xielu(x, self.xielu_alpha_p, self.xielu_alpha_n, self.xielu_beta, self.xielu_eps)


class GatedMLP(nn.Module):
    # Same as MLP except: post = act(x W_gate) * (x W_in). (Also a mixture of experts' expert, on [tokens, d_model],
    # and its shared expert, `d_mlp` wide.)
    def __init__(self, cfg: HookedTransformerConfig, d_mlp: int = 0) -> None:
        super().__init__()
        d_mlp = d_mlp or cfg.d_mlp
        self.act = ACTIVATIONS[cfg.act_fn]
        self.W_gate = in_weight(cfg.d_model, d_mlp)
        self.b_gate = nn.Parameter(torch.zeros(d_mlp)) if cfg.mlp_bias else None
        self.W_in = in_weight(cfg.d_model, d_mlp)
        self.b_in = nn.Parameter(torch.zeros(d_mlp)) if cfg.mlp_bias else None
        self.W_out = in_weight(d_mlp, cfg.d_model)
        self.b_out = nn.Parameter(torch.zeros(cfg.d_model)) if cfg.mlp_bias else None
        self.hook_pre = HookPoint()  # [batch, pos, d_mlp]  the gate branch, before the activation
        self.hook_pre_linear = HookPoint()  # [batch, pos, d_mlp]  the linear branch
        self.hook_post = HookPoint()  # [batch, pos, d_mlp]

    def forward(self, x: Float[Tensor, "*batch d_model"]) -> Float[Tensor, "*batch d_model"]:
        pre = self.hook_pre(linear(x, self.W_gate.T, self.b_gate))
        pre_linear = self.hook_pre_linear(linear(x, self.W_in.T, self.b_in))
        post = self.hook_post(self.act(pre) * pre_linear)
        return linear(post, self.W_out.T, self.b_out)


class ClampedGatedMLP(GatedMLP):
    # Same as GatedMLP except: post = act(min(pre, limit)) * (clamp(pre_linear, -limit, limit) + 1) (GPT-OSS's
    # experts, with act quick_gelu). hook_pre and hook_pre_linear are before the clamps.
    def __init__(self, cfg: HookedTransformerConfig, d_mlp: int = 0) -> None:
        super().__init__(cfg, d_mlp)
        self.limit = cfg.gated_mlp_limit

    def forward(self, x: Float[Tensor, "*batch d_model"]) -> Float[Tensor, "*batch d_model"]:
        pre = self.hook_pre(linear(x, self.W_gate.T, self.b_gate))
        pre_linear = self.hook_pre_linear(linear(x, self.W_in.T, self.b_in))
        shifted = pre_linear.clamp(-self.limit, self.limit) + 1
        post = self.hook_post(self.act(pre.clamp(max=self.limit)) * shifted)
        return linear(post, self.W_out.T, self.b_out)


def make_gated_mlp(cfg: HookedTransformerConfig, d_mlp: int = 0) -> GatedMLP:
    """The gated MLP the config describes, `d_mlp` wide (0: cfg.d_mlp)."""
    return ClampedGatedMLP(cfg, d_mlp) if cfg.gated_mlp_limit else GatedMLP(cfg, d_mlp)
