"""Autoregressive generation with hooks active at every step, on a key-value cache.

`generate_stream` yields each step's new tokens as they come; `generate` collects them. A batch of
prompts is left-padded; the model derives positions from the attention mask, so every row decodes
exactly as it would alone. Hooks attached with `model.hooks(...)` or as permanent hooks apply to
every forward pass, so steering and ablations act during generation. Only the last position goes
through the final norm and unembedding at each step, so hooks there see one position.
"""

from __future__ import annotations

import warnings
from collections.abc import Iterator
from typing import TYPE_CHECKING, Literal

import torch
from jaxtyping import Int
from torch import Tensor

from hooked import tokenization
from hooked.components.kv_cache import KVCache
from hooked.names import NamesFilter
from hooked.progress import progress_bar
from hooked.sampling import sample_logits

if TYPE_CHECKING:
    from hooked.model import HookedTransformer


def _prompt_tokens(model: HookedTransformer, input, prepend_bos, padding_side, attention_mask=None):
    if isinstance(input, (str, list)):
        tokens, mask = tokenization.tokenize(model, input, prepend_bos, padding_side or "left", truncate=False)
        return _nonempty(tokens), mask
    tokens = torch.as_tensor(input, device=model.device)
    tokens = tokens.unsqueeze(0) if tokens.ndim == 1 else tokens
    if attention_mask is None:
        attention_mask = tokenization.left_padding_mask(model, tokens)
    mask = torch.ones_like(tokens) if attention_mask is None else attention_mask.to(tokens.device)
    return _nonempty(tokens), mask.reshape(tokens.shape)


def _nonempty(tokens: Tensor) -> Tensor:
    if tokens.shape[-1] == 0:
        raise ValueError("The prompt has no tokens to continue: pass some text, or prepend_bos=True.")
    return tokens


def _check_max_new_tokens(max_new_tokens: int) -> None:
    if max_new_tokens < 0:
        raise ValueError(f"max_new_tokens must be 0 or more, got {max_new_tokens}.")


def _eos_ids(model: HookedTransformer, eos_token_id: int | list[int] | None) -> Tensor | None:
    if eos_token_id is None and model.tokenizer is not None:
        eos_token_id = model.tokenizer.eos_token_id
    if eos_token_id is None:
        return None
    ids = [eos_token_id] if isinstance(eos_token_id, int) else list(eos_token_id)
    return torch.tensor(ids, device=model.device)


@torch.inference_mode()
def generate_stream(
    model: HookedTransformer,
    input: str | list[str] | Int[Tensor, "batch pos"],
    max_new_tokens: int = 10,
    stop_at_eos: bool = True,
    eos_token_id: int | list[int] | None = None,
    do_sample: bool = True,
    top_k: int | None = None,
    top_p: float | None = None,
    temperature: float = 1.0,
    freq_penalty: float = 0.0,
    use_past_kv_cache: bool = True,
    prepend_bos: bool | None = None,
    padding_side: tokenization.PaddingSide | None = None,
    verbose: bool = False,
    seed: int | None = None,
    attention_mask: Int[Tensor, "batch pos"] | None = None,
    repetition_penalty: float = 1.0,
) -> Iterator[Int[Tensor, " batch"]]:
    """Yield the next token of every row, step by step. Rows that have produced an EOS yield the
    EOS id from then on; the stream ends when every row has, after max_new_tokens, or (with a
    warning) when prompt and continuation fill the model's context of n_ctx tokens. For token
    input with padding, pass its `attention_mask` (1 = real token)."""
    _check_max_new_tokens(max_new_tokens)
    tokens, mask = _prompt_tokens(model, input, prepend_bos, padding_side, attention_mask)
    eos_ids = _eos_ids(model, eos_token_id) if stop_at_eos else None
    if stop_at_eos and eos_ids is None:
        raise ValueError("stop_at_eos needs an EOS id: pass eos_token_id=..., or stop_at_eos=False.")
    fill = int(eos_ids[0]) if eos_ids is not None else 0
    generator = torch.Generator(device=model.device).manual_seed(seed) if seed is not None else None
    cache = KVCache.for_model(model) if use_past_kv_cache else None
    finished = torch.zeros(tokens.shape[0], dtype=torch.bool, device=tokens.device)
    step_tokens, step_mask = tokens, mask
    # The points with hooks now (generation's hooks are attached before it starts): each pass tells them where
    # its positions start, in ctx["position_offset"], a few dict writes per step rather than a walk of all points.
    hooked_points = [point for point in model.hook_dict.values() if point.has_hooks]
    for step in progress_bar(range(max_new_tokens), progress=None if verbose else False, desc="Generating"):
        if tokens.shape[1] == model.cfg.n_ctx:  # a longer prompt is refused by the model, by name
            warnings.warn(
                f"Generation stopped after {step} of {max_new_tokens} new tokens: the sequence filled the model's "
                f"context of n_ctx={model.cfg.n_ctx} tokens. Pass a shorter prompt for a longer continuation.",
                stacklevel=3,
            )
            return
        if cache is not None and _crosses_longrope_switch(model, len(cache), tokens.shape[1]):
            cache, step_tokens, step_mask = KVCache.for_model(model), tokens, mask
        offset = tokens.shape[1] - step_tokens.shape[1] if cache is not None else 0
        for point in hooked_points:
            point.ctx["position_offset"] = offset
        if cache is not None:
            logits = model(step_tokens, attention_mask=step_mask, past_kv_cache=cache, logits_to_keep=1)
        else:
            logits = model(tokens, attention_mask=mask, logits_to_keep=1)
        history = tokens.masked_fill(mask == 0, -1)  # padding never counts towards freq_penalty
        next_tokens = sample_logits(
            logits[:, -1].to(tokens.device),  # (a device map may put the unembedding on another device)
            top_k=top_k,
            top_p=top_p,
            temperature=temperature if do_sample else 0.0,
            freq_penalty=freq_penalty,
            tokens=history,
            generator=generator,
            repetition_penalty=repetition_penalty,
        )
        next_tokens = next_tokens.masked_fill(finished, fill)
        yield next_tokens
        if eos_ids is not None:
            finished |= torch.isin(next_tokens, eos_ids)
        step_tokens, step_mask = next_tokens[:, None], torch.ones_like(next_tokens[:, None])
        tokens, mask = torch.cat([tokens, step_tokens], dim=1), torch.cat([mask, step_mask], dim=1)
        if finished.all():
            return


def _crosses_longrope_switch(model: HookedTransformer, cached: int, total: int) -> bool:
    """Whether this step takes a LongRoPE model past its original context, where its frequencies switch
    from the short to the long factors: the cached keys, rotated with the short ones, are then computed
    again, as transformers' Phi-3 generation does (Phi3ForCausalLM.prepare_inputs_for_generation)."""
    scaling = model.cfg.rope_scaling
    if scaling is None or scaling.kind != "longrope":
        return False
    return cached <= scaling.original_max_position_embeddings < total


def generate(
    model: HookedTransformer,
    input: str | list[str] | Int[Tensor, "batch pos"] = "",
    max_new_tokens: int = 10,
    stop_at_eos: bool = True,
    eos_token_id: int | list[int] | None = None,
    do_sample: bool = True,
    top_k: int | None = None,
    top_p: float | None = None,
    temperature: float = 1.0,
    freq_penalty: float = 0.0,
    use_past_kv_cache: bool = True,
    prepend_bos: bool | None = None,
    padding_side: tokenization.PaddingSide | None = None,
    return_type: Literal["input", "str", "tokens"] = "input",
    verbose: bool = True,
    seed: int | None = None,
    attention_mask: Int[Tensor, "batch pos"] | None = None,
    repetition_penalty: float = 1.0,
    return_cache: bool = False,
    names_filter: NamesFilter = None,
):
    """Prompt plus continuation, as strings or tokens (`return_type="input"`: the input's own type).
    Sampling settings are `hooked.utils.sample_logits`'s. Generation stops, with a warning, where the
    sequence fills the model's context (n_ctx tokens), returning what was generated.

    `return_cache=True` returns (output, cache): the activations (those `names_filter` selects) at every
    position of the returned tokens, [batch, prompt + new tokens, ...], from one forward pass over the
    whole sequence once it is generated, with the hooks that were active during generation.

    The rule for hooks during generation: on the key-value cache (the default) the first forward pass
    covers the prompt, and each later pass only the token just chosen, so a hook sees [batch, 1, ...]
    ([batch, n_heads, 1, keys so far] at `hook_pattern` and `hook_attn_scores`). That token's absolute
    position is the number of tokens before it, prompt padding included: `pattern.shape[-1] - 1` in a
    pattern hook, and in any hook `hook.ctx["position_offset"]`, which each pass sets on the points hooked
    when generation starts to the absolute position of the first position its tensors hold (0 for the
    prompt; 0 on every step without the cache). With `use_past_kv_cache=False` each step reruns the whole
    sequence, every position; so does, as in transformers, the step that takes a LongRoPE model past its
    original context."""
    _check_max_new_tokens(max_new_tokens)
    prompt, mask = _prompt_tokens(model, input, prepend_bos, padding_side, attention_mask)
    steps = generate_stream(
        model,
        prompt,
        max_new_tokens,
        stop_at_eos,
        eos_token_id,
        do_sample,
        top_k,
        top_p,
        temperature,
        freq_penalty,
        use_past_kv_cache,
        prepend_bos,
        padding_side,
        verbose,
        seed,
        mask,
        repetition_penalty=repetition_penalty,
    )
    new = list(steps)
    tokens = torch.cat([prompt, torch.stack(new, dim=1)], dim=1) if new else prompt
    output = _output(model, input, tokens, return_type)
    if not return_cache:
        return output
    full_mask = torch.cat([mask, torch.ones_like(tokens[:, prompt.shape[1] :])], dim=1)
    with torch.inference_mode():
        _, cache = model.run_with_cache(tokens, attention_mask=full_mask, names_filter=names_filter)
    return output, cache


def _output(model: HookedTransformer, input, tokens: Tensor, return_type: str):
    if return_type == "input":
        return_type = "str" if isinstance(input, (str, list)) else "tokens"
    if return_type == "tokens":
        return tokens
    if return_type != "str":
        raise ValueError(f"return_type must be 'input', 'str' or 'tokens', got {return_type!r}.")
    texts = [model.tokenizer.decode(row, skip_special_tokens=True) for row in tokens.tolist()]
    return texts[0] if isinstance(input, str) or (not isinstance(input, list) and len(texts) == 1) else texts
