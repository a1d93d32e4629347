"""The 8-bit reduction's rule (issue 14; hpsgd_ext.reference.quantized_all_reduce):
quantise per block, reduce-scatter by all-to-all, sum in float32, re-quantise,
all-gather. Against float64 on 2, 3 and 4 Gloo ranks: the error is within half a
quantisation step of every input and of the re-quantised sum; every rank gets the
same result; the owners' re-quantisation errors, added back, give the exact float32
sum of the dequantised inputs (what error feedback will send next round)."""

from __future__ import annotations

import pytest
import torch

import quant_workers as W
from dist_utils import run_ranks, values
from hpsgd_ext.reference import dequantize_blocks, quantize_blocks

pytestmark = [pytest.mark.multiprocess, pytest.mark.timeout(120)]


@pytest.mark.parametrize("world", [2, 3, 4])
def test_reduction_against_float64(world):
    # n = 1 and 513 leave some ranks an empty or short shard (blocks of 512).
    cases = [(d, n) for d in ("int8", "float8_e4m3fn") for n in (1, 513, 5000)]
    for per_rank in values(run_ranks(W.reduce_against_float64_all, world, cases, timeout=90)):
        for v in per_rank:
            assert v["within"] and v["same_everywhere"], v
            assert v["feedback_gap"] <= 1e-6 * max(1.0, v["scale"] * 127) * world, v


@pytest.mark.parametrize("dtype", ["int8", "float8_e4m3fn"])
def test_reference_feeds_back_what_the_wire_rounds_away(dtype):
    # 3 ranks: uneven shards of the 99-element model (one block) in the reduction.
    for v in values(run_ranks(W.reference_error_feedback, 3, dtype, 9, timeout=90)):
        assert v["ledger_gap"] <= 1e-5 * max(1.0, v["moved"]), v
        assert 0 < v["vs_fp32_wire"] < 0.1, v


@pytest.mark.parametrize("dtype", [torch.int8, torch.float8_e4m3fn])
def test_quantize_round_trip_and_special_values(dtype):
    x = torch.tensor([0.0] * 512 + [1.0, -2.0, 0.5] + [0.0] * 509 + [3.0])  # 3 blocks, one all zero
    codes, scale = quantize_blocks(x, dtype)
    assert codes.dtype == dtype and scale.shape == (3,)
    assert scale[0] == 0 and (dequantize_blocks(codes, scale)[:512] == 0).all()  # an all-zero block
    back = dequantize_blocks(codes, scale)
    assert back[512 + 1] == -2.0 and back[-1] == 3.0  # each block's absmax is exact
    if dtype == torch.int8:
        assert codes.view(torch.int8).abs().max() <= 127  # symmetric: -128 never used
    x[700] = float("nan")
    assert not torch.isfinite(dequantize_blocks(*quantize_blocks(x, dtype))[512:1024]).all()
    with pytest.raises(TypeError, match="expected torch.int8 or torch.float8_e4m3fn"):
        quantize_blocks(x, torch.bfloat16)
