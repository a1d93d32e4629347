"""The communicator across real processes over Gloo: correctness, ordering, deadlines,
dead and silent peers. Every test is bounded by pytest-timeout and run_ranks' own limit."""

from __future__ import annotations

import pytest
import torch

import comm_workers as W
from dist_utils import assert_survivors_raised, run_ranks, values

pytestmark = [pytest.mark.multiprocess, pytest.mark.timeout(180)]

# Gloo sums in the buffer's dtype before the mean: bf16/fp16 carry their rounding.
TOL = {str(torch.float32): 1e-6, str(torch.bfloat16): 2e-2, str(torch.float16): 3e-3}


@pytest.mark.parametrize("world", [2, 3, 4])
def test_mean_correct_every_dtype(world):
    for errs in values(run_ranks(W.mean_every_dtype, world, 100_003)):
        for dt, err in errs.items():
            assert err <= TOL[dt], (dt, err)


def test_many_in_flight_complete_in_issue_order():
    for v in values(run_ranks(W.many_in_flight, 3, 24)):
        assert v["all_done_after_last"]
        assert v["ordered"]
        assert v["max_err"] <= 1e-6
        assert v["seqs"] == list(range(24))
        assert v["stats"]["issued"] == 24 and v["stats"]["completed"] == 24
        assert v["stats"]["failed"] == 0


def test_256mb_buffer():
    for v in values(run_ranks(W.big_buffer, 2, 64 * 2**20)):
        assert v["ok"] and v["bytes"] == 256 * 2**20


def test_link_emulation_holds_completion():
    for v in values(run_ranks(W.completion_with_link, 2)):
        assert v["first_check"] is False
        assert v["done"] and v["value_ok"]
        m = v["modelled"]
        # a serial link: the k-th collective finishes no earlier than k modelled transfers
        for k, t in enumerate(v["finished"], start=1):
            assert t >= k * m * 0.98, (k, t, m)
        assert v["finished"][-1] < 3 * m + 1.0


def test_rank_that_never_issues_turns_into_timeout_on_the_others():
    timeout = 2.0
    res = run_ranks(W.one_rank_never_issues, 3, timeout, pg_timeout=timeout)
    vals = values(res)
    assert vals[-1] == "silent"
    for v in vals[:-1]:
        assert v["raised"] == "CommTimeoutError"
        assert v["after"] <= timeout + 1.0
        assert "all_reduce #0" in v["message"] and "rank" in v["message"]
        assert v["refuses_more"]


def test_rank_killed_mid_collective_raises_on_the_others():
    timeout = 5.0
    res = run_ranks(W.killed_mid_collective, 3, timeout, pg_timeout=timeout, allow_missing=(1,))
    assert_survivors_raised(res, killed=1, timeout=timeout)


@pytest.mark.timeout(60)
def test_watchdog_fails_a_collective_nobody_waits_on():
    timeout = 2.0
    res = run_ranks(W.watchdog_without_wait, 2, timeout, pg_timeout=timeout, timeout=30)
    v, silent = values(res)
    assert silent == "silent"
    assert v["error"] is not None, v
    assert timeout - 0.2 <= v["after"] <= timeout + 1.0, v
    assert v["checks"] > 10  # check() was cheap and quiet while healthy
    assert "all_reduce #0" in v["error"] and "rank 0" in v["error"] and "deadline" in v["error"]
    assert v["is_timeout_error"]
    # Every later call raises the recorded error, with its type and message.
    assert v["check"] == ("CommTimeoutError", v["error"])
    assert v["all_reduce_async"] == ("CommTimeoutError", v["error"])
    assert v["is_completed"] == ("CommTimeoutError", v["error"])
    assert v["wait"] == ("CommTimeoutError", v["error"])
    assert v["valid_flag"] is None  # CPU Work: no device flag
    assert v["stats"]["timeouts"] == 1 and v["stats"]["aborted"]


@pytest.mark.timeout(60)
def test_close_with_a_collective_whose_peer_never_issues():
    res = run_ranks(W.close_with_silent_peer, 2, 5.0, pg_timeout=5.0, timeout=30)
    v, silent = values(res)
    assert silent == "silent"
    assert v["closed_after"] < 1.0, v
    assert v["poll_s"] < 0.5, v
    assert v["error"] is None  # a close is not a failure


@pytest.mark.timeout(60)
def test_sum_mode_is_a_plain_sum():
    for v in values(run_ranks(W.sum_mode, 3, 10_007, timeout=30)):
        assert v["sum_err"] <= 1e-6
        assert v["mean_err"] <= 1e-6
