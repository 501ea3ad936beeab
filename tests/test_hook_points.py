"""The hook system (HookPoint, HookedRootModule) on the seed notebook's two-layer toy model.

The model is the one from the Easy-Transformer hook-points notebook, with its hook names:

    hook_in(x) -> layer1: hook_square(x*x) + 3 -> hook_mid -> layer2: hook_square(m*m) - 4 -> hook_out

Every expected number below is worked out by hand from those two formulas, never read off the code.
For x = 2:  square1 = 4, mid = 7, square2 = 49, out = 45.
For x = 3:  square1 = 9, mid = 12, square2 = 144, out = 140.
For x = 1:  square1 = 1, mid = 4, square2 = 16, out = 12.
Derivatives of out = ((x^2 + 3)^2 - 4):  d out/d square2 = 1, d out/d mid = 2*mid,
d out/d square1 = 2*mid (mid = square1 + 3), d out/d x = 2*mid * 2x.  At x = 2: 1, 14, 14, 56.
"""

from __future__ import annotations

import pytest
import torch
from torch import nn

from hooked import ActivationCache, HookedRootModule, HookPoint

NAMES = ["hook_in", "layer1.hook_square", "hook_mid", "layer2.hook_square", "hook_out"]


class SquareAdd(nn.Module):
    def __init__(self, offset: float):
        super().__init__()
        self.offset = nn.Parameter(torch.tensor(offset))
        self.hook_square = HookPoint()

    def forward(self, x):
        square = self.hook_square(x * x)
        return self.offset + square


class TwoLayerModel(HookedRootModule):
    def __init__(self):
        super().__init__()
        self.layer1 = SquareAdd(3.0)
        self.layer2 = SquareAdd(-4.0)
        self.hook_in = HookPoint()
        self.hook_mid = HookPoint()
        self.hook_out = HookPoint()
        self.setup()

    def forward(self, x):
        x_in = self.hook_in(x)
        x_mid = self.hook_mid(self.layer1(x_in))
        return self.hook_out(self.layer2(x_mid))


def hand_values(x: float) -> dict[str, float]:
    """The activation at every hook for input x, by the model's two formulas."""
    square1 = x * x
    mid = square1 + 3
    square2 = mid * mid
    return {
        "hook_in": x,
        "layer1.hook_square": square1,
        "hook_mid": mid,
        "layer2.hook_square": square2,
        "hook_out": square2 - 4,
    }


@pytest.fixture
def model():
    return TwoLayerModel()


def t(*values) -> torch.Tensor:
    return torch.tensor(values, dtype=torch.float32)


def assert_all_hooks_gone(model: TwoLayerModel) -> None:
    for name, hp in model.hook_dict.items():
        assert not hp.has_hooks, f"{name} still has hooks"
        assert not hp._forward_hooks and not hp._backward_hooks, f"{name} still has torch hooks"


def assert_plain_forward(model: TwoLayerModel) -> None:
    """A plain forward gives the original numbers (no hook left behind changes anything)."""
    torch.testing.assert_close(model(t(2.0, 3.0)), t(45.0, 140.0), rtol=0, atol=0)


# ---- the model and naming -------------------------------------------------------------------


def test_hand_values_helper_matches_the_worked_examples():
    # The helper is checked against the numbers in the module docstring, so it cannot drift.
    assert hand_values(2.0) == {
        "hook_in": 2,
        "layer1.hook_square": 4,
        "hook_mid": 7,
        "layer2.hook_square": 49,
        "hook_out": 45,
    }
    assert hand_values(3.0)["hook_out"] == 140
    assert hand_values(1.0)["hook_out"] == 12


def test_setup_names_every_hook_point(model):
    assert set(model.hook_dict) == set(NAMES)
    assert model.hook_dict["layer1.hook_square"] is model.layer1.hook_square
    assert model.hook_dict["hook_mid"] is model.hook_mid
    assert model.mod_dict["layer2"] is model.layer2
    assert model.mod_dict["layer2.hook_square"] is model.layer2.hook_square
    for name, hp in model.hook_dict.items():
        assert hp.name == name
    assert list(model.hook_points()) == list(model.hook_dict.values())


def test_plain_forward(model):
    assert_plain_forward(model)


def test_hook_sees_name_and_runs_in_forward_order(model):
    seen = []

    def record(act, hook):
        seen.append((hook.name, act.clone()))

    model.run_with_hooks(t(2.0), fwd_hooks=[(name, record) for name in reversed(NAMES)])
    assert [name for name, _ in seen] == NAMES
    expected = hand_values(2.0)
    for name, act in seen:
        torch.testing.assert_close(act, t(expected[name]), rtol=0, atol=0)


# ---- run_with_cache --------------------------------------------------------------------------


def test_run_with_cache_stores_every_hook(model):
    x = t(2.0, 3.0, 1.0)
    out, cache = model.run_with_cache(x)
    assert isinstance(cache, ActivationCache)
    assert set(cache.keys()) == set(NAMES)
    for name in NAMES:
        expected = t(*(hand_values(v)[name] for v in (2.0, 3.0, 1.0)))
        torch.testing.assert_close(cache[name], expected, rtol=0, atol=0)
    torch.testing.assert_close(out, t(45.0, 140.0, 12.0), rtol=0, atol=0)
    assert_all_hooks_gone(model)


def test_cache_all_and_cache_some_fill_a_dict_until_reset(model):
    """EasyTransformer's permanent-until-reset caching: cache_all(cache), then every forward fills it."""
    everything, some = {}, {}
    model.cache_all(everything)
    model.cache_some(some, lambda name: name.endswith("mid"))
    model(t(2.0, 3.0, 1.0))
    assert set(everything) == set(NAMES) and set(some) == {n for n in NAMES if n.endswith("mid")}
    for name in NAMES:
        torch.testing.assert_close(everything[name], t(*(hand_values(v)[name] for v in (2.0, 3.0, 1.0))))
    model.reset_hooks()
    assert_all_hooks_gone(model)


def test_run_with_cache_stores_detached_values(model):
    x = t(2.0).requires_grad_(True)
    out, cache = model.run_with_cache(x)
    assert out.requires_grad  # the output itself is the live graph
    for name in NAMES:
        assert not cache[name].requires_grad, name


def test_run_with_cache_output_is_unchanged(model):
    out, _ = model.run_with_cache(t(1.0, 2.0))
    torch.testing.assert_close(out, t(12.0, 45.0), rtol=0, atol=0)


@pytest.mark.parametrize(
    "names_filter, kept",
    [
        ("hook_mid", {"hook_mid"}),
        (["hook_in", "layer2.hook_square"], {"hook_in", "layer2.hook_square"}),
        (("layer1.hook_square",), {"layer1.hook_square"}),
        (lambda name: name.endswith("hook_square"), {"layer1.hook_square", "layer2.hook_square"}),
        (lambda name: name.startswith("hook_"), {"hook_in", "hook_mid", "hook_out"}),
        (None, set(NAMES)),
    ],
    ids=["name", "list", "tuple", "predicate_squares", "predicate_top", "none"],
)
def test_run_with_cache_names_filter(model, names_filter, kept):
    out, cache = model.run_with_cache(t(2.0), names_filter=names_filter)
    assert set(cache.keys()) == kept
    expected = hand_values(2.0)
    for name in kept:
        torch.testing.assert_close(cache[name], t(expected[name]), rtol=0, atol=0)
    torch.testing.assert_close(out, t(45.0), rtol=0, atol=0)
    assert_all_hooks_gone(model)


def test_run_with_cache_device(model):
    # The meta device exists everywhere, so this proves `device` is applied without needing a GPU.
    _, cache = model.run_with_cache(t(2.0), device="meta")
    assert {cache[name].device.type for name in NAMES} == {"meta"}
    _, cache = model.run_with_cache(t(2.0), device=torch.device("cpu"))
    assert {cache[name].device.type for name in NAMES} == {"cpu"}
    torch.testing.assert_close(cache["hook_mid"], t(7.0), rtol=0, atol=0)


def test_run_with_cache_remove_batch_dim(model):
    x = torch.tensor([[2.0, 3.0]])  # batch of 1, two positions
    out, cache = model.run_with_cache(x, remove_batch_dim=True)
    assert out.shape == (1, 2)  # only the cache loses the batch axis
    for name in NAMES:
        assert cache[name].shape == (2,), name
        torch.testing.assert_close(cache[name], t(hand_values(2.0)[name], hand_values(3.0)[name]), rtol=0, atol=0)
    assert cache.has_batch_dim is False

    _, with_batch = model.run_with_cache(x)
    assert with_batch["hook_out"].shape == (1, 2)
    assert with_batch.has_batch_dim is True


def test_run_with_cache_pos_slice(model):
    x = torch.tensor([[1.0, 2.0, 3.0]])  # [batch 1, 3 positions]
    _, cache = model.run_with_cache(x, pos_slice=[0, 2])
    torch.testing.assert_close(cache["hook_mid"], torch.tensor([[4.0, 12.0]]), rtol=0, atol=0)
    torch.testing.assert_close(cache["hook_out"], torch.tensor([[12.0, 140.0]]), rtol=0, atol=0)
    _, cache = model.run_with_cache(x, pos_slice=(1, 3))
    torch.testing.assert_close(cache["layer2.hook_square"], torch.tensor([[49.0, 144.0]]), rtol=0, atol=0)


def test_run_with_cache_return_dict(model):
    _, cache = model.run_with_cache(t(2.0), return_cache_object=False)
    assert type(cache) is dict
    torch.testing.assert_close(cache["layer1.hook_square"], t(4.0), rtol=0, atol=0)


# ---- editing activations with run_with_hooks -----------------------------------------------


def test_replacement_of_middle_activation_changes_downstream(model):
    def set_mid_to_10(act, hook):
        return torch.full_like(act, 10.0)

    # mid := 10 -> square2 = 100 -> out = 96, for every input.
    out, cache = None, {}

    def grab(act, hook):
        cache[hook.name] = act.clone()

    out = model.run_with_hooks(
        t(2.0, 3.0),
        fwd_hooks=[("hook_mid", set_mid_to_10), ("layer2.hook_square", grab), ("hook_out", grab)],
    )
    torch.testing.assert_close(out, t(96.0, 96.0), rtol=0, atol=0)
    torch.testing.assert_close(cache["layer2.hook_square"], t(100.0, 100.0), rtol=0, atol=0)
    torch.testing.assert_close(cache["hook_out"], t(96.0, 96.0), rtol=0, atol=0)
    assert_all_hooks_gone(model)
    assert_plain_forward(model)


def test_replacement_of_layer1_square(model):
    # square1 := -square1: x=2 -> -4 -> mid -1 -> square2 1 -> out -3;  x=3 -> -9 -> -6 -> 36 -> 32
    out = model.run_with_hooks(t(2.0, 3.0), fwd_hooks=[("layer1.hook_square", lambda act, hook: -act)])
    torch.testing.assert_close(out, t(-3.0, 32.0), rtol=0, atol=0)
    assert_plain_forward(model)


def test_in_place_edit_with_none_return(model):
    def double_in_place(act, hook):
        act.mul_(2)  # returns None on purpose

    # square1 doubled: x=2 -> 8 -> mid 11 -> 121 -> out 117;  x=3 -> 18 -> 21 -> 441 -> 437
    out = model.run_with_hooks(t(2.0, 3.0), fwd_hooks=[("layer1.hook_square", double_in_place)])
    torch.testing.assert_close(out, t(117.0, 437.0), rtol=0, atol=0)
    assert_all_hooks_gone(model)
    assert_plain_forward(model)


def test_in_place_edit_of_mid_under_no_grad(model):
    def add_one(act, hook):
        act += 1
        return None

    # mid 7 -> 8 -> square2 64 -> out 60
    with torch.no_grad():
        out = model.run_with_hooks(t(2.0), fwd_hooks=[("hook_mid", add_one)])
    torch.testing.assert_close(out, t(60.0), rtol=0, atol=0)
    assert_plain_forward(model)


def test_hook_returning_none_without_editing_keeps_values(model):
    calls = []
    out = model.run_with_hooks(t(2.0), fwd_hooks=[(name, lambda act, hook: calls.append(hook.name)) for name in NAMES])
    assert calls == NAMES
    torch.testing.assert_close(out, t(45.0), rtol=0, atol=0)


def test_run_with_hooks_accepts_a_filter(model):
    # Zero both squares: layer1 out = 3, layer2 out = 0 - 4 = -4
    out = model.run_with_hooks(t(2.0, 3.0), fwd_hooks=[(lambda n: n.endswith("hook_square"), lambda a, h: a * 0)])
    torch.testing.assert_close(out, t(-4.0, -4.0), rtol=0, atol=0)
    assert_all_hooks_gone(model)


def test_edited_values_show_in_the_cache(model):
    # A hook attached in a surrounding context applies to run_with_cache: mid := 1 -> 1 -> -3
    with model.hooks(fwd_hooks=[("hook_mid", lambda a, h: torch.ones_like(a))]):
        out, cache = model.run_with_cache(t(2.0))
    torch.testing.assert_close(cache["layer1.hook_square"], t(4.0), rtol=0, atol=0)
    torch.testing.assert_close(cache["hook_mid"], t(1.0), rtol=0, atol=0)
    torch.testing.assert_close(cache["layer2.hook_square"], t(1.0), rtol=0, atol=0)
    torch.testing.assert_close(out, t(-3.0), rtol=0, atol=0)
    assert_all_hooks_gone(model)


# ---- backward hooks ----------------------------------------------------------------------------


def test_backward_hooks_receive_the_activation_gradient(model):
    grads = {}

    def record(grad, hook):
        grads[hook.name] = grad.clone()

    x = t(2.0, 3.0).requires_grad_(True)
    out = model.run_with_hooks(x, bwd_hooks=[(name, record) for name in NAMES], reset_hooks_end=False)
    assert grads == {}  # nothing before backward
    out.sum().backward()
    model.reset_hooks()

    # x=2: mid 7; x=3: mid 12.  d/d square2 = 1, d/d mid = d/d square1 = 2*mid, d/dx = 2*mid*2x
    torch.testing.assert_close(grads["hook_out"], t(1.0, 1.0), rtol=0, atol=0)
    torch.testing.assert_close(grads["layer2.hook_square"], t(1.0, 1.0), rtol=0, atol=0)
    torch.testing.assert_close(grads["hook_mid"], t(14.0, 24.0), rtol=0, atol=0)
    torch.testing.assert_close(grads["layer1.hook_square"], t(14.0, 24.0), rtol=0, atol=0)
    torch.testing.assert_close(grads["hook_in"], t(56.0, 144.0), rtol=0, atol=0)
    torch.testing.assert_close(x.grad, t(56.0, 144.0), rtol=0, atol=0)
    assert_all_hooks_gone(model)


def test_backward_hook_in_hooks_context(model):
    grads = []
    x = t(1.0).requires_grad_(True)
    with model.hooks(bwd_hooks=[("layer1.hook_square", lambda g, h: grads.append(g.clone()))]):
        model(x).sum().backward()
    # x=1: mid 4 -> d out / d square1 = 8
    assert len(grads) == 1
    torch.testing.assert_close(grads[0], t(8.0), rtol=0, atol=0)
    assert_all_hooks_gone(model)


def test_a_backward_hook_fires_in_the_backward_of_the_forward_it_saw(model):
    """TransformerLens's behaviour (circuit-tracer relies on it): a backward hook attached during a forward
    runs when that forward's output is back-propagated, also after its hooks() block ended; a forward run
    after the block does not see it."""
    grads = []
    x = t(1.0).requires_grad_(True)
    with model.hooks(bwd_hooks=[("layer1.hook_square", lambda g, h: grads.append(g.clone()) or g * 0)]):
        out = model(x).sum()
    assert_all_hooks_gone(model)
    out.backward()
    torch.testing.assert_close(grads, [t(8.0)], rtol=0, atol=0)  # x=1: d out / d square1 = 8
    assert x.grad.item() == 0  # the hook's zero gradient replaced the real one
    x.grad = None
    model(x).sum().backward()  # a later forward: no hook
    assert len(grads) == 1 and x.grad.item() != 0


def test_run_with_cache_incl_bwd(model):
    x = torch.tensor(2.0, requires_grad=True)  # scalar in, scalar out
    out, cache = model.run_with_cache(x, incl_bwd=True)
    torch.testing.assert_close(out, torch.tensor(45.0), rtol=0, atol=0)
    assert set(cache.keys()) == set(NAMES) | {name + "_grad" for name in NAMES}
    expected_grads = {
        "hook_out": 1.0,
        "layer2.hook_square": 1.0,
        "hook_mid": 14.0,
        "layer1.hook_square": 14.0,
        "hook_in": 56.0,
    }
    for name, grad in expected_grads.items():
        torch.testing.assert_close(cache[name + "_grad"], torch.tensor(grad), rtol=0, atol=0)
    for name, value in hand_values(2.0).items():
        torch.testing.assert_close(cache[name], torch.tensor(float(value)), rtol=0, atol=0)
    # backward really ran: the input and the offsets got their gradients
    torch.testing.assert_close(x.grad, torch.tensor(56.0), rtol=0, atol=0)
    torch.testing.assert_close(model.layer1.offset.grad, torch.tensor(14.0), rtol=0, atol=0)
    torch.testing.assert_close(model.layer2.offset.grad, torch.tensor(1.0), rtol=0, atol=0)
    assert_all_hooks_gone(model)


def test_run_with_cache_incl_bwd_with_filter(model):
    x = torch.tensor(3.0, requires_grad=True)
    _, cache = model.run_with_cache(x, incl_bwd=True, names_filter="hook_mid")
    assert set(cache.keys()) == {"hook_mid", "hook_mid_grad"}
    torch.testing.assert_close(cache["hook_mid"], torch.tensor(12.0), rtol=0, atol=0)
    torch.testing.assert_close(cache["hook_mid_grad"], torch.tensor(24.0), rtol=0, atol=0)


def test_backward_hook_replacement_changes_input_grad(model):
    x = t(2.0).requires_grad_(True)
    model.run_with_hooks(x, bwd_hooks=[("layer2.hook_square", lambda g, h: g * 10)], reset_hooks_end=False)
    model(x).sum().backward()  # a second forward under the still-attached hook
    model.reset_hooks()
    # d out/d square2 becomes 10 -> d/d mid = 10 * 14 = 140 -> d/dx = 140 * 4 = 560
    torch.testing.assert_close(x.grad, t(560.0), rtol=0, atol=0)
    assert_all_hooks_gone(model)


def test_backward_replacement_propagates_to_upstream_hooks(model):
    seen = {}

    def record(grad, hook):
        seen[hook.name] = grad.clone()

    x = t(3.0).requires_grad_(True)
    with model.hooks(
        bwd_hooks=[("hook_mid", lambda g, h: torch.ones_like(g)), ("layer1.hook_square", record), ("hook_in", record)]
    ):
        model(x).sum().backward()
    # d/d mid forced to 1 -> d/d square1 = 1 -> d/dx = 1 * 2x = 6
    torch.testing.assert_close(seen["layer1.hook_square"], t(1.0), rtol=0, atol=0)
    torch.testing.assert_close(seen["hook_in"], t(6.0), rtol=0, atol=0)
    torch.testing.assert_close(x.grad, t(6.0), rtol=0, atol=0)

    # And with no hooks, the hand gradient again: 2*mid*2x = 24 * 6 = 144
    x2 = t(3.0).requires_grad_(True)
    model(x2).sum().backward()
    torch.testing.assert_close(x2.grad, t(144.0), rtol=0, atol=0)


def test_backward_hook_zeroing_gradient(model):
    x = t(2.0).requires_grad_(True)
    with model.hooks(bwd_hooks=[("layer1.hook_square", lambda g, h: torch.zeros_like(g))]):
        model(x).sum().backward()
    torch.testing.assert_close(x.grad, t(0.0), rtol=0, atol=0)
    # the offset of layer1 sits after hook_square, so it still gets d out/d mid = 14
    torch.testing.assert_close(model.layer1.offset.grad, torch.tensor(14.0), rtol=0, atol=0)


def test_forward_and_backward_hooks_together(model):
    # Forward edit mid := mid + 1 (7 -> 8), so d out/d mid = 16; the bwd hook must see 16.
    seen = []
    x = t(2.0).requires_grad_(True)
    with model.hooks(
        fwd_hooks=[("hook_mid", lambda a, h: a + 1)], bwd_hooks=[("hook_mid", lambda g, h: seen.append(g.clone()))]
    ):
        out = model(x)
        out.sum().backward()
    torch.testing.assert_close(out, t(60.0), rtol=0, atol=0)
    torch.testing.assert_close(seen[0], t(16.0), rtol=0, atol=0)
    torch.testing.assert_close(x.grad, t(64.0), rtol=0, atol=0)  # 16 * 2x


# ---- hook lifetime -----------------------------------------------------------------------------


def test_hooks_context_active_inside_and_removed_after(model):
    with model.hooks(fwd_hooks=[("hook_mid", lambda a, h: a * 0)]) as m:
        assert m is model
        assert model.hook_mid.has_hooks
        # mid := 0 -> out = -4
        torch.testing.assert_close(model(t(2.0, 3.0)), t(-4.0, -4.0), rtol=0, atol=0)
        torch.testing.assert_close(model(t(1.0)), t(-4.0), rtol=0, atol=0)
    assert_all_hooks_gone(model)
    assert_plain_forward(model)


def test_hooks_context_removed_when_body_raises(model):
    with pytest.raises(RuntimeError, match="body failed"):
        with model.hooks(fwd_hooks=[("hook_mid", lambda a, h: a * 0)], bwd_hooks=[("hook_in", lambda g, h: None)]):
            assert model.hook_mid.has_hooks and model.hook_in.has_hooks
            raise RuntimeError("body failed")
    assert_all_hooks_gone(model)
    assert_plain_forward(model)


def test_hooks_context_reset_hooks_end_false(model):
    with model.hooks(fwd_hooks=[("hook_mid", lambda a, h: a * 0)], reset_hooks_end=False):
        pass
    assert model.hook_mid.has_hooks
    torch.testing.assert_close(model(t(2.0)), t(-4.0), rtol=0, atol=0)
    model.reset_hooks()
    assert_all_hooks_gone(model)
    assert_plain_forward(model)


def test_run_with_hooks_removes_hooks_when_forward_raises(model):
    def boom(act, hook):
        raise ValueError("hook exploded")

    with pytest.raises(ValueError, match="hook exploded"):
        model.run_with_hooks(t(2.0), fwd_hooks=[("hook_in", lambda a, h: a * 5), ("layer2.hook_square", boom)])
    assert_all_hooks_gone(model)
    assert_plain_forward(model)


def test_run_with_hooks_removes_hooks_added_before_a_bad_name(model):
    with pytest.raises(KeyError):
        model.run_with_hooks(t(2.0), fwd_hooks=[("hook_in", lambda a, h: a * 5), ("hook_nope", lambda a, h: a)])
    assert_all_hooks_gone(model)
    assert_plain_forward(model)


def test_run_with_hooks_reset_hooks_end_false_keeps_hooks_until_reset(model):
    # mid := mid * 2: x=2 -> 14 -> 196 -> 192
    out = model.run_with_hooks(t(2.0), fwd_hooks=[("hook_mid", lambda a, h: a * 2)], reset_hooks_end=False)
    torch.testing.assert_close(out, t(192.0), rtol=0, atol=0)
    assert model.hook_mid.has_hooks
    torch.testing.assert_close(model(t(2.0)), t(192.0), rtol=0, atol=0)  # still active
    model.reset_hooks()
    assert_all_hooks_gone(model)
    assert_plain_forward(model)


def test_nested_call_keeps_the_enclosing_contexts_hooks(model):
    # An inner run_with_hooks / run_with_cache removes only its own hooks, not the outer block's.
    with model.hooks(fwd_hooks=[("hook_mid", lambda a, h: a * 2)]):  # x=2: mid 14 -> out 192
        inner = model.run_with_hooks(t(2.0), fwd_hooks=[("hook_out", lambda a, h: a + 1)])
        torch.testing.assert_close(inner, t(193.0), rtol=0, atol=0)
        assert model.hook_mid.has_hooks and not model.hook_out.has_hooks
        _, cache = model.run_with_cache(t(2.0))
        torch.testing.assert_close(cache["hook_mid"], t(14.0), rtol=0, atol=0)
        torch.testing.assert_close(model(t(2.0)), t(192.0), rtol=0, atol=0)  # outer hook still there
    assert_all_hooks_gone(model)
    assert_plain_forward(model)


def test_directly_added_hook_survives_a_temporary_call(model):
    model.add_hook("hook_out", lambda a, h: a + 1)  # out 45 -> 46
    _, cache = model.run_with_cache(t(2.0))
    torch.testing.assert_close(cache["hook_out"], t(46.0), rtol=0, atol=0)
    model.run_with_hooks(t(2.0), fwd_hooks=[("hook_mid", lambda a, h: a)])
    torch.testing.assert_close(model(t(2.0)), t(46.0), rtol=0, atol=0)
    model.reset_hooks()
    assert_plain_forward(model)


def test_kept_hooks_survive_a_later_context(model):
    # A reset_hooks_end=False call's hooks must not be removed when a later context exits.
    model.run_with_hooks(t(2.0), fwd_hooks=[("hook_out", lambda a, h: a + 1)], reset_hooks_end=False)
    with model.hooks(fwd_hooks=[("hook_mid", lambda a, h: a)]):
        pass
    model.run_with_hooks(t(2.0), fwd_hooks=[("hook_in", lambda a, h: a)])
    torch.testing.assert_close(model(t(2.0)), t(46.0), rtol=0, atol=0)
    model.reset_hooks()
    assert_plain_forward(model)


def test_permanent_hooks(model):
    model.add_hook("hook_out", lambda a, h: a + 100, is_permanent=True)  # 45 -> 145
    model.add_hook("hook_mid", lambda a, h: a * 0)  # temporary: would give -4 (+100 = 96)
    torch.testing.assert_close(model(t(2.0)), t(96.0), rtol=0, atol=0)
    model.reset_hooks()
    assert model.hook_out.has_hooks and not model.hook_mid.has_hooks
    torch.testing.assert_close(model(t(2.0)), t(145.0), rtol=0, atol=0)
    # temporary calls do not remove it either, and it applies inside them
    out, cache = model.run_with_cache(t(3.0))
    torch.testing.assert_close(out, t(240.0), rtol=0, atol=0)
    torch.testing.assert_close(cache["hook_out"], t(240.0), rtol=0, atol=0)
    torch.testing.assert_close(model(t(2.0)), t(145.0), rtol=0, atol=0)
    model.reset_hooks(including_permanent=True)
    assert_all_hooks_gone(model)
    assert_plain_forward(model)


def test_add_perma_hook(model):
    model.add_perma_hook("layer1.hook_square", lambda a, h: a * 0)  # square1 := 0 -> mid 3 -> 9 -> 5
    model.reset_hooks()
    torch.testing.assert_close(model(t(2.0)), t(5.0), rtol=0, atol=0)
    model.reset_hooks(including_permanent=True)
    assert_plain_forward(model)


def test_reset_hooks_by_direction(model):
    model.add_hook("hook_mid", lambda a, h: a * 0)
    model.add_hook("hook_mid", lambda g, h: None, dir="bwd")
    model.reset_hooks(direction="bwd")
    assert model.hook_mid.has_hooks and not model.hook_mid._backward_hooks
    torch.testing.assert_close(model(t(2.0)), t(-4.0), rtol=0, atol=0)
    model.reset_hooks(direction="fwd")
    assert_all_hooks_gone(model)


def test_prepend_runs_before_existing_hooks(model):
    order = []

    def make(tag, fn):
        def hook(act, hook):
            order.append(tag)
            return fn(act)

        return hook

    model.add_hook("hook_mid", make("A", lambda a: a * 2))
    model.add_hook("hook_mid", make("B", lambda a: a + 1), prepend=True)
    model.add_hook("hook_mid", make("C", lambda a: a))
    out = model(t(2.0))
    assert order == ["B", "A", "C"]
    # B first: 7 + 1 = 8, then A: 16 -> square2 256 -> out 252 (A first would give 15 -> 221)
    torch.testing.assert_close(out, t(252.0), rtol=0, atol=0)
    model.reset_hooks()


def test_prepend_backward(model):
    order = []
    x = t(2.0).requires_grad_(True)
    model.add_hook("hook_mid", lambda g, h: order.append("first"), dir="bwd")
    model.add_hook("hook_mid", lambda g, h: order.append("prepended"), dir="bwd", prepend=True)
    model(x).sum().backward()
    model.reset_hooks()
    assert order == ["prepended", "first"]


# ---- hook.ctx, hook.name, hook.layer() ---------------------------------------------------------


def count_calls(act, hook):
    hook.ctx["n"] = hook.ctx.get("n", 0) + 1


def test_ctx_persists_while_attached_and_reset_clears_it(model):
    with model.hooks(fwd_hooks=[("hook_mid", count_calls)]):
        for _ in range(3):
            model(t(2.0))
        assert model.hook_mid.ctx == {"n": 3}
    model.reset_hooks()
    assert model.hook_mid.ctx == {}


def test_ctx_persists_across_forwards_with_reset_hooks_end_false(model):
    model.run_with_hooks(t(2.0), fwd_hooks=[("hook_mid", count_calls)], reset_hooks_end=False)
    model(t(2.0))
    assert model.hook_mid.ctx == {"n": 2}
    model.reset_hooks()
    assert model.hook_mid.ctx == {}
    assert_all_hooks_gone(model)


def test_ctx_clear_contexts_flag(model):
    # TransformerLens semantics: contexts survive a temporary call unless clear_contexts=True.
    model.run_with_hooks(t(2.0), fwd_hooks=[("hook_mid", count_calls)])
    assert model.hook_mid.ctx == {"n": 1}
    model.run_with_hooks(t(2.0), fwd_hooks=[("hook_mid", count_calls)], clear_contexts=True)
    assert model.hook_mid.ctx == {}
    model.hook_mid.ctx["k"] = 1
    model.reset_hooks(clear_contexts=False)
    assert model.hook_mid.ctx == {"k": 1}
    model.reset_hooks()
    assert model.hook_mid.ctx == {}


def test_ctx_is_per_hook_point(model):
    with model.hooks(fwd_hooks=[(lambda n: True, count_calls)]):
        model(t(2.0))
        model(t(3.0))
        for hp in model.hook_points():
            assert hp.ctx == {"n": 2}, hp.name
    model.reset_hooks()
    assert all(hp.ctx == {} for hp in model.hook_points())


class Leaf(nn.Module):
    def __init__(self):
        super().__init__()
        self.hook_y = HookPoint()

    def forward(self, x):
        return self.hook_y(x)


class Block(nn.Module):
    def __init__(self):
        super().__init__()
        self.x = Leaf()

    def forward(self, x):
        return self.x(x) + 1


class Stack(HookedRootModule):
    def __init__(self, n: int = 12):
        super().__init__()
        self.hook_embed = HookPoint()
        self.blocks = nn.ModuleList([Block() for _ in range(n)])
        self.setup()

    def forward(self, x):
        x = self.hook_embed(x)
        for block in self.blocks:
            x = block(x)
        return x


def test_hook_layer_and_name():
    stack = Stack()
    assert stack.hook_dict["blocks.3.x.hook_y"].layer() == 3
    assert stack.hook_dict["blocks.11.x.hook_y"].layer() == 11
    assert stack.blocks[7].x.hook_y.name == "blocks.7.x.hook_y"

    seen = []
    stack.run_with_hooks(
        torch.zeros(1),
        fwd_hooks=[(lambda n: n.endswith("hook_y"), lambda a, h: seen.append((h.name, h.layer(), a.item())))],
    )
    # block i sees input i (each earlier block added 1)
    assert seen == [(f"blocks.{i}.x.hook_y", i, float(i)) for i in range(12)]


def test_hook_layer_outside_a_block_raises():
    stack = Stack(n=2)
    with pytest.raises(ValueError, match="hook_embed"):
        stack.hook_embed.layer()
    with pytest.raises(ValueError):
        TwoLayerModel().layer1.hook_square.layer()  # "layer1" is not "blocks.N"


# ---- errors ------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "bad, nearest",
    [
        ("layer1.hook_sqare", "layer1.hook_square"),
        ("hook_midd", "hook_mid"),
        ("layer3.hook_square", "layer1.hook_square"),
    ],
)
def test_unknown_name_raises_key_error_with_suggestions(model, bad, nearest):
    with pytest.raises(KeyError) as info:
        model.run_with_hooks(t(2.0), fwd_hooks=[(bad, lambda a, h: a)])
    assert bad in str(info.value) and nearest in str(info.value)
    with pytest.raises(KeyError) as info:
        model.add_hook(bad, lambda a, h: a)
    assert nearest in str(info.value)
    assert_all_hooks_gone(model)


def test_wrong_shape_raises_naming_hook_and_shapes(model):
    with pytest.raises((ValueError, RuntimeError)) as info:
        model.run_with_hooks(t(2.0, 3.0), fwd_hooks=[("layer1.hook_square", lambda a, h: torch.zeros(3, 4))])
    message = str(info.value)
    assert "layer1.hook_square" in message
    assert "(3, 4)" in message and "(2,)" in message
    assert_all_hooks_gone(model)
    assert_plain_forward(model)


def test_non_tensor_return_raises_type_error(model):
    with pytest.raises(TypeError, match="hook_mid"):
        model.run_with_hooks(t(2.0), fwd_hooks=[("hook_mid", lambda a, h: 7.0)])
    with pytest.raises(TypeError, match="hook_mid"):
        model.run_with_hooks(t(2.0), fwd_hooks=[("hook_mid", lambda a, h: a.tolist())])
    assert_all_hooks_gone(model)


def test_backward_hook_wrong_return_raises(model):
    x = t(2.0, 3.0).requires_grad_(True)
    with model.hooks(bwd_hooks=[("hook_mid", lambda g, h: torch.zeros(5))]):
        with pytest.raises((ValueError, RuntimeError), match="hook_mid"):
            model(x).sum().backward()
    with model.hooks(bwd_hooks=[("hook_mid", lambda g, h: "not a tensor")]):
        with pytest.raises(TypeError, match="hook_mid"):
            model(x).sum().backward()
    assert_all_hooks_gone(model)


def test_run_with_hooks_backward_hooks_fire_after_the_call(model):
    grads = []
    x = t(2.0).requires_grad_(True)
    out = model.run_with_hooks(x, bwd_hooks=[("hook_mid", lambda g, h: grads.append(g.clone()))])
    assert_all_hooks_gone(model)
    out.sum().backward()
    assert len(grads) == 1


def test_bad_direction_raises(model):
    with pytest.raises(ValueError, match="dir"):
        model.add_hook("hook_mid", lambda a, h: a, dir="sideways")
    assert_all_hooks_gone(model)


# ---- add_hook with filters, caching hooks, has_hooks ------------------------------------------


def test_add_hook_with_filter_attaches_to_all_matches(model):
    names = []
    model.add_hook(lambda n: n.endswith("hook_square"), lambda a, h: names.append(h.name))
    assert model.layer1.hook_square.has_hooks and model.layer2.hook_square.has_hooks
    assert not model.hook_mid.has_hooks and not model.hook_in.has_hooks and not model.hook_out.has_hooks
    model(t(2.0))
    assert names == ["layer1.hook_square", "layer2.hook_square"]
    model.reset_hooks()

    # with a replacement: both squares := 1 -> mid 4 -> out 1 - 4 = -3
    model.add_hook(lambda n: "hook_square" in n, lambda a, h: torch.ones_like(a))
    torch.testing.assert_close(model(t(2.0, 3.0)), t(-3.0, -3.0), rtol=0, atol=0)
    model.reset_hooks()
    assert_plain_forward(model)


def test_add_hook_with_list_of_names(model):
    model.add_hook(["hook_in", "hook_out"], lambda a, h: a + 1)
    # x 2 -> 3 -> out 140 -> 141
    torch.testing.assert_close(model(t(2.0)), t(141.0), rtol=0, atol=0)
    model.reset_hooks()


def test_get_caching_hooks(model):
    cache, fwd, bwd = model.get_caching_hooks(names_filter=lambda n: n != "hook_in", incl_bwd=True)
    assert cache == {}
    assert sorted(name for name, _ in fwd) == sorted(NAMES[1:])
    assert sorted(name for name, _ in bwd) == sorted(NAMES[1:])
    x = torch.tensor(1.0, requires_grad=True)
    with model.hooks(fwd_hooks=fwd, bwd_hooks=bwd):
        model(x).backward()
    # x=1: square1 1, mid 4, square2 16, out 12; grads 1, 1, 8, 8
    assert set(cache) == set(NAMES[1:]) | {n + "_grad" for n in NAMES[1:]}
    for name in NAMES[1:]:
        torch.testing.assert_close(cache[name], torch.tensor(float(hand_values(1.0)[name])), rtol=0, atol=0)
    for name, grad in {"hook_out": 1.0, "layer2.hook_square": 1.0, "hook_mid": 8.0, "layer1.hook_square": 8.0}.items():
        torch.testing.assert_close(cache[name + "_grad"], torch.tensor(grad), rtol=0, atol=0)
    assert_all_hooks_gone(model)


def test_get_caching_hooks_into_given_dict(model):
    store = {"already": torch.zeros(1)}
    cache, fwd, bwd = model.get_caching_hooks("hook_mid", cache=store, remove_batch_dim=True)
    assert cache is store and bwd == []
    model.run_with_hooks(torch.tensor([[2.0, 3.0]]), fwd_hooks=fwd)
    assert set(store) == {"already", "hook_mid"}
    torch.testing.assert_close(store["hook_mid"], t(7.0, 12.0), rtol=0, atol=0)


def test_add_caching_hooks(model):
    cache = model.add_caching_hooks(names_filter=["hook_mid", "hook_out"])
    assert model.hook_mid.has_hooks and model.hook_out.has_hooks and not model.hook_in.has_hooks
    model(t(2.0))
    assert set(cache) == {"hook_mid", "hook_out"}
    torch.testing.assert_close(cache["hook_mid"], t(7.0), rtol=0, atol=0)
    torch.testing.assert_close(cache["hook_out"], t(45.0), rtol=0, atol=0)
    model(t(3.0))  # the hooks stay until reset, and overwrite
    torch.testing.assert_close(cache["hook_mid"], t(12.0), rtol=0, atol=0)
    model.reset_hooks()
    model(t(1.0))  # no longer recorded
    torch.testing.assert_close(cache["hook_mid"], t(12.0), rtol=0, atol=0)
    assert_all_hooks_gone(model)


def test_add_caching_hooks_incl_bwd(model):
    cache = model.add_caching_hooks(names_filter="layer1.hook_square", incl_bwd=True)
    x = torch.tensor(3.0, requires_grad=True)
    model(x).backward()
    model.reset_hooks()
    torch.testing.assert_close(cache["layer1.hook_square"], torch.tensor(9.0), rtol=0, atol=0)
    torch.testing.assert_close(cache["layer1.hook_square_grad"], torch.tensor(24.0), rtol=0, atol=0)  # 2 * 12


def test_has_hooks_flips(model):
    hp = model.hook_mid
    assert not hp.has_hooks
    model.add_hook("hook_mid", lambda a, h: None)
    assert hp.has_hooks and not model.hook_in.has_hooks
    model.reset_hooks()
    assert not hp.has_hooks

    model.add_hook("hook_mid", lambda g, h: None, dir="bwd")
    assert hp.has_hooks and hp.has_backward_hooks
    model.reset_hooks()
    assert not hp.has_hooks and not hp.has_backward_hooks

    model.add_hook("hook_mid", lambda a, h: None, is_permanent=True)
    model.reset_hooks()
    assert hp.has_hooks
    model.reset_hooks(including_permanent=True)
    assert not hp.has_hooks

    with model.hooks(fwd_hooks=[("hook_mid", lambda a, h: None)]):
        assert hp.has_hooks
    assert not hp.has_hooks


def test_hook_point_directly():
    hp = HookPoint()
    x = t(1.0, 2.0)
    assert hp(x) is x  # identity without hooks
    hp.add_hook(lambda a, h: a * 3)
    torch.testing.assert_close(hp(x), t(3.0, 6.0), rtol=0, atol=0)
    hp.remove_hooks()
    assert not hp.has_hooks
    torch.testing.assert_close(hp(x), x, rtol=0, atol=0)
