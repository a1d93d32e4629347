"""10,000 rounds with a tiny model on 2 ranks: no growth in memory, none in per-round time."""

import pytest

import hook_workers as W
from dist_utils import run_ranks, values

pytestmark = [pytest.mark.multiprocess, pytest.mark.timeout(300)]


def test_ten_thousand_rounds_do_not_grow():
    rounds = 10_000
    for v in values(run_ranks(W.long_run, 2, rounds, timeout=240)):
        assert v["rounds"] == rounds + 1  # one per step, plus synchronize()'s final round
        first, last = v["rss"][rounds // 10], v["rss"][rounds]
        assert last - first < 4, f"RSS grew from {first:.1f} MB to {last:.1f} MB over {rounds} rounds"
        assert v["late_s"] < 2.0 * v["early_s"] + 1e-4, v  # median per-round time, late vs early
