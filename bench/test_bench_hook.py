"""pytest-benchmark: a training step with no hook, with the HPSGD hook on non-boundary
steps, and with a boundary every step (the fused round_step and the issue of a
reduction on one rank). `hpsgd-bench hook` runs the same cases interleaved."""

import pytest

from hpsgd_ext import HPSGD
from hpsgd_ext.bench.hook_overhead import _setup, _steps


@pytest.mark.parametrize("sync_every", [None, 10**9, 1], ids=["plain", "hpsgd-no-boundary", "hpsgd-H1"])
def test_step(benchmark, world_of_one, sync_every):
    model, opt, x, y = _setup(256, "cpu")
    hp = HPSGD(model, opt, sync_every=sync_every) if sync_every else None
    benchmark.group = "training step, 134k params"
    benchmark.pedantic(lambda: _steps(model, opt, x, y, 20, "cpu"), warmup_rounds=2, rounds=15)
    if hp is not None:
        if sync_every == 1:
            s = hp.stats()
            assert s["rounds"] == s["local_steps"] > 0
        hp.synchronize()
        hp.close()
