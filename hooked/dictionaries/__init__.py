"""Dictionaries: sparse autoencoders and transcoders, spliced into a model at any hook point.

`sae.py` (the modules), `saelens_format.py` (SAELens's files), `splice.py` (how one takes an activation's
place), `methods.py` (the model's `add_sae`, `saes()`, `run_with_saes`, ...), `evaluation.py` (`evaluate_sae`).
"""

from hooked.dictionaries.evaluation import SAEEvaluation, evaluate_sae
from hooked.dictionaries.sae import SAE, BatchTopKSAE, JumpReLUSAE, TopKSAE
from hooked.dictionaries.saelens_format import load_sae, save_sae

__all__ = ["SAE", "BatchTopKSAE", "JumpReLUSAE", "SAEEvaluation", "TopKSAE", "evaluate_sae", "load_sae", "save_sae"]
