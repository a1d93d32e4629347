"""Faults across real Gloo ranks: a killed rank, a paused rank, mismatched set-ups."""

from __future__ import annotations

import pytest

import hook_workers as W
from dist_utils import assert_survivors_raised, run_ranks, values

pytestmark = [pytest.mark.multiprocess, pytest.mark.timeout(240)]


@pytest.mark.parametrize("comm_dtype", [None, "int8"])
def test_rank_killed_mid_round_others_raise_within_timeout(comm_dtype):
    # int8: the 8-bit reduction's two phases (the second issued from the first's callback)
    timeout = 3.0
    res = run_ranks(W.killed_while_training, 3, timeout, comm_dtype, pg_timeout=timeout, allow_missing=(1,))
    assert_survivors_raised(res, killed=1, timeout=timeout)


@pytest.mark.parametrize("sync_every", ["auto", 2])
def test_rank_pausing_once(sync_every):
    # 3 s: long against the steps (ms) and the rounds, short against CI's budget
    for v in values(run_ranks(W.pause_once, 2, sync_every, 3.0, timeout=120)):
        assert v["identical"] and v["steps"] == 30


@pytest.mark.parametrize("what,needle", [("shape", "shape"), ("dtype", "torch.bfloat16"),
                                         ("sync_every", "sync_every"), ("comm_dtype", "comm_dtype")])
def test_mismatch_is_a_clear_error_on_every_rank(what, needle):
    msgs = values(run_ranks(W.mismatched, 2, what))
    assert all(m is not None and needle in m and "rank 1" in m for m in msgs), msgs


@pytest.mark.parametrize("sync_every,comm_dtype", [(4, None), ("auto", None), (4, "float8_e4m3fn")])
def test_stopped_peer_is_an_error_within_the_timeout(sync_every, comm_dtype):
    """SIGSTOP, not SIGKILL: no socket closes, only the deadline can tell."""
    timeout = 3.0
    res = run_ranks(W.stopped_peer, 2, timeout, sync_every, comm_dtype, pg_timeout=30, allow_missing=(1,),
                    timeout=60)
    v = res[0].value
    assert res[0].ok and v["raised"] == "CommTimeoutError", res[0]
    assert v["after"] <= timeout + 2.0, v
    assert "rank 0" in v["message"], v
