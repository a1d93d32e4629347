"""Ordinary training code beside HPSGD on real Gloo ranks (issue 15): the user's own
collectives, resumes, GradScaler, changing tensor sets, fp16 wires, clear errors.
Each of these crashed, hung or silently diverged before the fix."""

from __future__ import annotations

import pytest

import reliability_workers as W
from dist_utils import run_ranks, values

pytestmark = [pytest.mark.multiprocess, pytest.mark.timeout(120)]


@pytest.mark.parametrize("sync_every,extra", [("auto", 0), (3, 1)], ids=["auto-per-step", "fixed-uneven"])
def test_user_allreduce_beside_rounds(sync_every, extra):
    for v in values(run_ranks(W.logging_allreduce, 2, sync_every, extra, timeout=60)):
        assert v["identical"], v
        assert v["rounds"] >= 2


def test_two_hpsgd_instances_gan_style():
    for v in values(run_ranks(W.two_models, 2, timeout=60)):
        assert v["identical"], v


def test_resume_in_either_order_is_bitwise():
    for v in values(run_ranks(W.resume_orders, 2, 3, 20, 7)):
        assert v == {"model_first": True, "hpsgd_first": True}, v


def test_state_from_another_rank_refused_unless_synchronized():
    vals = values(run_ranks(W.resume_from_rank0_file, 2, 2))
    assert vals[0]["refused"] is None  # its own state
    msg = vals[1]["refused"]
    assert msg is not None and "rank 0" in msg and "rank 1" in msg, msg
    assert all(v["unchanged"] and v["identical"] for v in vals), vals


def test_gradscaler_skips_on_one_rank_fixed_window():
    vals = values(run_ranks(W.gradscaler_fixed_window, 2, 2, 60, timeout=60))
    for v in vals:
        assert v["identical"] and v["finite"], v
        assert v["seconds"] < 8, v  # never waits out the 10 s timeout
    assert vals[1]["skipped_steps"] == 5 and vals[0]["skipped_steps"] == 0
    assert vals[1]["local_steps"] == 55 and vals[0]["local_steps"] == 60


@pytest.mark.parametrize("what,needle", [("unfreeze", "0.weight"), ("add_head", "head.weight")])
def test_changed_tensor_set_is_a_clear_error_on_every_rank(what, needle):
    for v in values(run_ranks(W.tensor_set_changes, 2, what, timeout=60)):
        assert v["raised"] is not None and needle in v["raised"], v


def test_buffer_assigned_out_of_place_is_followed():
    for v in values(run_ranks(W.tensor_set_changes, 2, "buffer", timeout=60)):
        assert v["raised"] is None, v
        assert v["identical"], v


def test_fp16_wire_keeps_a_representable_mean():
    for v in values(run_ranks(W.fp16_large_mean, 2)):
        assert v["value"] == [40000.0] * 4, v
        assert v["skipped"] == 0 and not v["warnings"], v


def test_rank_skipping_synchronize_is_a_comm_timeout():
    res = run_ranks(W.one_rank_skips_synchronize, 2, 3.0, timeout=60)
    v = values(res)[0]
    assert v["is_timeout"], v
    assert "synchronize" in v["message"] and "rank" in v["message"], v
    assert v["after"] <= 3.0 + 2.0, v


def test_construction_check_failing_on_one_rank_fails_everywhere_at_once():
    vals = values(run_ranks(W.float64_buffer_on_one_rank, 2, timeout=60))
    for v in vals:
        assert v["raised"] == "TypeError", v
        assert "1.running_var" in v["message"] and "rank 1" in v["message"], v
        assert v["after"] < 10, v  # not the 30 s store timeout


def test_synchronize_after_close_fails_before_any_collective():
    vals = values(run_ranks(W.synchronize_after_close, 2, timeout=60))
    assert vals[0]["raised"] is not None and "closed" in vals[0]["raised"], vals[0]
    assert vals[0]["after"] < 1.0
    assert all(v["stats_rounds"] >= 2 for v in vals)


def test_nan_in_optimizer_state_names_the_rank_and_the_remedy():
    for v in values(run_ranks(W.nan_in_momentum, 2)):
        assert v["raised"] is not None, v
        assert "rank 1" in v["raised"] and "optimizer state" in v["raised"], v
        assert v["warnings"] and all("rank 1" in w for w in v["warnings"]), v


def test_close_releases_buffers_and_communicator():
    for v in values(run_ranks(W.build_use_close, 2, 15, timeout=90)):
        assert v["alive"] == 0, v
        assert v["growth_mb"] < 8, v


def test_non_finite_round_leaves_the_global_model_bitwise():
    for v in values(run_ranks(W.nan_round_leaves_global_model_bitwise, 2)):
        assert v["unchanged"] and v["moved_later"], v
        assert v["skipped_at_8"] == 1 and v["warned_at_8"] == 1, v
        assert v["finite"] and v["identical"], v
