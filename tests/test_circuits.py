"""Attribution graphs (hooked.circuits) checked against what must hold whatever the implementation:

- completeness: each feature's incoming edges plus its bias are its pre-activation, each logit's are its
  demeaned logit, where the edges come from backward passes, the bias from a forward pass with the sources
  removed and the values from the clean model, on several block layouts, with and without skip transcoders;
- every edge equals a gradient taken another way: through the transcoders spliced in by
  `replaced_mlps(gradient="skip")` (features constant to their inputs, so a feature's total derivative in
  that model is its direct effect);
- nodes are the transcoders' own activations and the model's own logits;
- influence equals the closed form w((I - A)^-1 - I); pruning keeps tokens and logits and exactly the
  nodes its thresholds name; the viewer JSON names only nodes it holds.
The comparison with circuit-tracer itself (same graph, same viewer file) is tests/clients/circuit_tracer.
"""

from __future__ import annotations

import json

import pytest
import torch

from hooked import HookedTransformer, HookedTransformerConfig, attribution_graph
from hooked.circuits import AttributionGraph, linear_skip, replaced_mlps
from hooked.dictionaries import SAE, TopKSAE

BASE = dict(n_layers=3, d_model=16, n_heads=4, d_head=4, d_mlp=24, d_vocab=50, n_ctx=32, seed=0)
MODELS = {
    "gpt2-like": dict(normalization_type="LN", act_fn="gelu", positional_embedding_type="standard"),
    "llama-like": dict(
        normalization_type="RMS", act_fn="silu", gated_mlp=True, positional_embedding_type="rotary", n_key_value_heads=2
    ),
    "gemma-like": dict(
        normalization_type="RMS",
        act_fn="gelu_pytorch_tanh",
        gated_mlp=True,
        positional_embedding_type="rotary",
        block_norms="pre_and_post",
        attn_scores_soft_cap=20.0,
        output_logits_soft_cap=10.0,
    ),  # fmt: skip
}
TOKENS = torch.tensor([0, 7, 3, 12, 7, 3, 40, 12])


def build(name: str) -> HookedTransformer:
    model = HookedTransformer(HookedTransformerConfig(**BASE, **MODELS[name]))
    with torch.no_grad():  # norm weights and biases away from 1 and 0, so that freezing them matters
        for key, param in model.named_parameters():
            if key.endswith((".w", ".b")) or ".b_" in key:
                param.add_(0.2 * torch.randn_like(param))
    return model


def transcoder(layer: int, read: str, write: str, cls=SAE, d_sae: int = 24, skip: bool = False, **kwargs) -> SAE:
    torch.manual_seed(100 + layer)
    tc = cls(16, d_sae, f"blocks.{layer}.{read}", hook_name_out=f"blocks.{layer}.{write}", skip=skip, **kwargs)
    with torch.no_grad():
        for param in tc.parameters():
            param.normal_(0, 0.3)
        tc.b_enc.fill_(0.05)
    return tc


def transcoders(read="hook_resid_mid", write="hook_mlp_out", **kwargs) -> list[SAE]:
    return [transcoder(layer, read, write, **kwargs) for layer in range(BASE["n_layers"])]


CASES = {
    "resid_mid->mlp_out": dict(read="hook_resid_mid", write="hook_mlp_out"),
    "ln2->mlp_out, skip": dict(read="ln2.hook_normalized", write="hook_mlp_out", skip=True),
    "topk": dict(read="hook_resid_mid", write="hook_mlp_out", cls=TopKSAE, k=5),
}


@pytest.fixture(scope="module", params=list(MODELS))
def model(request):
    return build(request.param)


@pytest.mark.parametrize("case", list(CASES))
def test_every_target_is_its_incoming_edges_plus_its_bias(model, case):
    graph = attribution_graph(model, TOKENS, transcoders(**CASES[case]), batch_size=16)
    assert graph.n_features > 20 and int((graph.adjacency != 0).sum()) > 200
    assert graph.completeness_error() < 2e-5
    assert torch.all(graph.dropped == 0)
    # the bias is a real share of each value (so the check is not edges == values by construction)
    assert graph.bias[graph.logit_nodes].abs().max() > 1e-3
    sources = slice(graph.error_nodes.start, graph.logit_nodes.start)
    assert torch.all(graph.adjacency[sources] == 0) and torch.all(graph.adjacency[:, graph.logit_nodes] == 0)


def test_nodes_are_the_transcoders_activations_and_the_models_logits(model):
    tcs = transcoders()
    graph = attribution_graph(model, TOKENS, tcs, max_n_logits=5, desired_logit_prob=1.0)
    _, cache = model.run_with_cache(TOKENS[None])
    expected = []
    for layer, tc in enumerate(tcs):
        acts = tc.encode(cache[tc.hook_name][0]).detach()
        acts[0] = 0  # position 0 is constant (constant_positions=1)
        expected += [(layer, pos, index, float(acts[pos, index])) for pos, index in torch.nonzero(acts).tolist()]
    assert graph.features.tolist() == [list(e[:3]) for e in expected]
    torch.testing.assert_close(graph.activations, torch.tensor([e[3] for e in expected]))
    unembed = cache["unembed.hook_out"][0, -1]  # before the soft cap
    capped = model(TOKENS[None])[0, -1]
    assert graph.logit_tokens.tolist() == torch.topk(capped, 5).indices.tolist()
    torch.testing.assert_close(graph.logit_probabilities, torch.softmax(capped, -1)[graph.logit_tokens].detach())
    torch.testing.assert_close(graph.values[graph.logit_nodes], (unembed - unembed.mean())[graph.logit_tokens].detach())


def test_every_edge_is_the_gradient_of_the_spliced_replacement_model(model):
    """Edges into logits and features against gradients taken through the transcoders spliced in: in that
    model, with gradient="skip", features are constant to their inputs, so the derivative of a target with
    respect to a feature's activation (or an embedding) is its direct effect alone."""
    tcs = transcoders(skip=True)
    graph = attribution_graph(model, TOKENS, tcs, constant_positions=0, desired_logit_prob=0.5)
    acts = [f"{tc.hook_name_out}.hook_sae_acts_post" for tc in tcs]
    inputs = [tc.hook_name for tc in tcs]
    seen: dict = {}

    def leaf(activation, hook):
        seen[hook.name] = out = activation.detach().requires_grad_(True)
        return out

    def read(activation, hook):
        seen[hook.name] = activation

    hooks = [(name, leaf) for name in acts + ["hook_embed"]] + [(name, read) for name in inputs + ["unembed.hook_in"]]
    with replaced_mlps(model, tcs, gradient="skip"):
        model.run_with_hooks(TOKENS[None], fwd_hooks=hooks)
    sources = [seen[name] for name in acts] + [seen["hook_embed"]]
    columns = list(range(graph.n_features)) + list(range(graph.token_nodes.start, graph.token_nodes.stop))

    def check(node: int, target: torch.Tensor) -> None:
        grads = torch.autograd.grad(target, sources, retain_graph=True, allow_unused=True)
        row = torch.zeros(graph.n_nodes)
        for i, (layer, pos, index) in enumerate(graph.features.tolist()):
            if grads[layer] is not None:
                row[i] = grads[layer][0, pos, index] * graph.activations[i]
        if grads[-1] is not None:
            row[graph.token_nodes] = (grads[-1][0] * seen["hook_embed"][0]).sum(-1).detach()
        torch.testing.assert_close(graph.adjacency[node, columns], row[columns], atol=2e-5, rtol=1e-4)

    W_U = model.unembed.W_U
    for i, token in enumerate(graph.logit_tokens.tolist()):  # a logit reads its demeaned unembedding direction
        check(graph.logit_nodes.start + i, seen["unembed.hook_in"][0, -1] @ (W_U[:, token] - W_U.mean(1)))
    for node in range(0, graph.n_features, 7):  # a feature reads its encoder row (its pre-activation, less b_enc)
        layer, pos, index = graph.features[node].tolist()
        check(node, seen[inputs[layer]][0, pos] @ tcs[layer].W_enc[:, index])


def test_a_feature_budget_keeps_the_graph_complete_and_counts_what_it_left_out(model):
    full = attribution_graph(model, TOKENS, transcoders(), batch_size=8)
    budget = attribution_graph(model, TOKENS, transcoders(), batch_size=8, max_feature_nodes=12)
    assert budget.n_features == 12 and budget.dropped[budget.logit_nodes].abs().max() > 0
    assert budget.completeness_error() < 2e-5
    kept = [full.feature_node(*f) for f in budget.features.tolist()]  # a subset of the full graph's features
    torch.testing.assert_close(budget.adjacency[budget.logit_nodes, :12], full.adjacency[full.logit_nodes][:, kept])


def test_influence_is_the_closed_form_and_pruning_keeps_what_it_names(model):
    graph = attribution_graph(model, TOKENS, transcoders())
    A = graph.adjacency.abs()
    A = A / A.sum(1, keepdim=True).clamp(min=1e-10)
    w = torch.zeros(graph.n_nodes)
    w[graph.logit_nodes] = graph.logit_probabilities
    closed = w @ torch.linalg.inv(torch.eye(graph.n_nodes) - A) - w
    torch.testing.assert_close(graph.influence(), closed, atol=1e-6, rtol=1e-4)

    pruned = graph.prune(node_threshold=0.8, edge_threshold=0.98)
    assert pruned.node_mask[graph.token_nodes.start :].all()
    inner = pruned.node_mask[: graph.token_nodes.start]
    assert 0 < int(inner.sum()) < graph.token_nodes.start
    # every kept feature or error writes along a kept edge, every kept feature reads along one
    assert pruned.edge_mask[:, : graph.token_nodes.start][:, inner].any(0).all()
    assert pruned.edge_mask[: graph.n_features][pruned.node_mask[: graph.n_features]].any(1).all()
    # no kept edge touches a dropped node
    assert not pruned.edge_mask[~pruned.node_mask].any() and not pruned.edge_mask[:, ~pruned.node_mask].any()
    everything = graph.prune(node_threshold=1.0, edge_threshold=1.0)
    assert int(everything.node_mask.sum()) >= int(pruned.node_mask.sum())


def test_the_viewer_file_names_only_its_nodes_and_the_graphs_weights(model, tmp_path):
    graph = attribution_graph(model, TOKENS, transcoders())
    data = graph.to_json(tmp_path, slug="t")
    assert json.loads((tmp_path / "t.json").read_text()) == data
    ids = [node["node_id"] for node in data["nodes"]]
    # circuit-tracer's scheme names a layer-0 feature i at p and layer i's error at p alike ("0_i_p"); the
    # viewer tells them apart by feature_type, so the pair is unique
    assert len({(node["node_id"], node["feature_type"]) for node in data["nodes"]}) == len(ids)
    kinds = {node["feature_type"] for node in data["nodes"]}
    assert {"embedding", "logit"} <= kinds
    assert sum(node["feature_type"] == "embedding" for node in data["nodes"]) == len(TOKENS)
    by_id = {f"{l}_{i}_{p}": n for n, (l, p, i) in enumerate(graph.features.tolist()) if l > 0}  # no clash
    assert data["links"] and all(link["source"] in ids and link["target"] in ids for link in data["links"])
    for link in data["links"]:
        if link["source"] in by_id and link["target"] in by_id:
            assert link["weight"] == pytest.approx(float(graph.adjacency[by_id[link["target"]], by_id[link["source"]]]))


def test_a_graph_saves_and_loads(model, tmp_path):
    graph = attribution_graph(model, TOKENS, transcoders())
    graph.save(tmp_path / "g.pt")
    again = AttributionGraph.load(tmp_path / "g.pt")
    assert torch.equal(again.adjacency, graph.adjacency) and again.describe(0) == graph.describe(0)


@pytest.mark.parametrize("gradient", ["skip", "replacement", "model"])
def test_replaced_mlps_keep_the_models_outputs_bit_for_bit(model, gradient):
    clean = model(TOKENS[None])
    with replaced_mlps(model, transcoders(skip=True), gradient=gradient, freeze=False):
        assert torch.equal(model(TOKENS[None]), clean)
    assert not model.acts_to_saes


def test_replacement_gradients_go_through_the_transcoders_not_the_mlps(model):
    """gradient="replacement": the gradient of the model whose MLP outputs are the transcoders' outputs plus
    constant errors, built here by hand from hooks."""
    tcs = transcoders()
    _, cache = model.run_with_cache(TOKENS[None])
    errors = {tc.hook_name_out: (cache[tc.hook_name_out] - tc(cache[tc.hook_name])).detach() for tc in tcs}
    inputs: dict = {}

    def read(activation, hook):
        inputs[hook.name] = activation

    def write(activation, hook):
        tc = next(t for t in tcs if t.hook_name_out == hook.name)
        return tc(inputs[tc.hook_name]) + errors[hook.name]

    def grad_of_embed(**kw):
        seen = {}

        def leaf(activation, hook):
            seen["x"] = out = activation.detach().requires_grad_(True)
            return out

        hooks = [("hook_embed", leaf)] + kw.get("hooks", [])
        logits = model.run_with_hooks(TOKENS[None], fwd_hooks=hooks)
        return torch.autograd.grad(logits[0, -1].logsumexp(-1), seen["x"])[0]

    by_hand = grad_of_embed(hooks=[(tc.hook_name, read) for tc in tcs] + [(tc.hook_name_out, write) for tc in tcs])
    with replaced_mlps(model, tcs, gradient="replacement", freeze=False):
        spliced = grad_of_embed()
    torch.testing.assert_close(spliced, by_hand, atol=1e-5, rtol=1e-4)
    assert not torch.allclose(spliced, grad_of_embed(), atol=1e-4)  # the model's own gradient differs


def test_linear_skip_is_the_value_with_the_skip_paths_gradient():
    x = torch.randn(3, requires_grad=True)
    mlp_out = (x * 3).exp()
    skip = 2 * x
    out = linear_skip(mlp_out, skip)
    assert torch.equal(out, mlp_out)
    (grad,) = torch.autograd.grad(out.sum(), x)
    assert torch.equal(grad, torch.full((3,), 2.0))


def test_bad_inputs_are_refused_by_name_and_leave_the_model_as_it_was():
    model = build("llama-like")
    flags = [p.requires_grad for p in model.parameters()]
    sae = SAE(16, 8, "blocks.0.hook_resid_mid")
    with pytest.raises(TypeError, match="not a transcoder"):
        attribution_graph(model, TOKENS, [sae])
    with pytest.raises(ValueError, match="Two transcoders for layer 0"):
        attribution_graph(model, TOKENS, [transcoder(0, "hook_resid_mid", "hook_mlp_out")] * 2)
    with pytest.raises(ValueError, match="one prompt"):
        attribution_graph(model, TOKENS[None].expand(2, -1), transcoders())
    mixed = [transcoder(0, "hook_resid_mid", "hook_mlp_out"), transcoder(1, "ln2.hook_normalized", "hook_mlp_out")]
    with pytest.raises(ValueError, match="different hooks"):
        attribution_graph(model, TOKENS, mixed)
    with pytest.raises(ValueError, match="one block"):
        attribution_graph(model, TOKENS, [SAE(16, 8, "blocks.0.hook_resid_mid", hook_name_out="blocks.1.hook_mlp_out")])

    def explode(activation, hook):
        raise RuntimeError("boom")

    model.blocks[1].hook_mlp_out.add_hook(explode)  # fails inside the retained forward
    with pytest.raises(RuntimeError, match="boom"):
        attribution_graph(model, TOKENS, transcoders())
    model.reset_hooks()
    assert [p.requires_grad for p in model.parameters()] == flags
    assert not any(point.has_hooks for point in model.hook_dict.values())
    graph = attribution_graph(model, TOKENS, transcoders()[:2])  # layer 2 without one: its MLP is all error
    assert graph.completeness_error() < 2e-5 and not (graph.features[:, 0] == 2).any()
