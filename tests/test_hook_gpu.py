"""HPSGD on a GPU (single rank, NCCL communicator): the fused boundary on the compute
stream, the reduction on the comm stream, no CPU block at a boundary."""

from __future__ import annotations

import time

import pytest
import torch
from torch import nn

import hpsgd_ext
from hpsgd_ext import HPSGD, LinkModel

pytestmark = [pytest.mark.gpu, pytest.mark.usefixtures("world_of_one"),
              pytest.mark.skipif(not hpsgd_ext.built_with_nccl(), reason="no NCCL in this build")]


def _model():
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(64, 256), nn.ReLU(), nn.Linear(256, 10)).cuda()


def _step(m, opt, s):
    g = torch.Generator(device="cuda").manual_seed(s)
    x = torch.randn(32, 64, device="cuda", generator=g)
    y = torch.randint(0, 10, (32,), device="cuda", generator=g)
    opt.zero_grad()
    nn.functional.cross_entropy(m(x), y).backward()
    opt.step()


@pytest.mark.parametrize("comm_dtype", [None, torch.bfloat16])
def test_single_rank_keep_equals_plain_training(comm_dtype):
    m1, m2 = _model(), _model()
    o1 = torch.optim.SGD(m1.parameters(), lr=0.05, momentum=0.9)
    o2 = torch.optim.SGD(m2.parameters(), lr=0.05, momentum=0.9)
    hp = HPSGD(m1, o1, sync_every=3, comm_dtype=comm_dtype)
    assert hp.comm.transport == "nccl"
    for s in range(11):
        _step(m1, o1, s)
        _step(m2, o2, s)
    hp.synchronize()
    tol = dict(rtol=1e-5, atol=1e-6) if comm_dtype is None else dict(rtol=2e-2, atol=2e-3)
    for a, b in zip(m1.parameters(), m2.parameters()):
        torch.testing.assert_close(a, b, **tol)
    hp.close()


def test_boundary_does_not_block_the_cpu_on_a_slow_link():
    m = _model()
    opt = torch.optim.SGD(m.parameters(), lr=0.05)
    hp = HPSGD(m, opt, sync_every=2, link=LinkModel(bandwidth=1e6, latency=0.2))
    for s in range(6):  # three boundaries, each reduction held ~0.5 s on the device
        _step(m, opt, s)
    assert hp.stats()["exposed_seconds"] < 0.1  # the compute stream waits, the CPU does not
    hp.synchronize()
    assert hp.stats()["rounds"] == 4
    hp.close()


def test_long_run_allocates_nothing_per_round():
    m = _model()
    opt = torch.optim.SGD(m.parameters(), lr=0.01)
    hp = HPSGD(m, opt, sync_every=1)
    for s in range(200):  # warm up: optimizer state, caching allocator
        _step(m, opt, s)
    torch.cuda.synchronize()
    before = torch.cuda.memory_allocated()
    for s in range(2000):
        _step(m, opt, s)
    torch.cuda.synchronize()
    assert torch.cuda.memory_allocated() - before <= 1 << 20  # nothing kept per round
    hp.synchronize()
    hp.close()


def test_hook_benchmark_on_cuda():
    """`hpsgd-bench hook --device cuda` at a small size: its auto case holds a
    reduction on the comm stream for hours, so it must time the compute stream
    only, load every kernel before the hold starts, and cancel the hold when it closes."""
    from hpsgd_ext.bench import hook_overhead

    t0 = time.monotonic()
    res = hook_overhead.run(widths=(64,), repeats=5, device="cuda")
    assert time.monotonic() - t0 < 60
    assert {r["case"] for r in res["rows"]} >= {"plain", "hpsgd auto (polling)"}
    assert res["boundary"][0]["rounds"] > 0
