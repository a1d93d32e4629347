"""Streaming rounds (``HPSGD(fragments=F)``, docs/round-protocol.md "Fragments"):
each boundary closes one fragment's window in rotation. Equal to the reference of
the same schedule on 2 and 4 ranks, both replica rules; every change applied once
through synchronize(); checkpoints resume exactly; the flats hold one fragment."""

from __future__ import annotations

import pytest
import torch

import fragment_workers as W
from dist_utils import run_ranks, values

pytestmark = [pytest.mark.multiprocess, pytest.mark.timeout(180)]


@pytest.mark.parametrize("world,fragments,replica,momentum,wire", [
    (2, 2, "keep", 0.0, None),
    (2, 3, "reset", 0.0, None),
    (2, 3, "keep", 0.5, torch.bfloat16),
    (4, 4, "keep", 0.0, None),
    (4, 2, "reset", 0.5, None),
])
def test_equals_reference_of_the_same_schedule(world, fragments, replica, momentum, wire):
    # 23 steps with H=2: partial windows before both synchronize() calls.
    for v in values(run_ranks(W.equals_reference, world, fragments, replica, 2, 23, momentum, wire,
                              timeout=150)):
        # The reference runs the same rule through reference.round_step with divisor 1 and a
        # division after the sum (HPSGD: d / N and a plain sum): float rounding only.
        tol = 2e-2 if wire is torch.bfloat16 else 1e-5
        assert v["max_diff_half"] < tol and v["max_diff_end"] < tol, v
        assert v["identical"] and v["moved"] > 1e-3, v


def test_one_fragment_is_the_plain_schedule():
    # fragments=1 runs the fused boundary (no merge-only pass): the reference agrees too.
    for v in values(run_ranks(W.equals_reference, 2, 1, "keep", 3, 17, 0.0, None, timeout=120)):
        assert v["max_diff_end"] < 1e-5 and v["identical"], v


@pytest.mark.parametrize("H,phases", [
    (2, [[7, 7], [5, 5], [1, 1]]),            # partial windows before each synchronize()
    ("auto", [[7, 12], [9, 4], [1, 3]]),      # uneven steps: catch-up rounds, then the sweep
])
def test_each_change_is_applied_once_through_synchronize(H, phases):
    for v in values(run_ranks(W.each_change_once, 2, 3, H, phases, timeout=120)):
        assert max(v["errors"]) < 1e-5 and v["moved"] > 1e-3 and v["identical"], v


@pytest.mark.parametrize("replica", ["keep", "reset"])
def test_checkpoint_mid_rotation_resumes_exactly(replica):
    # 9 steps, H=2: 4 rounds issued, round 3 (fragment 0 of 3) pending at the save.
    for v in values(run_ranks(W.checkpoint_resumes, 2, 3, replica, 2, 9, 8, timeout=120)):
        assert v["pending"] and v["equal"], v


def test_flats_hold_one_fragment():
    f1 = values(run_ranks(W.equals_reference, 2, 1, "keep", 2, 6, 0.0, None, timeout=120))[0]["flats_bytes"]
    f4 = values(run_ranks(W.equals_reference, 2, 4, "keep", 2, 6, 0.0, None, timeout=120))[0]["flats_bytes"]
    # 483 elements: one fragment (the largest tensor, 256, alone) plus the flag slots.
    assert f4 < 0.6 * f1, (f1, f4)
