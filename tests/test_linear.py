"""`linear` splits a large weight across threads for few rows: the same bits as F.linear, and only where it applies."""

from __future__ import annotations

import contextlib

import pytest
import torch
import torch.nn.functional as F
from conftest import tiny_llama

from hooked import HookedTransformer
from hooked.components import linear as linear_module
from hooked.components.kv_cache import KVCache
from hooked.components.linear import MIN_WEIGHT_NUMEL, _blocks, linear


@pytest.fixture(autouse=True)
def split_on_this_cpu(monkeypatch):
    """The split's arithmetic is the same on every CPU; only whether it pays is vendor-dependent, so the
    tests take it wherever they run."""
    monkeypatch.setattr(linear_module, "SPLIT_ON_THIS_CPU", True)


@contextlib.contextmanager
def threads(n: int):
    before = torch.get_num_threads()
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(before)


SHAPES = [(1536, 576), (8192, 64), (768, 3072), (49152, 576), (50257, 768), (1537, 576)]  # odd: overlapping blocks


@pytest.mark.parametrize(("d_out", "d_in"), SHAPES)
@pytest.mark.parametrize("lead", [(1,), (3,), (7,), (8, 1), (2, 5), (2, 32)])
@pytest.mark.parametrize("with_bias", [False, True])
def test_split_product_is_bit_identical_to_f_linear(d_out, d_in, lead, with_bias):
    generator = torch.Generator().manual_seed(d_out + d_in)
    weight = torch.randn(d_out, d_in, generator=generator)
    bias = torch.randn(d_out, generator=generator) if with_bias else None
    x = torch.randn(*lead, d_in, generator=generator)
    with threads(2), torch.inference_mode():
        assert _blocks(x, weight) == 2, "the split path was not taken"
        out = linear(x, weight, bias)
    with threads(1), torch.inference_mode():  # MKL's own product on several threads varies with their number
        expected = F.linear(x, weight, bias)
    assert out.shape == expected.shape
    assert torch.equal(out, expected)


def test_where_the_split_does_not_apply_it_is_f_linear():
    weight = torch.randn(1536, 576)
    x = torch.randn(1, 576)
    with threads(2), torch.inference_mode():
        assert _blocks(torch.randn(65, 576), weight) == 1  # past MAX_ROWS rows
        assert _blocks(x, torch.randn(192, 576)) == 1  # too small a weight
        assert _blocks(x, weight.T.contiguous().T) == 1  # not Linear's layout
        assert _blocks(x.double(), weight.double()) == 1
    with threads(1), torch.inference_mode():
        assert _blocks(x, weight) == 1
    with threads(2):
        w = weight.clone().requires_grad_()
        assert _blocks(x, w) == 1  # gradients are recorded by F.linear's own backward
        linear(x, w).sum().backward()
        assert torch.equal(w.grad, x.expand(1536, 576))
    assert MIN_WEIGHT_NUMEL > 192 * 576


def test_on_a_cpu_where_mkl_spreads_few_rows_itself_it_is_f_linear(monkeypatch):
    monkeypatch.setattr(linear_module, "SPLIT_ON_THIS_CPU", False)
    with threads(2), torch.inference_mode():
        assert _blocks(torch.randn(1, 576), torch.randn(1536, 576)) == 1


@pytest.mark.parametrize(
    ("cpuinfo", "mkl_splits"),
    [("vendor_id\t: GenuineIntel\n", True), ("vendor_id\t: AuthenticAMD\n", False), ("processor\t: 0\n", True)],
)
def test_the_vendor_gate_reads_proc_cpuinfo(monkeypatch, cpuinfo, mkl_splits):
    import io

    monkeypatch.setattr("builtins.open", lambda *args, **kwargs: io.StringIO(cpuinfo))
    assert linear_module._mkl_splits_few_rows_itself() is mkl_splits


def test_a_decoding_step_has_the_same_bits_split_and_on_one_thread():
    """On one thread a model takes F.linear everywhere; on two the unembedding and the MLP are split: the same
    logits, for the prompt and for a decoding step."""
    cfg = tiny_llama(d_model=64, n_layers=2, d_vocab=8192, n_ctx=32, d_mlp=8192, seed=0)
    model = HookedTransformer(cfg).eval()
    tokens = torch.randint(0, cfg.d_vocab, (2, 6), generator=torch.Generator().manual_seed(1))
    steps = {}
    for n in (1, 2):
        with threads(n), torch.inference_mode():
            cache = KVCache.for_model(model)
            # A prompt of 2 x 4 rows: F.linear's own product on 5-7 or 9-10 rows changes with the thread count.
            steps[n] = (model(tokens[:, :4], past_kv_cache=cache), model(tokens[:, 4:5], past_kv_cache=cache))
    assert torch.equal(steps[1][0], steps[2][0])
    assert torch.equal(steps[1][1], steps[2][1])
