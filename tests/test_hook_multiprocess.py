"""HPSGD across real Gloo ranks: equal to the plain torch.distributed reference,
stragglers, uneven steps, bitwise resume, mismatches."""

from __future__ import annotations

import pytest

import hook_workers as W
from dist_utils import run_ranks, values

pytestmark = [pytest.mark.multiprocess, pytest.mark.timeout(240)]


# Every option combination on 2 ranks, one 4-rank case (CI time: each case spawns a world).
@pytest.mark.parametrize("world,replica,outer", [
    (2, "keep", (0.0, False)), (2, "reset", (0.0, False)), (2, "keep", (0.6, True)),
    (2, "reset", (0.6, True)), (4, "keep", (0.6, True))],
    ids=["2-keep-plain", "2-reset-plain", "2-keep-nesterov", "2-reset-nesterov", "4-keep-nesterov"])
def test_equals_reference(world, replica, outer):
    for v in values(run_ranks(W.equals_reference, world, replica, 4, 23, outer[0], outer[1])):
        assert v["max_diff"] <= 1e-6, v
        assert v["ranks_identical"]
        assert v["moved"] > 1e-3  # training happened


@pytest.mark.parametrize("replica", ["keep", "reset"])
def test_straggler_three_times_slower_auto(replica):
    vals = values(run_ranks(W.straggler_auto, 3, 40, replica))
    for v in vals:
        assert v["identical"]
        assert v["stats"]["local_steps"] == 40
        assert v["stats"]["rounds"] >= 2
    # the fast ranks took longer windows than the slow one
    assert vals[1]["stats"]["steps_per_round"] >= vals[0]["stats"]["steps_per_round"]


def test_uneven_steps_auto_synchronize_terminates():
    for v in values(run_ranks(W.uneven_steps_auto, 3)):
        assert v["identical"]
        assert v["stats"]["synchronizations"] == 2


# Resuming bitwise (in either loading order): tests/test_reliability_multiprocess.py


def test_mismatched_model_raises_on_every_rank():
    msgs = values(run_ranks(W.mismatched_model, 2))
    assert all(m is not None and "expected the same model on every rank" in m for m in msgs), msgs
    assert "rank 1" in msgs[0]


def test_mismatched_option_raises_on_every_rank():
    msgs = values(run_ranks(W.mismatched_option, 2))
    assert all(m is not None and "comm_dtype" in m for m in msgs), msgs


def test_nan_in_one_rank_does_not_poison_the_global_model():
    for v in values(run_ranks(W.nan_on_one_rank, 2, 0.0, True)):
        assert v["raised"] is None
        assert v["finite"] and v["identical"]
        assert v["skipped"] == 1 and v["warned"]


def test_persistent_nan_raises_on_every_rank():
    # momentum keeps the NaN in rank 1's optimizer state: every later window is bad
    for v in values(run_ranks(W.nan_on_one_rank, 2, 0.9, True)):
        assert v["raised"] is not None and "3 consecutive rounds" in v["raised"]


def test_without_the_check_the_nan_spreads():
    for v in values(run_ranks(W.nan_on_one_rank, 2, 0.0, False)):
        assert v["raised"] is None and not v["finite"] and v["skipped"] == 0
