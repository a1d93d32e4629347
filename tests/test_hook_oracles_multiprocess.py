"""Multi-rank oracles for HPSGD (Gloo ranks on CPU): the bf16 wire equals the
reference, a non-finite final round is never merged, and the global model is
exactly the mean of every rank's optimizer steps, in auto mode with a straggler,
uneven step counts and catch-up rounds."""

from __future__ import annotations

import pytest

import oracle_workers as W
from dist_utils import run_ranks, values

pytestmark = [pytest.mark.multiprocess, pytest.mark.timeout(120)]


def test_bf16_wire_equals_reference_and_differs_from_fp32_wire():
    for v in values(run_ranks(W.bf16_wire_equals_reference, 2, 3, 17)):
        assert v["identical"]
        assert v["max_diff_ref"] <= 1e-6, v
        assert v["max_diff_fp32_wire"] > 1e-5, v  # the bf16 wire changed the result
        assert 2 * v["bytes_bf16"] == v["bytes_fp32"], v


def test_nan_right_before_synchronize_is_not_merged():
    for v in values(run_ranks(W.nan_right_before_synchronize, 2)):
        assert v["finite_first"] and v["identical_first"], v
        assert v["skipped_first"] == 1, v
        assert len(v["warned"]) == 1 and "non-finite" in v["warned"][0], v
        assert v["finite"] and v["identical"] and v["skipped"] == 1, v


def check_oracle(vals, tol=1e-5):
    for v in vals:
        assert v["identical"], v
        assert v["moved"] > 1e-2, v  # training happened
        assert max(v["errors"]) <= tol, v
        # the control: a recorder registered after HPSGD also sees the boundaries'
        # moves, so its sum is not the oracle's (the hook order matters)
        assert min(v["late_gap"]) > 1e-3, v


def test_auto_straggler_uneven_steps_model_is_mean_of_optimizer_steps():
    """Rank 0 is slow (4 ms a step) and takes few steps; in each phase one fast rank
    takes 600 more steps than the others. A window needs its previous round
    reduced and at most max_window (128) + 2 probe steps, so after the others are
    waiting in synchronize() the busy rank issues its next round, the first one
    they have not: it is one round ahead and the others close a catch-up round."""
    phases = [(15, 20, 620), (12, 620, 20)]
    vals = values(run_ranks(W.optimizer_step_oracle, 3, "auto", phases, 0, 0.004))
    check_oracle(vals)
    for r, v in enumerate(vals):
        assert v["local_steps"] == sum(p[r] for p in phases)
    catch_ups = [v["catch_ups"] for v in vals]  # cumulative, after each synchronize()
    assert any(c[0] > 0 for c in catch_ups), catch_ups
    assert any(c[1] > c[0] for c in catch_ups), catch_ups


def test_fixed_window_uneven_steps_model_is_mean_of_optimizer_steps():
    # sync_every=2: ranks may differ by less than one window's worth of rounds
    # (a rank more than one round ahead would wait for the others forever)
    phases = [(9, 10, 11), (6, 7, 5)]
    check_oracle(values(run_ranks(W.optimizer_step_oracle, 3, 2, phases, 0, 0.002)))
