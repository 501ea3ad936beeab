"""Small helpers users reach for beside the model: hook-name shorthand, losses, slicing, sampling,
prompt checks and dataset tokenization."""

from __future__ import annotations

import re
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from jaxtyping import Float, Int
from torch import Tensor
from torch.utils.data import Dataset

from hooked.components.mlp import gelu_fast, gelu_new  # noqa: F401  (TransformerLens's utils had them)

_ATTN_ACTS = {"q", "k", "v", "z", "rot_q", "rot_k", "result", "pattern", "attn_scores"}
_MLP_ACTS = {"pre", "post", "mid", "pre_linear"}
_NORM_ACTS = {"scale", "normalized"}
_TOP_LEVEL = {"embed", "pos_embed", "tokens"}
_ACT_ALIASES = {
    "attn": "pattern",
    "attn_logits": "attn_scores",
    "key": "k",
    "query": "q",
    "value": "v",
    "mlp_pre": "pre",
    "mlp_mid": "mid",
    "mlp_post": "post",
}
_LAYER_TYPE_ALIASES = {"a": "attn", "m": "mlp", "b": "", "block": "", "blocks": "", "attention": "attn"}


def get_act_name(name: str, layer: int | None = None, layer_type: str | None = None) -> str:
    """Full hook name from shorthand: ("k", 6, "a") -> "blocks.6.attn.hook_k", "pre5" -> "blocks.5.mlp.hook_pre",
    "scale4ln1" -> "blocks.4.ln1.hook_scale", ("scale",) -> "ln_final.hook_scale", "embed" -> "hook_embed"."""
    if ("." in name or name.startswith("hook_")) and layer is None and layer_type is None:
        return name
    match = re.fullmatch(r"([a-z_]+?)(\d+)([a-z]\w*)?", name)
    if match is not None and layer is None:
        name, layer, layer_type = match.group(1), int(match.group(2)), match.group(3) or layer_type
    name = _ACT_ALIASES.get(name, name)
    if name in _TOP_LEVEL:
        return f"hook_{name}"
    if layer is None:
        if name in _NORM_ACTS:
            return f"ln_final.hook_{name}"
        raise ValueError(f"Activation {name!r} lives in a block: give a layer, e.g. get_act_name({name!r}, 0).")
    if name in _ATTN_ACTS:
        layer_type = "attn"
    elif name in _MLP_ACTS:
        layer_type = "mlp"
    elif layer_type is not None:
        layer_type = _LAYER_TYPE_ALIASES.get(layer_type, layer_type)
    if name in _NORM_ACTS and not layer_type:
        raise ValueError(f"Activation {name!r} needs its norm: layer_type='ln1' or 'ln2'.")
    prefix = f"blocks.{layer}." + (f"{layer_type}." if layer_type else "")
    return f"{prefix}hook_{name}"


def lm_cross_entropy_loss(
    logits: Float[Tensor, "batch pos d_vocab"],
    tokens: Int[Tensor, "batch pos"],
    attention_mask: Int[Tensor, "batch pos"] | None = None,
    per_token: bool = False,
) -> Float[Tensor, ""] | Float[Tensor, "batch pos_minus_1"]:
    """Next-token cross-entropy (computed in float32). With a mask, the mean is over pairs of real tokens;
    per-token losses at padded positions are left as computed (mask them yourself)."""
    log_probs = F.log_softmax(logits[:, :-1].float(), dim=-1)
    losses = -log_probs.gather(-1, tokens[:, 1:, None].to(logits.device)).squeeze(-1)
    if per_token:
        return losses
    if attention_mask is None:
        return losses.mean()
    mask = attention_mask.to(logits.device)
    valid = (mask[:, 1:] * mask[:, :-1]).to(losses.dtype)
    return (losses * valid).sum() / valid.sum()


def lm_accuracy(
    logits: Float[Tensor, "batch pos d_vocab"], tokens: Int[Tensor, "batch pos"], per_token: bool = False
) -> Tensor:
    """Fraction of positions whose argmax is the next token."""
    correct = logits[:, :-1].argmax(-1) == tokens[:, 1:].to(logits.device)
    return correct if per_token else correct.float().mean()


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
    from hooked.factored_matrix import FactoredMatrix

    if isinstance(tensor, FactoredMatrix):
        return tensor.get_corner(n)
    return tensor[tuple(slice(None, n) for _ in range(tensor.ndim))]


class Slice:
    """A reusable index along one axis: None (everything), an int (that index, axis dropped),
    a (start, stop[, step]) tuple, a slice, or a list/array/tensor of indices."""

    def __init__(self, input_slice: Any = None) -> None:
        if isinstance(input_slice, Slice):
            input_slice = input_slice.slice
        if isinstance(input_slice, tuple):
            input_slice = slice(*input_slice)
        elif input_slice is None:
            input_slice = slice(None)
        elif isinstance(input_slice, (list, np.ndarray)):
            input_slice = torch.as_tensor(input_slice)
        self.slice = input_slice

    def apply(self, tensor: Tensor, dim: int = 0) -> Tensor:
        index: list[Any] = [slice(None)] * tensor.ndim
        index[dim] = self.slice.to(tensor.device) if isinstance(self.slice, Tensor) else self.slice
        return tensor[tuple(index)]

    def indices(self, max_ctx: int | None = None) -> Tensor:
        """The positions this slice selects out of range(max_ctx)."""
        if isinstance(self.slice, int):
            return torch.tensor([self.slice])
        if isinstance(self.slice, Tensor):
            return self.slice
        if max_ctx is None:
            raise ValueError("max_ctx is needed to list the indices of a slice.")
        return torch.arange(max_ctx)[self.slice]

    def __repr__(self) -> str:
        return f"Slice({self.slice!r})"


def sample_logits(
    final_logits: Float[Tensor, "batch d_vocab"],
    top_k: int | None = None,
    top_p: float | None = None,
    temperature: float = 1.0,
    freq_penalty: float = 0.0,
    tokens: Int[Tensor, "batch pos"] | None = None,
    generator: torch.Generator | None = None,
    repetition_penalty: float = 1.0,
) -> Int[Tensor, " batch"]:
    """One next token per row, sampled from the logits of the last position.

    Negative entries of `tokens` (padding) are not counted; `generator` makes sampling reproducible.

    The logits (in float32) of tokens occurring in their row of `tokens` are first divided by
    `repetition_penalty` where positive and multiplied by it where negative (Hugging Face's rule, from
    the CTRL paper). Then all are divided by `temperature`, and each token loses `freq_penalty` times
    the number of times it occurs in its row of `tokens`. `top_k` keeps the k largest; `top_p` keeps
    the smallest set of most likely tokens whose probability reaches p (both may be given: top_k
    first). `temperature == 0` is greedy: the argmax, after the frequency penalty.
    """
    if temperature < 0:
        raise ValueError(f"temperature must be >= 0, got {temperature}.")
    logits = final_logits.float()
    if repetition_penalty != 1.0:
        if repetition_penalty <= 0:
            raise ValueError(f"repetition_penalty must be > 0, got {repetition_penalty}.")
        if tokens is None:
            raise ValueError("repetition_penalty needs the tokens so far: pass tokens=...")
        seen = tokens.to(logits.device).reshape(logits.shape[0], -1)
        occurs = torch.zeros_like(logits, dtype=torch.bool).scatter_(-1, seen.clamp(min=0), seen >= 0)
        penalized = torch.where(logits > 0, logits / repetition_penalty, logits * repetition_penalty)
        logits = torch.where(occurs, penalized, logits)
    if temperature > 0:
        logits = logits / temperature
    if freq_penalty:
        if tokens is None:
            raise ValueError("freq_penalty needs the tokens so far: pass tokens=...")
        tokens = tokens.to(logits.device).reshape(logits.shape[0], -1)
        real = (tokens >= 0).to(logits.dtype)
        counts = torch.zeros_like(logits).scatter_add_(-1, tokens.clamp(min=0), real)
        logits = logits - freq_penalty * counts
    if temperature == 0:
        return logits.argmax(-1)
    if top_k is not None:
        if top_k < 1:
            raise ValueError(f"top_k must be at least 1, got {top_k}.")
        top = logits.topk(min(top_k, logits.shape[-1]), dim=-1).indices
        keep = torch.zeros_like(logits, dtype=torch.bool).scatter_(-1, top, True)
        logits = logits.masked_fill(~keep, float("-inf"))
    if top_p is not None:
        if not 0 < top_p <= 1:
            raise ValueError(f"top_p must be in (0, 1], got {top_p}.")
        sorted_logits, order = logits.sort(dim=-1, descending=True)
        probs = sorted_logits.softmax(-1)
        mass_before = probs.cumsum(-1) - probs  # a token is kept while the more likely ones have not reached p
        drop_sorted = mass_before >= top_p
        drop = torch.zeros_like(drop_sorted).scatter_(-1, order, drop_sorted)
        logits = logits.masked_fill(drop, float("-inf"))
    return torch.multinomial(logits.softmax(-1), num_samples=1, generator=generator).squeeze(-1)


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


class TokenDataset(Dataset):
    """Rows of tokens from `tokenize_and_concatenate`.

    `ds["tokens"]` is the [n_rows, max_length] tensor; `ds[i]` is `{"tokens": row i}` and `len(ds)`
    the number of rows, so a torch DataLoader yields `{"tokens": [batch, max_length]}` batches, as
    with the Hugging Face dataset TransformerLens returned.
    """

    column_names = ["tokens"]

    def __init__(self, tokens: Int[Tensor, "n_rows max_length"]) -> None:
        self.tokens = tokens

    def __len__(self) -> int:
        return self.tokens.shape[0]

    def __getitem__(self, index: str | int | slice) -> Any:
        if isinstance(index, str):
            if index != "tokens":
                raise KeyError(f"The only column is 'tokens', not {index!r}.")
            return self.tokens
        return {"tokens": self.tokens[index]}

    def __iter__(self):
        return ({"tokens": row} for row in self.tokens)

    def __repr__(self) -> str:
        return f"TokenDataset(n_rows={self.tokens.shape[0]}, max_length={self.tokens.shape[1]})"


def tokenize_and_concatenate(
    dataset: Any,
    tokenizer,
    streaming: bool = False,
    max_length: int = 1024,
    column_name: str = "text",
    add_bos_token: bool = True,
    num_proc: int | None = None,
) -> TokenDataset:
    """Tokenize every text, join them with EOS between texts, and cut the stream into rows of max_length.

    `dataset` is a string, a list of strings, or anything with a text column: a Hugging Face
    `datasets.Dataset` (`dataset[column_name]`), or, with `streaming=True` or when it cannot be
    indexed by column, any iterable of rows (dicts holding `column_name`, or strings). The
    `datasets` package is not needed. With `add_bos_token`, each row is BOS followed by
    max_length - 1 tokens of the stream. The tokens that do not fill a last row are dropped.
    Returns a `TokenDataset`: `result["tokens"]` is the [n_rows, max_length] int64 tensor.
    (`num_proc` is accepted for compatibility and ignored: a fast tokenizer already runs in parallel.)
    """
    from hooked.tokenization import bos_token_id

    texts = _texts(dataset, column_name, streaming)
    ids = tokenizer(texts, add_special_tokens=False)["input_ids"] if texts else []
    separator = [] if tokenizer.eos_token_id is None else [tokenizer.eos_token_id]
    pieces = [np.asarray(separator + row if i else row, dtype=np.int64) for i, row in enumerate(ids)]
    stream = np.concatenate(pieces) if pieces else np.zeros(0, dtype=np.int64)
    row_length = max_length - 1 if add_bos_token else max_length
    if row_length < 1:
        raise ValueError(f"max_length={max_length} leaves no room for tokens after BOS.")
    n_rows = len(stream) // row_length
    if n_rows == 0:
        raise ValueError(f"The dataset has {len(stream)} tokens, fewer than one row of {row_length}; lower max_length.")
    tokens = torch.from_numpy(stream[: n_rows * row_length]).reshape(n_rows, row_length)
    if add_bos_token:
        bos = torch.full((n_rows, 1), bos_token_id(tokenizer), dtype=torch.long)
        tokens = torch.cat([bos, tokens], dim=1)
    return TokenDataset(tokens)


def _texts(dataset: Any, column_name: str, streaming: bool) -> list[str]:
    if isinstance(dataset, str):
        return [dataset]
    if isinstance(dataset, (list, tuple)) and all(isinstance(text, str) for text in dataset):
        return list(dataset)
    if not streaming:
        try:
            column = dataset[column_name]
        except (TypeError, KeyError, IndexError):
            column = None
        if column is not None and not isinstance(column, str):
            return [str(text) for text in column]
    return [row if isinstance(row, str) else row[column_name] for row in dataset]
