"""Two processes on the one GPU: HPSGD over CUDA buffers, reduced by the c10d
transport over Gloo (the only multi-rank CUDA check one GPU allows)."""

from __future__ import annotations

import pytest

import gpu_workers as W
from dist_utils import run_ranks, values

pytestmark = [pytest.mark.gpu, pytest.mark.multiprocess, pytest.mark.timeout(240)]


@pytest.mark.parametrize("replica", ["keep", "reset"])
def test_two_ranks_on_one_gpu_equal_the_reference(replica):
    for v in values(run_ranks(W.equals_reference, 2, replica, 4, 23)):
        assert v["transport"].startswith("c10d"), v
        assert v["max_diff"] <= 1e-5, v
        assert v["ranks_identical"], v
        assert v["moved"] > 1e-3, v


def test_nan_round_is_skipped_on_the_device_on_every_rank():
    for v in values(run_ranks(W.nan_round_skipped, 2)):
        assert v["unchanged"] and v["moved_later"], v
        assert v["skipped_by_step_10"] == 1 and v["skipped"] == 1 and v["warned"] == 1, v
        assert v["finite"] and v["identical"], v
