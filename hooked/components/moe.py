"""Mixture of experts (Shazeer et al. 2017; Mixtral, Jiang et al. 2024): a router picks each token's
top-k gated-MLP experts and sums their outputs, weighted by the router's probabilities. Follows Hugging
Face's `modeling_mixtral.py`, `modeling_qwen2_moe.py`, `modeling_gpt_oss.py`: router softmax in float32,
each expert run only on the tokens routed to it.

Variants, all config facts: the chosen experts' probabilities renormalized to sum to 1 (`norm_topk_prob`,
Mixtral, GPT-OSS, Granite MoE) or kept as the softmax over all experts (Qwen MoE, OLMoE); a bias on the
router (`router_bias`, GPT-OSS); a shared expert every token goes through, gated by a sigmoid
(`d_mlp_shared`, Qwen2-MoE); clamped SwiGLU experts (`gated_mlp_limit`, GPT-OSS).

Hooks, in forward order (the names are the contract):

- `hook_router_logits` [batch, pos, n_experts]: the router's logits (bias included).
- `hook_expert_weights` [batch, pos, experts_per_token]: the chosen experts' weights (float32).
- `hook_expert_indices` [batch, pos, experts_per_token]: the chosen experts, best first.
- `experts.{e}.hook_pre` / `hook_pre_linear` / `hook_post` [n_routed, d_mlp]: expert e's activations on the
  tokens routed to it only, in (batch, pos) order; none when no token is.
- `hook_expert_out` [batch, pos, experts_per_token, d_model]: what each chosen expert adds to the output
  (its output times its weight), slot j from expert `hook_expert_indices[..., j]`. Computed only when
  something listens; a hook's edit changes the output (their sum).
- with a shared expert: `shared_expert.hook_pre` / `hook_pre_linear` / `hook_post` [batch, pos, d_mlp_shared],
  `hook_shared_gate` [batch, pos, 1] (the sigmoid), `hook_shared_out` [batch, pos, d_model] (its gated output).

The block's `hook_mlp_out` is the sum of `hook_expert_out` over slots plus `hook_shared_out`, exactly up to
float rounding (`ActivationCache`'s `stack_expert_results` splits it by expert).

Weights: `W_router` [d_model, n_experts] (`b_router` [n_experts]); each expert's `experts[e].W_gate`, `W_in`,
`W_out` (and biases); `shared_expert.*` and `W_shared_gate` [d_model, 1]. The stacked `model.W_in` and friends
([n_layers, d_model, d_mlp]) have no meaning here and do not exist.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from jaxtyping import Float, Int
from torch import Tensor, nn

from hooked.components.mlp import in_weight, make_gated_mlp
from hooked.config import HookedTransformerConfig
from hooked.hook_points import HookPoint, listening, may_edit, wants_gradient


class MoE(nn.Module):
    def __init__(self, cfg: HookedTransformerConfig) -> None:
        super().__init__()
        self.k, self.renormalize = cfg.experts_per_token, cfg.norm_topk_prob
        self.W_router = in_weight(cfg.d_model, cfg.num_experts)  # [d_model, n_experts]
        self.b_router = nn.Parameter(torch.zeros(cfg.num_experts)) if cfg.router_bias else None
        self.hook_router_logits = HookPoint()  # [batch, pos, n_experts]
        self.hook_expert_weights = HookPoint()  # [batch, pos, experts_per_token]
        self.hook_expert_indices = HookPoint()  # [batch, pos, experts_per_token]
        self.experts = nn.ModuleList([make_gated_mlp(cfg) for _ in range(cfg.num_experts)])
        for hook in self.experts.modules():
            if isinstance(hook, HookPoint):
                hook.batch_axis = False  # an expert's rows are the tokens routed to it, in (batch, pos) order
        self.hook_expert_out = HookPoint()  # [batch, pos, experts_per_token, d_model]
        if cfg.d_mlp_shared:
            self.shared_expert = make_gated_mlp(cfg, cfg.d_mlp_shared)
            self.W_shared_gate = in_weight(cfg.d_model, 1)  # [d_model, 1]
            self.hook_shared_gate = HookPoint()  # [batch, pos, 1]
            self.hook_shared_out = HookPoint()  # [batch, pos, d_model]

    def forward(self, x: Float[Tensor, "batch pos d_model"]) -> Float[Tensor, "batch pos d_model"]:
        logits = self.hook_router_logits(F.linear(x, self.W_router.T, self.b_router))
        probs = F.softmax(logits.float(), dim=-1)  # routing in float32, as the references do
        weights, indices = torch.topk(probs, self.k, dim=-1)
        if self.renormalize:
            weights = weights / weights.sum(dim=-1, keepdim=True)
        weights = self.hook_expert_weights(weights)
        indices = self.hook_expert_indices(indices)
        out = self._routed(x, weights, indices)
        if hasattr(self, "shared_expert"):
            gate = self.hook_shared_gate(torch.sigmoid(F.linear(x, self.W_shared_gate.T)))
            out = out + self.hook_shared_out(gate * self.shared_expert(x))
        return out

    def _routed(
        self,
        x: Float[Tensor, "batch pos d_model"],
        weights: Float[Tensor, "batch pos k"],
        indices: Int[Tensor, "batch pos k"],
    ) -> Float[Tensor, "batch pos d_model"]:
        """The weighted sum of each token's chosen experts; `hook_expert_out` holds its terms when listened to."""
        flat_x, flat_weights, flat_indices = x.flatten(0, 1), weights.flatten(0, 1), indices.flatten(0, 1)
        out = torch.zeros_like(flat_x)
        per_slot = flat_x.new_zeros(*flat_indices.shape, x.shape[-1]) if listening(self.hook_expert_out) else None
        for e, expert in enumerate(self.experts):
            token, slot = torch.where(flat_indices == e)
            if token.numel() == 0:
                continue
            weighted = (expert(flat_x[token]) * flat_weights[token, slot, None]).to(out.dtype)
            out.index_add_(0, token, weighted)
            if per_slot is not None:
                per_slot[token, slot] = weighted
        out = out.view_as(x)
        if per_slot is None:
            return out
        per_slot = per_slot.unflatten(0, x.shape[:2])
        if not may_edit(self.hook_expert_out):  # observers only (caching): the sum stays the one computed
            self.hook_expert_out(per_slot)
            return out
        # An unchanged hook_expert_out keeps the computed (bit-identical) sum; gradients need the explicit one.
        reference = None if wants_gradient(self.hook_expert_out) else per_slot.clone()
        per_slot = self.hook_expert_out(per_slot)
        if reference is not None and torch.equal(per_slot, reference):
            return out
        return per_slot.sum(dim=2)
