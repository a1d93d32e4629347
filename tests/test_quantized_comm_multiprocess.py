"""The communicator's 8-bit reduction (issue 14; docs/round-protocol.md, "8-bit wires"):
Communicator.quantized_all_reduce_async on 2, 3 and 4 Gloo ranks gives bit for bit
what hpsgd_ext.reference.quantized_all_reduce_codes gives from the same codes, on
every rank; extra slots are summed exactly; a non-finite block is NaN everywhere; a
silent peer is a CommTimeoutError within the deadline; issue order holds across the
two phases."""

from __future__ import annotations

import pytest

import quant_workers as W
from dist_utils import run_ranks, values

pytestmark = [pytest.mark.multiprocess, pytest.mark.timeout(120)]

# n = 0 and 1 leave every shard but one empty, 511/512/513 sit at a block's edge,
# 1030 (3 blocks) leaves the fourth rank of four nothing, 4103 is a few blocks + 7.
SIZES = [(0, 0), (0, 2), (1, 0), (511, 1), (512, 0), (513, 3), (1030, 1), (4103, 2)]


@pytest.mark.parametrize("world", [2, 3, 4])
def test_bit_exact_against_the_oracle(world):
    cases = [(d, n, extra, None) for d in ("int8", "float8_e4m3fn") for n, extra in SIZES]
    cases += [("int8", 4103, 1, 5), ("float8_e4m3fn", 1030, 0, 2)]  # a non-finite block
    for per_rank in values(run_ranks(W.comm_quantized_cases, world, cases, timeout=90)):
        for v in per_rank:
            assert v["codes"] and v["scales"] and v["same_everywhere"], v
            counted, work_bytes, sent = v["bytes"]
            assert counted == work_bytes == sent, v
            if v["case"][3] is not None:
                assert v["nan_scale"] and v["finite_elsewhere"], v


def test_issue_order_across_phases():
    for v in values(run_ranks(W.comm_quantized_order, 3, timeout=60)):
        assert v["done"] == [True, True, True] and v["seq"] == [0, 1, 2], v
        assert v["a"] and v["b"] and v["flat"], v


@pytest.mark.timeout(60)
def test_rank_that_never_calls_turns_into_timeout_on_the_others():
    timeout = 2.0
    vals = values(run_ranks(W.comm_quantized_silent_rank, 3, timeout, pg_timeout=timeout, timeout=40))
    assert vals[-1] == "silent"
    for v in vals[:-1]:
        assert v["raised"] == "CommTimeoutError", v
        assert v["after"] <= timeout + 1.0, v
        assert "quantized_all_reduce #0" in v["message"] and "rank" in v["message"], v
        assert v["next_issue_raised_after"] is not None and v["next_issue_raised_after"] <= timeout + 1.0, v


@pytest.mark.gpu
def test_c10d_with_cuda_buffers():
    # Two ranks share the one GPU (NCCL refuses that): Gloo stages the buffers.
    cases = [(d, n, extra, None) for d in ("int8", "float8_e4m3fn") for n, extra in SIZES[::2]]
    cases += [("int8", 4103, 1, 5)]
    for per_rank in values(run_ranks(W.comm_quantized_cases, 2, cases, "cuda", timeout=90)):
        for v in per_rank:
            assert v["codes"] and v["scales"] and v["same_everywhere"], v
            if v["case"][3] is not None:
                assert v["nan_scale"] and v["finite_elsewhere"], v
