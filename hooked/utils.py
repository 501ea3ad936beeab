"""TransformerLens's `utils` namespace: the helpers its notebooks call, gathered from where they live.

Nothing inside the package imports this module (it is the top layer); code here imports from the
modules that own each concept. The few helpers below exist only for notebooks written against
TransformerLens (`to_numpy`, `remove_batch_dim`, `get_corner`, `test_prompt`).
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
from torch import Tensor

from hooked.analysis.losses import lm_accuracy, lm_cross_entropy_loss
from hooked.components.mlp import gelu_fast, gelu_new
from hooked.factored_matrix import FactoredMatrix
from hooked.names import Slice, get_act_name
from hooked.sampling import sample_logits
from hooked.tokenization import TokenDataset, tokenize_and_concatenate

# TransformerLens's marker for "use the model's default" (its value is None, as here).
USE_DEFAULT_VALUE = None

__all__ = [
    "USE_DEFAULT_VALUE",
    "get_device",
    "get_tokens_with_bos_removed",
    "Slice",
    "TokenDataset",
    "gelu_fast",
    "gelu_new",
    "get_act_name",
    "get_corner",
    "lm_accuracy",
    "lm_cross_entropy_loss",
    "remove_batch_dim",
    "sample_logits",
    "test_prompt",
    "to_numpy",
    "tokenize_and_concatenate",
]


def to_numpy(tensor: Any) -> np.ndarray:
    if isinstance(tensor, np.ndarray):
        return tensor
    if isinstance(tensor, Tensor):
        tensor = tensor.detach().cpu()
        return (tensor.float() if tensor.dtype == torch.bfloat16 else tensor).numpy()  # numpy has no bfloat16
    return np.array(tensor)


def remove_batch_dim(tensor: Tensor) -> Tensor:
    """Drop a leading batch axis of size 1 (anything else is returned unchanged)."""
    return tensor[0] if tensor.ndim and tensor.shape[0] == 1 else tensor


def get_corner(tensor: Any, n: int = 3) -> Any:
    """The top-left n x n x ... corner of a tensor (or of a FactoredMatrix's product)."""
    if isinstance(tensor, FactoredMatrix):
        return tensor.get_corner(n)
    return tensor[tuple(slice(None, n) for _ in range(tensor.ndim))]


def test_prompt(
    prompt: str,
    answer: str | list[str],
    model,
    prepend_space_to_answer: bool = True,
    print_details: bool = True,
    prepend_bos: bool | None = None,
    top_k: int = 10,
) -> None:
    """Print how the model ranks `answer` as the continuation of `prompt`.

    For each answer token (the answer is tokenized without BOS and appended to the prompt), prints its
    rank (0 = the model's top choice), logit and probability, and the top_k tokens there (numbered from 0);
    then the answer tokens with their ranks. `print_details=False` prints only that last line. A list
    of answers is tested one after another.
    """
    answers = [answer] if isinstance(answer, str) else list(answer)
    for text in answers:
        if prepend_space_to_answer and not text.startswith(" "):
            text = " " + text
        prompt_tokens = model.to_tokens(prompt, prepend_bos=prepend_bos)
        answer_tokens = model.to_tokens(text, prepend_bos=False)
        tokens = torch.cat([prompt_tokens, answer_tokens], dim=1)
        with torch.no_grad():
            logits = model(tokens)[0].float()
        probs = logits.softmax(-1)
        n_prompt = prompt_tokens.shape[1]
        answer_strs = model.to_str_tokens(answer_tokens[0])
        if print_details:
            print("Tokenized prompt:", model.to_str_tokens(prompt_tokens[0]))
            print("Tokenized answer:", answer_strs)
        ranks = []
        for i, token in enumerate(answer_tokens[0].tolist()):
            position = n_prompt - 1 + i  # the logits that predict answer token i
            rank = int((logits[position] > logits[position, token]).sum())
            ranks.append((answer_strs[i], rank))
            if not print_details:
                continue
            print(f"Performance on answer token |{answer_strs[i]}|:")
            print(
                f"Rank: {rank:<8} Logit: {logits[position, token].item():6.2f} "
                f"Prob: {probs[position, token].item():6.2%} Token: |{answer_strs[i]}|"
            )
            top = logits[position].topk(min(top_k, logits.shape[-1]))
            top_strs = model.to_str_tokens(top.indices)
            print(f"Top {len(top_strs)} tokens:")
            for k, (value, index) in enumerate(zip(top.values.tolist(), top.indices.tolist(), strict=True)):
                prob = probs[position, index].item()
                print(f"  {k:>3}. Logit: {value:6.2f} Prob: {prob:6.2%} Token: |{top_strs[k]}|")
        print("Ranks of the answer tokens:", ranks)


test_prompt.__test__ = False  # a helper named test_*, not a test: pytest must not collect it when imported


def get_device() -> torch.device:
    """The best device torch sees: CUDA, then Apple's MPS, then the CPU (TransformerLens's helper)."""
    if torch.cuda.is_available():
        return torch.device("cuda")
    if getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
        return torch.device("mps")
    return torch.device("cpu")


def get_tokens_with_bos_removed(tokenizer, tokens: Tensor) -> Tensor:
    """`tokens` [batch, pos] without each row's BOS: the first column when padding is on the right, else each
    row's first real token (the one after its left padding). Rows keep their length minus one."""
    if tokenizer.padding_side != "left":
        return tokens[..., 1:]
    pad = tokenizer.pad_token_id
    first_real = (tokens != pad).int().argmax(-1) if pad is not None else torch.zeros(len(tokens), dtype=torch.long)
    if pad is not None and pad == tokenizer.bos_token_id:
        # BOS doubles as padding: the BOS is the last of the leading run of pad ids.
        first_real = ((tokens != pad).int().cumsum(-1) == 0).sum(-1) - 1
    keep = torch.ones_like(tokens, dtype=torch.bool)
    keep[torch.arange(len(tokens)), first_real.clamp(min=0)] = False
    return tokens[keep].reshape(tokens.shape[0], tokens.shape[1] - 1)
