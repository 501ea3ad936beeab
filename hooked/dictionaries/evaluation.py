"""How good a dictionary is, in one call: reconstruction error, explained variance, sparsity, and the share
of the language-modelling loss it keeps (SAELens's `run_evals` measures; Bricken et al. 2023).

On tokens [batch, pos], every position counted (padding is not handled: pass unpadded tokens):

- `mse`: the squared error summed over the activation's width, averaged over positions (SAELens's
  convention), between the reconstruction and the activation it stands for (the output hook's, for a
  transcoder).
- `explained_variance`: 1 - sum ||x - x_hat||^2 / sum ||x - mean(x)||^2, over all positions.
- `l0`: the number of active (non-zero) features per position, averaged.
- `ce_loss_recovered`: (CE_zero_ablation - CE_with_sae) / (CE_zero_ablation - CE_clean), where CE_with_sae
  runs the model on the reconstruction (no error term) and CE_zero_ablation with the activation set to 0.
  1 means the SAE loses nothing; 0 means it is as bad as deleting the activation.

Per-head SAEs read heads as they are spliced (flattened, or each head a row). The model runs as it is,
with any other SAEs it has spliced in.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import torch
from jaxtyping import Int
from torch import Tensor

from hooked.dictionaries.sae import SAE
from hooked.dictionaries.splice import Layout, check_fits


@dataclass(frozen=True)
class SAEEvaluation:
    mse: float
    explained_variance: float
    l0: float
    ce_loss_clean: float
    ce_loss_with_sae: float
    ce_loss_zero_ablation: float
    ce_loss_recovered: float

    def as_dict(self) -> dict[str, float]:
        return asdict(self)


@torch.no_grad()
def evaluate_sae(model, sae: SAE, tokens: Int[Tensor, "batch pos"]) -> SAEEvaluation:
    """Reconstruction, sparsity and loss-recovered measures of `sae` on `tokens` (see the module docstring)."""
    check_fits(model, sae)
    tokens = tokens.to(model.device)
    names = list(dict.fromkeys((sae.hook_name, sae.hook_name_out)))
    ce_clean, cache = model.run_with_cache(tokens, names_filter=names, return_type="loss")
    x = Layout(model.cfg, sae.hook_name, sae.d_in, "d_in", sae).to_sae(cache[sae.hook_name])
    target = Layout(model.cfg, sae.hook_name_out, sae.d_out, "d_out", sae).to_sae(cache[sae.hook_name_out])
    acts = sae.encode(x)
    recons = sae.reconstruct(x, acts).flatten(0, -2).float()
    target, acts = target.flatten(0, -2).float(), acts.flatten(0, -2)
    squared_error = (target - recons).pow(2).sum(-1)
    total_variance = (target - target.mean(0)).pow(2).sum()
    ce_sae = model.run_with_saes(tokens, saes=[sae], use_error_term=False, return_type="loss")
    ce_zero = model.run_with_hooks(
        tokens, return_type="loss", fwd_hooks=[(sae.hook_name_out, lambda act, hook: torch.zeros_like(act))]
    )
    return SAEEvaluation(
        mse=squared_error.mean().item(),
        explained_variance=(1 - squared_error.sum() / total_variance).item(),
        l0=(acts != 0).sum(-1).float().mean().item(),
        ce_loss_clean=ce_clean.item(),
        ce_loss_with_sae=ce_sae.item(),
        ce_loss_zero_ablation=ce_zero.item(),
        ce_loss_recovered=((ce_zero - ce_sae) / (ce_zero - ce_clean)).item(),
    )
