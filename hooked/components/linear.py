"""`linear`: F.linear, with a large weight split across threads when few rows go through it on the CPU.

On a decoding step each projection multiplies one row per sequence by its weight. The CPU build of torch
hands that to MKL's sgemm, which runs such a product on one thread at about half the memory bandwidth
two threads reach, and a step is mostly these products (aten::mm was 80% of a SmolLM2 step, here and in
transformers alike). `linear` splits the weight's output rows into one block per thread and multiplies
the blocks in one `torch.bmm`, which gives each thread its block. Every output is then the dot product
MKL computes on one thread: the numbers are bit-identical to F.linear's on one thread (checked for every
row count from 1 to 64 on seven shapes; tests/test_linear.py keeps a sample), so they do not change
with the thread count, as F.linear's own do at some row counts (5-7, 9 and 10 rows here). A 49152 x 576
unembedding took 0.55x the time at one row and 0.7x at eight, the MLP's 1536 x 576 matrices 0.7-0.8x
(benchmarks/split_linear.py measures every shape and row count it applies to).

That holds on AMD processors, where MKL takes its generic code path. On an Intel Xeon MKL runs the same
products on every thread itself and the split was slower (1.0-1.8x), so it is taken only where
/proc/cpuinfo names a non-Intel vendor (`SPLIT_ON_THIS_CPU`), and only where it was measured to help:
float32 on the CPU, at most `MAX_ROWS` rows, a weight of
at least `MIN_WEIGHT_NUMEL` numbers (a 192 x 576 key projection was slower split), laid out contiguously
(Linear's [out, in]), with no gradient to record. Everywhere else it is F.linear.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from jaxtyping import Float
from torch import Tensor


def _mkl_splits_few_rows_itself() -> bool:
    """False only where /proc/cpuinfo names a non-Intel vendor: elsewhere MKL is taken to spread a few-row
    product over its threads itself (measured on an Intel Xeon), or nothing was measured (no vendor line)."""
    try:
        with open("/proc/cpuinfo", encoding="ascii", errors="replace") as file:
            cpuinfo = file.read(1 << 16)
    except OSError:  # not Linux: no measurement says the split helps there
        return True
    return "GenuineIntel" in cpuinfo or "vendor_id" not in cpuinfo


MAX_ROWS = 64  # past a few dozen rows MKL parallelizes the product itself
MIN_WEIGHT_NUMEL = 1 << 19  # 576 x 576 gained nothing measurable; 1536 x 576 gained 20-30%
SPLIT_ON_THIS_CPU = not _mkl_splits_few_rows_itself()  # measured: faster on AMD EPYC, slower on Intel Xeon


def linear(
    x: Float[Tensor, "*batch d_in"], weight: Float[Tensor, "d_out d_in"], bias: Float[Tensor, " d_out"] | None = None
) -> Float[Tensor, "*batch d_out"]:
    """x @ weight.T + bias, as F.linear computes it on one thread (bit for bit); faster for few rows on several."""
    blocks = _blocks(x, weight)
    if blocks == 1:
        return F.linear(x, weight, bias)
    d_out, d_in = weight.shape
    # Block i holds rows [i * step, i * step + size): where d_out does not divide evenly (GPT-2's 50257-token
    # vocabulary) the last block is larger and overlaps the one before by fewer than `blocks` rows.
    step = d_out // blocks
    size = d_out - step * (blocks - 1)
    parts = weight.as_strided((blocks, size, d_in), (step * d_in, d_in, 1)).transpose(1, 2)  # a view
    rows = x.reshape(1, -1, d_in).expand(blocks, -1, -1)
    if bias is None:
        out = torch.bmm(rows, parts)
    else:  # the bias added inside the product, as addmm does, for the same bits
        out = torch.baddbmm(bias.contiguous().as_strided((blocks, 1, size), (step, size, 1)), rows, parts)
    if size == step:
        out = out.transpose(0, 1).flatten(1)  # [rows, d_out]
    else:  # the rows each block adds: all of the last block's, the first `step` of the others'
        out = torch.cat([out[:-1, :, :step].transpose(0, 1).flatten(1), out[-1]], dim=-1)
    return out.reshape(*x.shape[:-1], d_out)


def _blocks(x: Tensor, weight: Tensor) -> int:
    """How many blocks to split the weight into: 1 (plain F.linear) wherever splitting was not measured to help."""
    if not SPLIT_ON_THIS_CPU or x.numel() > MAX_ROWS * x.shape[-1]:  # first: a whole-sequence forward leaves
        return 1
    threads = torch.get_num_threads()
    if (
        threads < 2
        or x.device.type != "cpu"
        or x.dtype != torch.float32
        or weight.dtype != torch.float32
        or weight.numel() < MIN_WEIGHT_NUMEL
        or not weight.is_contiguous()
        or weight.shape[0] < threads
        or (torch.is_grad_enabled() and (x.requires_grad or weight.requires_grad))
    ):
        return 1
    return threads
