"""Weight processing: rewrite a model's weights into an equivalent form that is easier to read.

Each step edits the model in place and keeps its log-probabilities (up to float rounding); its
docstring says exactly what else it keeps and what it changes. The steps, and the order
`process_weights_` applies them in, are TransformerLens's (fold_ln, center_writing_weights,
center_unembed, fold_value_biases, refactor_factored_attn_matrices); the reasoning is in Elhage et al.
2021, "A Mathematical Framework for Transformer Circuits", and TransformerLens's weight-processing docs.

Parameters are edited with `copy_`, never replaced: they are strided views that keep Hugging Face's
fused layout, which the fast forward path relies on. Two exceptions, both recorded in `model.cfg`:
a bias a step needs and the model lacks is created (zeros, for the whole group the config flag
describes, so the config still lists every parameter), and a tied unembedding gets its own copy
before a step edits W_E or W_U, since the two share memory.

The arithmetic runs in float32 at least (bfloat16/float16 weights are upcast, then cast back); the
SVDs of `refactor_factored_attn_matrices` run in float64.
"""

from __future__ import annotations

import warnings
from typing import TYPE_CHECKING

import torch
from torch import Tensor, nn

from hooked.components.attention import Attention
from hooked.components.block import Block
from hooked.components.mlp import MLP, GatedMLP
from hooked.components.norms import LayerNorm, RMSNorm
from hooked.factored_matrix import FactoredMatrix

if TYPE_CHECKING:
    from hooked.model import HookedTransformer


def fold_layer_norm(model: HookedTransformer, fold_biases: bool = True, center_weights: bool = True) -> None:
    """Fold each norm's weight (and LayerNorm bias) into the weights that read the norm's output.

    ln1 goes into W_Q, W_K, W_V (and b_Q, b_K, b_V), ln2 into W_in and W_gate (and their biases),
    ln_final into W_U (and b_U): `(n * w + b) @ W + b_W == n @ (w[:, None] * W) + (b @ W + b_W)`.
    Every norm then has w = 1 and b = 0, so it only normalizes. With `center_weights`, the reading
    weights of a LayerNorm are also centered over d_model (their mean over that axis subtracted): a
    LayerNorm's normalized output has mean zero, so that part of the weight never contributed.
    RMSNorm output is not mean-zero and RMSNorm has no bias: only its weight is folded, whatever
    the flags say.

    With `fold_biases=False` a LayerNorm's bias stays in the norm, divided by the weight it used to
    follow (b / w, so the sum is unchanged); this needs `center_weights=False` (the kept bias is not
    mean-zero) and a nonzero w wherever b is nonzero.

    Preserves: the logits, and every hook point's value (the norms' `hook_scale` and
    `hook_normalized` are taken before the weight; the only value that changes, each norm's output,
    has no hook point). Creates zero q/k/v, MLP and unembedding biases where a LayerNorm bias must
    be folded into a reader that has none, and unties a tied W_U (W_E is not changed).
    """
    _check_standard(model, "fold_layer_norm")
    norms = [norm for block in model.blocks for norm in (block.ln1, block.ln2)] + [model.ln_final]
    layer_norms = [norm for norm in norms if isinstance(norm, LayerNorm) and norm.b is not None]
    if layer_norms and not fold_biases and center_weights:
        raise ValueError(
            "fold_layer_norm(fold_biases=False) keeps each LayerNorm's bias in the norm, so the norm's output "
            "is no longer mean-zero and centering the reading weights would change the outputs; "
            "pass center_weights=False too."
        )
    if layer_norms and fold_biases:
        for flag in ("attn_qkv_bias", "mlp_bias", "unembed_bias"):
            _require_biases(model, flag)
    _untie(model)
    for block in model.blocks:
        attn, mlp = block.attn, block.mlp
        attn_readers = [(attn, "W_Q", "b_Q"), (attn, "W_K", "b_K"), (attn, "W_V", "b_V")]
        _fold_norm(block.ln1, attn_readers, fold_biases, center_weights)
        mlp_readers = [(mlp, "W_in", "b_in")] + ([(mlp, "W_gate", "b_gate")] if isinstance(mlp, GatedMLP) else [])
        _fold_norm(block.ln2, mlp_readers, fold_biases, center_weights)
    _fold_norm(model.ln_final, [(model.unembed, "W_U", "b_U")], fold_biases, center_weights)


def center_writing_weights(model: HookedTransformer) -> None:
    """Subtract the mean over d_model from every weight and bias that writes to the residual stream.

    W_E, W_pos, W_O, b_O, W_out and b_out each lose their component along the all-ones direction of
    d_model. Exact only when everything that reads the residual stream is a LayerNorm, which
    subtracts that same mean first; RMSNorm does not, so for a model with RMSNorm this raises.

    Preserves: the logits, and every value computed after a norm (q/k/v, patterns, MLP activations,
    `hook_normalized`, `hook_scale`). Changes: the residual stream and the components written to it
    (`hook_embed`, `hook_pos_embed`, `hook_result`, `hook_attn_out`, `hook_mlp_out`, `hook_resid_*`,
    the norms' inputs), each by a multiple of the all-ones vector at each position. Unties a tied
    W_U first, so the unembedding is not changed with W_E.
    """
    _check_standard(model, "center_writing_weights")
    norms = _residual_norms(model)
    not_layer_norm = [name for name, norm in norms if not isinstance(norm, LayerNorm)]
    if not_layer_norm:
        raise ValueError(
            f"center_writing_weights is exact only when every reader of the residual stream is a LayerNorm, which "
            f"removes the mean over d_model; {not_layer_norm[0]} is a {type(dict(norms)[not_layer_norm[0]]).__name__}, "
            "which does not, so centering would change this model's outputs. Leave center_writing_weights=False."
        )
    _untie(model)
    writers = [model.embed.W_E] + ([model.pos_embed.W_pos] if hasattr(model, "pos_embed") else [])
    for block in model.blocks:
        writers += [block.attn.W_O, block.attn.b_O, block.mlp.W_out, block.mlp.b_out]
    for param in writers:
        if param is not None:
            value = _work(param)
            _write(param, value - value.mean(-1, keepdim=True))  # d_model is the last axis of every writer


def center_unembed(model: HookedTransformer) -> None:
    """Subtract the mean over the vocabulary from W_U (each row) and from b_U.

    Preserves: the log-probabilities and every activation before the unembedding. Changes: the
    logits (`unembed.hook_out`), each position's by one constant (its mean over the vocabulary).
    A tied W_U is untied first, so W_E is not changed.
    """
    _untie(model)
    for param in (model.unembed.W_U, model.unembed.b_U):
        if param is not None:
            value = _work(param)
            _write(param, value - value.mean(-1, keepdim=True))


def fold_value_biases(model: HookedTransformer) -> None:
    """Move the value biases into the attention output bias: b_O += sum_h b_V[h] @ W_O[h], then b_V = 0.

    Exact because each query's attention pattern sums to 1, so every head adds exactly b_V[h] @ W_O[h]
    to its output whatever it attends to. With grouped-query attention, query head h reads the value
    bias of key/value head h // (n_heads / n_kv_heads).

    Preserves: the logits and `hook_attn_out`, the residual stream and everything else downstream;
    q, k and the patterns. Changes: `hook_v`, `hook_z` and `hook_result` (each head's output loses
    its constant value-bias part, now in b_O). Creates a zero b_O where the model has none.
    """
    _check_standard(model, "fold_value_biases")
    if all(block.attn.b_V is None for block in model.blocks):
        return
    _require_biases(model, "attn_out_bias")
    groups = model.cfg.n_key_value_groups
    for block in model.blocks:
        attn = block.attn
        if attn.b_V is None:
            continue
        b_V = _work(attn.b_V).repeat_interleave(groups, dim=0)  # [n_heads, d_head]: query head h uses h // groups
        _write(attn.b_O, _work(attn.b_O) + torch.einsum("nh,nhm->m", b_V, _work(attn.W_O)))
        _write(attn.b_V, torch.zeros_like(attn.b_V))


def refactor_factored_attn_matrices(model: HookedTransformer) -> None:
    """Rebalance each head's W_Q/W_K and W_V/W_O pairs with an SVD, keeping their products.

    QK: with the biases as an extra row (`[W_Q; b_Q]` and `[W_K; b_K]`, [d_model + 1, d_head]), the
    scores of x are `[x, 1] @ [W_Q; b_Q] @ [W_K; b_K]^T @ [x, 1]^T`. Writing that product as
    U S Vh, the new factors are U sqrt(S) and Vh^T sqrt(S), so both have orthogonal columns of equal
    norms. OV: the value biases are first folded into b_O (see `fold_value_biases`), then
    W_V W_O = U S Vh gives W_V = U sqrt(S), W_O = sqrt(S) Vh.

    Not exact with rotary positions (the rotation acts in the basis of q and k, which this changes)
    nor with grouped-query attention (a key/value head is shared, so it cannot be rebalanced for
    each query head): both raise.

    Preserves: the logits, the attention scores and patterns, each head's W_Q W_K^T and W_V W_O,
    `hook_attn_out` and everything downstream. Changes: `hook_q`, `hook_k`, `hook_v`, `hook_z`, and
    (through the value-bias fold) `hook_result`. Creates q/k/v and output biases where needed.
    """
    _check_standard(model, "refactor_factored_attn_matrices")
    cfg = model.cfg
    if cfg.positional_embedding_type == "rotary":
        raise ValueError(
            "refactor_factored_attn_matrices is not exact with rotary positions: the rotation acts in the basis "
            "of the queries and keys, which the refactor changes. Leave refactor_factored_attn_matrices=False."
        )
    if cfg.n_key_value_groups > 1:
        raise ValueError(
            f"refactor_factored_attn_matrices is not exact with grouped-query attention (n_heads={cfg.n_heads}, "
            f"n_key_value_heads={cfg.n_key_value_heads}): a key/value head is shared by several query heads, so "
            "it cannot be rebalanced for each. Leave refactor_factored_attn_matrices=False."
        )
    fold_value_biases(model)
    if any(block.attn.b_Q is not None or block.attn.b_K is not None for block in model.blocks):
        _require_biases(model, "attn_qkv_bias")
    for block in model.blocks:
        attn = block.attn
        with_bias = attn.b_Q is not None
        queries, keys = _work(attn.W_Q, torch.float64), _work(attn.W_K, torch.float64)
        if with_bias:  # the bias as one more input dimension whose value is always 1
            queries = torch.cat([queries, _work(attn.b_Q, torch.float64)[:, None]], dim=1)
            keys = torch.cat([keys, _work(attn.b_K, torch.float64)[:, None]], dim=1)
        queries, keys = _balanced_factors(queries, keys.transpose(-1, -2))
        keys = keys.transpose(-1, -2)
        if with_bias:
            _write(attn.b_Q, queries[:, -1])
            _write(attn.b_K, keys[:, -1])
            queries, keys = queries[:, :-1], keys[:, :-1]
        _write(attn.W_Q, queries)
        _write(attn.W_K, keys)
        values, out = _balanced_factors(_work(attn.W_V, torch.float64), _work(attn.W_O, torch.float64))
        _write(attn.W_V, values)
        _write(attn.W_O, out)


def process_weights_(
    model: HookedTransformer,
    fold_ln: bool = True,
    center_writing_weights: bool = True,
    center_unembed: bool = True,
    fold_value_biases: bool = True,
    refactor_factored_attn_matrices: bool = False,
) -> None:
    """Apply the requested steps in TransformerLens's order; a step that is not exact for this model raises.

    Each step keeps the log-probabilities, so together they do (see each step for what else changes).
    On a model whose residual readers are not all LayerNorms (RMSNorm models), `center_writing_weights`
    would not be exact: it is skipped with a warning, as TransformerLens did, so notebooks that pass the
    same flags for every model still run (calling `center_writing_weights(model)` itself raises). Rotary
    and grouped-query models need `refactor_factored_attn_matrices=False`.
    """
    if center_writing_weights and not _all_layer_norms(model):
        warnings.warn(
            "center_writing_weights=True skipped: it is exact only when every reader of the residual stream is "
            f"a LayerNorm, and this model's norms are {model.cfg.normalization_type!r}. Pass "
            "center_writing_weights=False to silence this.",
            stacklevel=2,
        )
        center_writing_weights = False
    requested = {
        "fold_ln": fold_ln,
        "center_writing_weights": center_writing_weights,
        "center_unembed": center_unembed,
        "fold_value_biases": fold_value_biases,
        "refactor_factored_attn_matrices": refactor_factored_attn_matrices,
    }
    for flag, step in _STEPS:
        if requested[flag]:
            step(model)


# ---- helpers ----------------------------------------------------------------------------------


def _residual_norms(model: HookedTransformer) -> list[tuple[str, nn.Module]]:
    """The norms that read the residual stream, by name."""
    norms = [("ln_final", model.ln_final)]
    for i, block in enumerate(model.blocks):
        norms += [(f"blocks.{i}.{name}", getattr(block, name)) for name in ("ln1", "ln2") if hasattr(block, name)]
    return norms


def _all_layer_norms(model: HookedTransformer) -> bool:
    return all(isinstance(norm, LayerNorm) for _, norm in _residual_norms(model))


def _check_standard(model: HookedTransformer, step: str) -> None:
    """Refuse block structures the steps do not know (parallel blocks, extra norms, other norm formulas)."""
    if model.cfg.attn_only or model.cfg.positional_embedding_type == "shortformer":
        # Not only unwritten: folding ln1's weight into W_Q / W_K would also scale a shortformer's positions.
        raise NotImplementedError(
            f"{step} is not implemented for attn_only or shortformer models; leave weight processing off."
        )
    for i, block in enumerate(model.blocks):
        parts = {"block": (block, (Block,)), "attn": (block.attn, (Attention,)), "mlp": (block.mlp, (MLP, GatedMLP))}
        parts |= {name: (getattr(block, name), (LayerNorm, RMSNorm)) for name in ("ln1", "ln2")}
        for name, (module, known) in parts.items():
            if type(module) not in known:
                raise NotImplementedError(
                    f"{step} knows the pre-norm Block (ln1 -> attention, ln2 -> MLP) with LayerNorm or RMSNorm; "
                    f"layer {i}'s {name} is a {type(module).__name__}, whose weights it cannot process exactly."
                )
    if type(model.ln_final) not in (LayerNorm, RMSNorm):
        raise NotImplementedError(f"{step} cannot fold a final norm of type {type(model.ln_final).__name__}.")


def _fold_norm(norm: nn.Module, readers: list[tuple[nn.Module, str, str]], fold_biases: bool, center: bool) -> None:
    """Fold `norm`'s weight (and bias) into each (module, weight name, bias name) that reads its output."""
    w = _work(norm.w)
    is_layer_norm = isinstance(norm, LayerNorm)
    b = _work(norm.b) if is_layer_norm and norm.b is not None else None
    for module, weight_name, bias_name in readers:
        weight = getattr(module, weight_name)
        W = _work(weight)  # d_model is axis -2 of every reader: [..., d_model, d_out]
        if b is not None and fold_biases:
            bias = getattr(module, bias_name)
            _write(bias, _work(bias) + b @ W)
        W = W * w[:, None]
        if is_layer_norm and center:
            W = W - W.mean(-2, keepdim=True)
        _write(weight, W)
    if b is not None:
        if fold_biases:
            _write(norm.b, torch.zeros_like(norm.b))
        else:
            if bool(((w == 0) & (b != 0)).any()):
                raise ValueError(
                    "fold_layer_norm(fold_biases=False) keeps a LayerNorm bias as b / w, but this norm has w == 0 "
                    "where b != 0; fold the biases instead (fold_biases=True)."
                )
            _write(norm.b, torch.where(w == 0, torch.zeros_like(b), b / w))
    _write(norm.w, torch.ones_like(norm.w))


def _balanced_factors(A: Tensor, B: Tensor) -> tuple[Tensor, Tensor]:
    """For A [..., l, m] and B [..., m, r]: U sqrt(S) and sqrt(S) V^T, where A @ B = U S V^T."""
    U, S, V = FactoredMatrix(A, B).svd()
    root = S.sqrt()
    return U * root[..., None, :], root[..., :, None] * V.mH


def _weights(module: nn.Module) -> set[str]:
    return {name.rpartition(".")[2] for name, _ in module.named_parameters()}


def _require_biases(model: HookedTransformer, flag: str) -> None:
    """Give every module the biases config flag `flag` describes (zeros where absent), and set the flag."""
    if flag == "attn_qkv_bias":
        slots = [(block.attn, name) for block in model.blocks for name in ("b_Q", "b_K", "b_V")]
    elif flag == "attn_out_bias":
        slots = [(block.attn, "b_O") for block in model.blocks]
    elif flag == "mlp_bias":
        names = ("b_in", "b_gate", "b_out")
        slots = [(block.mlp, name) for block in model.blocks for name in names if "W" + name[1:] in _weights(block.mlp)]
    else:
        slots = [(model.unembed, "b_U")]
    for module, name in slots:
        # The module that holds the weight: a wrapper put in a component's place (circuit-tracer's) holds none.
        module = next((m for m in module.modules() if "W" + name[1:] in m._parameters), module)
        if getattr(module, name, None) is not None:
            continue
        weight = getattr(module, "W" + name[1:])
        # A bias has the weight's shape without its input axis; b_O [d_model] is summed over heads.
        shape = weight.shape[-1:] if name == "b_O" else weight.shape[:-2] + weight.shape[-1:]
        setattr(module, name, nn.Parameter(torch.zeros(shape, dtype=weight.dtype, device=weight.device)))
    if not getattr(model.cfg, flag):
        _set_cfg(model, **{flag: True})


def _untie(model: HookedTransformer) -> None:
    """Give a W_U that shares memory with W_E its own copy (same strides), before either is edited."""
    W_U, W_E = model.unembed.W_U, model.embed.W_E
    if W_U.untyped_storage().data_ptr() != W_E.untyped_storage().data_ptr():
        return
    model.unembed.W_U = nn.Parameter(W_U.detach().clone(), requires_grad=W_U.requires_grad)
    if model.cfg.tie_word_embeddings:
        _set_cfg(model, tie_word_embeddings=False)


def _set_cfg(model: HookedTransformer, **changes) -> None:
    """Replace the (frozen) config on the model and on every submodule that holds it."""
    cfg = model.cfg.replace(**changes)
    for module in model.modules():
        if hasattr(module, "cfg"):
            module.cfg = cfg


def _work(param: Tensor, dtype: torch.dtype = torch.float32) -> Tensor:
    """The parameter's values to compute with, in at least `dtype` (may share its memory: never written to)."""
    return param.detach().to(torch.promote_types(param.dtype, dtype))


def _write(param: Tensor, value: Tensor) -> None:
    """Overwrite in place, keeping the parameter's dtype and memory layout."""
    with torch.no_grad():
        param.copy_(value)


_STEPS = (
    ("fold_ln", fold_layer_norm),
    ("center_writing_weights", center_writing_weights),
    ("center_unembed", center_unembed),
    ("fold_value_biases", fold_value_biases),
    ("refactor_factored_attn_matrices", refactor_factored_attn_matrices),
)
