"""Mixture of experts (Shazeer et al. 2017; Mixtral, Jiang et al. 2024): a router picks each token's
top-k gated-MLP experts and sums their outputs, weighted by the router's probabilities renormalized
over the chosen experts. Follows Hugging Face's `modeling_mixtral.py`: router softmax in float32,
each expert run only on the tokens routed to it.

Hooks: `hook_router_logits` [batch, pos, n_experts], `hook_expert_weights` [batch, pos, k] (float32,
summing to 1), `hook_expert_indices` [batch, pos, k] (the chosen experts, best first); each expert's
`experts.{e}.hook_pre` / `hook_pre_linear` / `hook_post` see only its tokens: [n_routed, d_mlp].

Weights: `W_router` [d_model, n_experts]; each expert's `experts[e].W_gate`, `W_in`, `W_out`. The
stacked `model.W_in` and friends ([n_layers, d_model, d_mlp]) have no meaning here and do not exist.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from jaxtyping import Float
from torch import Tensor, nn

from hooked.components.mlp import GatedMLP, in_weight
from hooked.config import HookedTransformerConfig
from hooked.hook_points import HookPoint


class MoE(nn.Module):
    def __init__(self, cfg: HookedTransformerConfig) -> None:
        super().__init__()
        self.k = cfg.experts_per_token
        self.W_router = in_weight(cfg.d_model, cfg.num_experts)  # [d_model, n_experts]
        self.hook_router_logits = HookPoint()  # [batch, pos, n_experts]
        self.hook_expert_weights = HookPoint()  # [batch, pos, experts_per_token]
        self.hook_expert_indices = HookPoint()  # [batch, pos, experts_per_token]
        self.experts = nn.ModuleList([GatedMLP(cfg) for _ in range(cfg.num_experts)])
        for hook in self.experts.modules():
            if isinstance(hook, HookPoint):
                hook.batch_axis = False  # an expert's rows are the tokens routed to it, in (batch, pos) order

    def forward(self, x: Float[Tensor, "batch pos d_model"]) -> Float[Tensor, "batch pos d_model"]:
        logits = self.hook_router_logits(F.linear(x, self.W_router.T))
        probs = F.softmax(logits.float(), dim=-1)  # routing in float32, as the reference does
        weights, indices = torch.topk(probs, self.k, dim=-1)
        weights = self.hook_expert_weights(weights / weights.sum(dim=-1, keepdim=True))
        indices = self.hook_expert_indices(indices)
        flat_x, flat_weights, flat_indices = x.flatten(0, 1), weights.flatten(0, 1), indices.flatten(0, 1)
        out = torch.zeros_like(flat_x)
        for e, expert in enumerate(self.experts):
            token, slot = torch.where(flat_indices == e)
            if token.numel() == 0:
                continue
            weighted = expert(flat_x[token]) * flat_weights[token, slot, None]
            out.index_add_(0, token, weighted.to(out.dtype))
        return out.view_as(x)
