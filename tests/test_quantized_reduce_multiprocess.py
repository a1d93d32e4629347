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


@pytest.mark.parametrize("dtype", ["int8", "float8_e4m3fn"])
@pytest.mark.parametrize("world", [2, 3])
def test_hpsgd_8bit_wire_equals_reference(dtype, world):
    """The whole algorithm: HPSGD(comm_dtype=8 bits) = ReferenceHPSGD with the same wire,
    to float32 rounding (2 ranks: the engine's pre-division by 2 is exact, so only the
    rule's FMA contraction differs; 3 ranks: dividing before or after quantising may
    move a code by one step). Bytes: codes + one float32 scale per 512 + flag slots."""
    for v in values(run_ranks(W.eight_bit_wire_equals_reference, world, dtype, 3, 17, timeout=90)):
        assert v["identical"], v
        assert v["max_diff_ref"] <= (1e-5 if world == 2 else 2e-3), v
        assert v["max_diff_fp32_wire"] > 1e-5, v  # the 8-bit wire changed the result
        n, rounds = v["numel"], v["rounds"]
        per_round = n + 4 * ((n + 511) // 512 + world)
        assert v["bytes_8bit"] == rounds * per_round, v
        assert v["bytes_8bit"] < v["bytes_fp32"] / 3, v
        # The transport's own bytes: this 195-element model is one block, so its owner
        # sends it back to every rank (tests/test_quantized_comm_multiprocess.py checks
        # the counts exactly); still fewer than a float32 ring's.
        assert v["comm_bytes_8bit"] < v["comm_bytes_fp32"], v
        # Memory: two code buffers and their scales; `sent` stays float32.
        assert v["extra_flats"] == 2 * per_round and v["extra_sent"] == 4 * n, v


@pytest.mark.parametrize("dtype", ["int8", "float8_e4m3fn"])
def test_8bit_nan_round_is_skipped_and_names_the_rank(dtype):
    """The non-finite rule holds on an 8-bit wire: rank 1's NaN makes its block's scale
    non-finite, the verdict (read from the scales and the flag slots after them) skips
    that round on every rank, warns naming rank 1, and training goes on, identical."""
    import hook_workers as H

    for v in values(run_ranks(H.nan_on_one_rank, 2, 0.0, True, dtype, timeout=90)):
        assert v["raised"] is None and v["finite"] and v["identical"], v
        assert v["skipped"] == 1 and v["warned"], v
        assert any("rank 1" in w for w in v["warnings"]), v
    # Momentum keeps the NaN in rank 1's optimizer state: every later round is bad.
    for v in values(run_ranks(H.nan_on_one_rank, 2, 0.9, True, dtype, timeout=90)):
        assert v["raised"] is not None and "3 consecutive rounds" in v["raised"] and "rank 1" in v["raised"], v


@pytest.mark.parametrize("fragments", [1, 2])
def test_8bit_checkpoint_resumes_exactly(fragments):
    """state_dict() mid-window with an 8-bit round pending (codes and their scales),
    loaded into a fresh model and HPSGD, continues bit for bit as the uninterrupted run."""
    import fragment_workers as F

    for v in values(run_ranks(F.checkpoint_resumes, 2, fragments, "keep", 2, 5, 6, "int8", timeout=90)):
        assert v["pending"] and v["equal"], v
