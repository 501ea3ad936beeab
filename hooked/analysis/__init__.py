"""Analysis, the layer above the components: what researchers compute from a run.

- `losses`: next-token cross-entropy and accuracy (the forward pass's `return_type="loss"`).
- `activation_cache`: `ActivationCache`, a run's activations with the methods below.
- `cache_analysis`, `logit_analysis`, `frozen_norms`: residual-stream decompositions, direct logit
  attribution, the logit lens, and norms frozen at a run's scale so decompositions sum back.
- `expert_analysis`: a mixture of experts' MLP output split by expert.
- `patching`, `patch_setters`: activation patching sweeps (TransformerLens's `patching` module).
- `attribution`: attribution patching (gradients times activation differences).
- `linearize`: attention patterns and norm scales frozen, so gradients see the linear local model.
- `ablation`: zero and mean ablation of heads, neurons and layers.
- `head_detection`: previous-token, duplicate-token and induction head scores.

Modules here use a model only through its public methods (hooks, `run_with_cache`, `cfg`), never
import it: the model is built from the layers below and imports this one.
"""
