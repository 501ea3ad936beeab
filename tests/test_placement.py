"""Device maps (hooked.placement): planning with fake device budgets on a meta-device model, and execution
with a fake device list on the CPU (real multiple GPUs are not available here; see the module docstring)."""

from __future__ import annotations

from unittest import mock

import pytest
import torch

from hooked import HookedTransformer, HookedTransformerConfig, placement

CFG = dict(n_layers=4, d_model=64, n_heads=4, d_head=16, d_mlp=256, d_vocab=1000, n_ctx=32, act_fn="gelu_new")


def unit_bytes(model, members) -> int:
    return sum(p.numel() * p.element_size() for m in members for p in model.get_submodule(m).parameters())


def test_auto_plan_fills_devices_in_order_within_their_budgets():
    with torch.device("meta"):  # sizes only: no weight is allocated
        model = HookedTransformer(HookedTransformerConfig(**CFG))
    budget = 700_000
    with mock.patch("torch.cuda.device_count", return_value=2):  # two fake GPUs
        placed = placement.resolve(model, "auto", max_memory={0: budget, 1: budget, "cpu": 10**9})
    units = placement.units(model)
    assert list(placed) == list(units)  # every unit has a device
    order = [placed[unit] for unit in units]
    ranks = [(d.type != "cuda", d.index or 0) for d in order]
    assert ranks == sorted(ranks), f"units must fill devices in forward order: {order}"
    used = {str(d) for d in order}
    assert {"cuda:0", "cuda:1"} <= used, f"both fake GPUs should be used: {order}"
    for device in ("cuda:0", "cuda:1"):
        total = sum(unit_bytes(model, units[u]) for u in units if str(placed[u]) == device)
        assert 0 < total <= budget, f"{device} holds {total} bytes, budget {budget}"


def test_explicit_map_moves_the_residual_to_each_block_and_hooks_see_it(monkeypatch):
    torch.manual_seed(0)
    model = HookedTransformer(HookedTransformerConfig(**CFG, seed=0)).eval()
    tokens = torch.randint(0, 1000, (2, 6))
    expected = model(tokens)
    moved_modules, moves = [], []

    def fake_move_module(module, device):  # the fake device list: record, leave the weights on the CPU
        moved_modules.append(str(device))

    def fake_move_tensor(tensor, device):  # a copy stands for the tensor on `device`
        copy = tensor.clone()
        moves.append((str(device), copy))
        return copy

    monkeypatch.setattr(placement, "move_module", fake_move_module)
    monkeypatch.setattr(placement, "move_tensor", fake_move_tensor)
    device_map = {"embed": "cuda:0", "blocks.0": "cuda:0", "blocks.1": 0, "blocks.2": 1, "blocks.3": 1, "": "cuda:1"}
    placement.place(model, device_map)
    assert model.layer_devices == tuple(torch.device("cuda", i) for i in (0, 0, 1, 1, 1))
    seen = {}
    hooks = [(f"blocks.{i}.hook_resid_pre", lambda x, hook: seen.__setitem__(hook.layer(), x)) for i in range(4)]
    logits = model.run_with_hooks(tokens, fwd_hooks=hooks)
    assert torch.equal(logits, expected)
    residual_moves = [(device, t) for device, t in moves if t.shape == (2, 6, 64)]
    assert [device for device, _ in residual_moves] == ["cuda:0", "cuda:0", "cuda:1", "cuda:1", "cuda:1"]
    for layer in range(4):  # each block's hooks see the tensor moved to its device, whole
        assert seen[layer] is residual_moves[layer][1]
    assert moved_modules.count("cuda:0") == len(placement.units(model)["embed"]) + 2


def test_cpu_device_map_through_from_pretrained(tmp_path):
    from transformers import AutoModelForCausalLM, LlamaConfig

    config = LlamaConfig(
        hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
        vocab_size=100, max_position_embeddings=64,
    )  # fmt: skip
    torch.manual_seed(0)
    AutoModelForCausalLM.from_config(config).save_pretrained(tmp_path)
    plain = HookedTransformer.from_pretrained(tmp_path)
    mapped = HookedTransformer.from_pretrained(tmp_path, device_map={"": "cpu"})
    tokens = torch.randint(0, 100, (2, 5))
    assert mapped.layer_devices == (torch.device("cpu"),) * 3
    assert torch.equal(mapped(tokens), plain(tokens))
    out = mapped.generate(tokens, max_new_tokens=3, do_sample=False, stop_at_eos=False, verbose=False)
    assert torch.equal(out, plain.generate(tokens, max_new_tokens=3, do_sample=False, stop_at_eos=False, verbose=False))
    with pytest.raises(ValueError, match="device or device_map"):
        HookedTransformer.from_pretrained(tmp_path, device="cpu", device_map="auto")


def test_bad_maps_are_refused_by_name():
    model = HookedTransformer(HookedTransformerConfig(**CFG))
    with pytest.raises(KeyError, match="blocks.9"):
        placement.resolve(model, {"blocks.9": "cpu", "": "cpu"})
    with pytest.raises(ValueError, match="parts of blocks.1"):
        placement.resolve(model, {"": "cpu", "blocks.1.attn": "cpu", "blocks.1.mlp": "meta"})
    with pytest.raises(ValueError, match="no device for 'unembed'"):
        placement.resolve(model, {"embed": "cpu", "blocks": "cpu"})
    with pytest.raises(ValueError, match="disk"):
        placement.resolve(model, {"": "disk"})
    with pytest.raises(ValueError, match="'auto' or a dict"):
        placement.resolve(model, "balanced")
