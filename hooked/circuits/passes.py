"""The linear model's forward passes of an attribution graph (attribute.py explains the graph).

`RetainedForward`: the prompt copied `batch_size` times through the model with attention patterns and norm
scales frozen and each MLP output a constant leaf (plus a skip transcoder's linear path), its graph kept
so that each backward pass gives the direct effects on one target per copy. `bias_run`: the same linear
model on the prompt with every source removed, patterns and scales fixed at the clean run's values.
"""

from __future__ import annotations

import torch
from torch import Tensor

from hooked.circuits.replacement import linear_skip
from hooked.dictionaries import SAE


class RetainedForward:
    """The linear model's forward on `batch_size` copies of the prompt, its graph kept for backward passes."""

    def __init__(self, model, tokens, in_names, out_names, by_layer, batch_size: int, embed: Tensor) -> None:
        self.captured: dict = {}
        self.embed, self.n_layers = embed, len(out_names)
        hooks = [("hook_embed", self._leaf("embed"))]
        for layer, (read, write) in enumerate(zip(in_names, out_names, strict=True)):
            hooks += [(read, self._capture(("in", layer))), (write, self._output(layer, by_layer.get(layer)))]
        flags = [(parameter, parameter.requires_grad) for parameter in model.parameters()]
        try:
            for parameter, _ in flags:  # gradients are wanted for activations only
                parameter.requires_grad_(False)
            with torch.enable_grad(), model.frozen(), model.hooks(fwd_hooks=hooks):
                # up to the unembedding's input: the logits themselves ([batch, pos, d_vocab]) are never needed
                residual = model(tokens.expand(batch_size, -1), stop_at_layer=model.cfg.n_layers)
                self.captured["final"] = model.ln_final(residual)
        finally:
            for parameter, flag in flags:
                parameter.requires_grad_(flag)

    def _capture(self, key):
        def hook(activation: Tensor, hook) -> None:
            self.captured[key] = activation

        return hook

    def _leaf(self, key):
        def hook(activation: Tensor, hook) -> Tensor:
            self.captured[key] = leaf = activation.detach().requires_grad_(True)
            return leaf

        return hook

    def _output(self, layer: int, transcoder: SAE | None):
        """The MLP's output as a constant source (a leaf whose gradient is read), plus a skip transcoder's
        linear path from its input."""

        def hook(activation: Tensor, hook) -> Tensor:
            self.captured[("out", layer)] = leaf = activation.detach().requires_grad_(True)
            skip = None if transcoder is None else transcoder.skip_term(self.captured[("in", layer)])
            return linear_skip(leaf, None if skip is None else skip.to(activation.dtype))

        return hook

    def rows(self, injections: list[tuple], parts: list[dict], n_sources: int) -> Tensor:
        """One backward pass: row b is the direct effects on the target whose reading vector is injected at
        (tensor key, position) in copy b, [len(injections), n_sources]."""
        grad_outputs: dict = {}
        for b, (key, pos, vector) in enumerate(injections):
            if key not in grad_outputs:
                grad_outputs[key] = torch.zeros_like(self.captured[key])
            grad_outputs[key][b, pos] = vector.to(grad_outputs[key].dtype)
        keys = list(grad_outputs)
        sources = [self.captured["embed"]] + [self.captured[("out", layer)] for layer in range(self.n_layers)]
        grads = torch.autograd.grad(
            [self.captured[key] for key in keys],
            sources,
            [grad_outputs[key] for key in keys],
            retain_graph=True,
            allow_unused=True,
        )
        n, n_pos = len(injections), self.embed.shape[0]
        row = torch.zeros(n, n_sources)
        first_error = n_sources - (self.n_layers + 1) * n_pos
        column = 0
        for layer, (part, grad) in enumerate(zip(parts, grads[1:], strict=True)):
            k = len(part["features"])
            if grad is not None:
                grad = grad[:n].float()
                if k:
                    at_features = grad[:, part["features"][:, 1].to(grad.device)]  # [n, k, d_out]
                    row[:, column : column + k] = torch.einsum("nkd,kd->nk", at_features, part["decoders"]).cpu()
                errors = slice(first_error + layer * n_pos, first_error + (layer + 1) * n_pos)
                row[:, errors] = torch.einsum("npd,pd->np", grad, part["error"]).cpu()
            column += k
        if grads[0] is not None:
            row[:, n_sources - n_pos :] = torch.einsum("npd,pd->np", grads[0][:n].float(), self.embed).cpu()
        return row


def bias_run(model, tokens, clean, parts, in_names, out_names, by_layer) -> dict:
    """The linear model's forward with every source removed: what each target reads from no node."""
    captured: dict = {}

    def fixed(value: Tensor):
        return lambda activation, hook: value.clone()

    def capture(key):
        return lambda activation, hook: captured.__setitem__(key, activation)

    def without_sources(layer: int):
        transcoder, part = by_layer.get(layer), parts[layer]

        def hook(activation: Tensor, hook) -> Tensor:
            constant = clean["out"][layer] - part["writes"] - part["error"]
            if transcoder is not None and transcoder.W_skip is not None:
                skip = transcoder.skip_term
                constant = constant - skip(clean["in"][layer]).float() + skip(captured[layer][0]).float()
            return constant[None].to(activation.dtype)

        return hook

    hooks = [(name, fixed(value)) for name, value in clean["frozen"].items()]
    hooks += [("hook_embed", lambda activation, hook: torch.zeros_like(activation))]
    hooks += [("unembed.hook_in", capture("final"))]
    for layer, (read, write) in enumerate(zip(in_names, out_names, strict=True)):
        hooks += [(read, capture(layer)), (write, without_sources(layer))]
    with torch.no_grad(), model.hooks(fwd_hooks=hooks):
        model(tokens[None])
        feature_bias = []
        for layer, part in enumerate(parts):
            if layer in by_layer and len(part["features"]):
                pre = by_layer[layer].pre_activation(captured[layer][0].to(by_layer[layer].dtype)).float()
                feature_bias.append(pre[part["features"][:, 1], part["features"][:, 2]].cpu())
    return {
        "features": torch.cat(feature_bias) if feature_bias else torch.zeros(0),
        "final": captured["final"][0, -1].float(),
    }
