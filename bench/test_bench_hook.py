"""pytest-benchmark: a training step with and without the HPSGD hook (no boundary)."""

import pytest
import torch.distributed as dist

from hpsgd_ext import HPSGD
from hpsgd_ext.bench.hook_overhead import _setup, _steps
from hpsgd_ext.launch import init_world_of_one


@pytest.fixture(scope="module", autouse=True)
def world_of_one():
    init_world_of_one()
    yield
    dist.destroy_process_group()


@pytest.mark.parametrize("hooked", [False, True], ids=["plain", "hpsgd"])
def test_step(benchmark, hooked):
    model, opt, x, y = _setup(256, "cpu")
    hp = HPSGD(model, opt, sync_every=10**9) if hooked else None
    benchmark.group = "training step, 134k params"
    benchmark.pedantic(lambda: _steps(model, opt, x, y, 20, "cpu"), warmup_rounds=2, rounds=15)
    if hp is not None:
        hp.close()
