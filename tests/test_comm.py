"""Communicator behaviour that one rank can show: argument errors, buffer lifetime,
deadlines, link model, counters. A world of one over Gloo, in this process."""

from __future__ import annotations

import datetime
import gc
import time

import pytest
import torch
import torch.distributed as dist

import hpsgd_ext
from hpsgd_ext import Communicator, LinkModel


def test_requires_initialized_group():
    if dist.is_initialized():
        pytest.skip("a default group exists in this process")
    with pytest.raises(RuntimeError, match="not initialized"):
        Communicator()


@pytest.mark.parametrize("bad", [0, -1, float("nan"), "5", datetime.timedelta(0)])
def test_timeout_must_be_positive(world_of_one, bad):
    with pytest.raises(ValueError, match="timeout"):
        Communicator(timeout=bad)


def test_link_validation(world_of_one):
    with pytest.raises(ValueError, match="bandwidth"):
        LinkModel(0.0, 0.0)
    with pytest.raises(ValueError, match="latency"):
        LinkModel(1e6, -1.0)
    with pytest.raises(TypeError, match="link"):
        Communicator(link=(1e6, 0.0))
    assert LinkModel(1e6, 0.5).duration(2e6) == pytest.approx(2.5)


def test_bad_buffers(world_of_one):
    comm = Communicator(timeout=5)
    with pytest.raises(TypeError, match="flat has dtype Long"):
        comm.all_reduce_async(torch.ones(4, dtype=torch.long))
    with pytest.raises(TypeError, match="flat has dtype Int"):
        comm.all_reduce_async(torch.ones(4, dtype=torch.int32))
    with pytest.raises(ValueError, match="not a contiguous"):
        comm.all_reduce_async(torch.ones(4, 3).t())
    with pytest.raises(TypeError):
        comm.all_reduce_async(None)
    assert comm.stats()["issued"] == 0  # nothing was issued by a refused call
    comm.all_reduce_async(torch.ones(3)).wait()  # and the communicator still works


def test_buffer_freed_while_in_flight(world_of_one):
    comm = Communicator(timeout=5, link=LinkModel(bandwidth=50e6, latency=0.05))
    work = comm.all_reduce_async(torch.ones(1_000_000))
    gc.collect()  # the caller's reference is gone; the Work keeps the buffer alive
    work.wait()
    assert work.is_completed()


def test_wait_timeout_aborts_and_names_the_collective(world_of_one):
    comm = Communicator(timeout=30, link=LinkModel(bandwidth=1e6, latency=0.0))
    work = comm.all_reduce_async(torch.ones(1_000_000))  # 4 s modelled
    t0 = time.monotonic()
    with pytest.raises(hpsgd_ext.CommTimeoutError, match=r"all_reduce #0 \(4000000 bytes.*rank 0 of 1.*timed out"):
        work.wait(datetime.timedelta(milliseconds=200))
    assert time.monotonic() - t0 < 1.0
    with pytest.raises(hpsgd_ext.CommError, match="aborted"):
        comm.all_reduce_async(torch.ones(3))
    with pytest.raises(hpsgd_ext.CommError, match="aborted"):
        work.is_completed()
    st = comm.stats()
    assert st["aborted"] and st["timeouts"] == 1


def test_close_with_work_in_flight(world_of_one):
    comm = Communicator(timeout=5, link=LinkModel(bandwidth=20e6, latency=0.0))
    x = torch.ones(1_000_000)
    work = comm.all_reduce_async(x)
    comm.close()
    with pytest.raises(RuntimeError, match="closed"):
        comm.all_reduce_async(x)
    work.wait()  # the in-flight handle stays valid
    del work
    with Communicator(timeout=5) as c2:
        c2.all_reduce_async(torch.ones(2)).wait()


def test_telemetry_and_counters(world_of_one):
    comm = Communicator(timeout=5, link=LinkModel(bandwidth=100e6, latency=0.01))
    works = [comm.all_reduce_async(torch.ones(n, dtype=torch.bfloat16)) for n in (10, 1000, 100_000)]
    assert not works[0].is_completed()
    for w in works:
        w.wait(2.0)
    assert [w.bytes for w in works] == [20, 2000, 200_000]
    assert all(w.completed_at >= w.issued_at for w in works)
    assert works[-1].completed_at - works[0].issued_at >= 3 * 0.01
    st = comm.stats()
    assert (st["issued"], st["completed"], st["bytes"], st["failed"]) == (3, 3, 202_020, 0)
    assert st["transport"] == "c10d:gloo" and st["wait_seconds"] > 0
    assert "rank 0/1" in repr(comm)


def test_is_completed_never_blocks(world_of_one):
    comm = Communicator(timeout=5, link=LinkModel(bandwidth=1e6, latency=0.3))
    work = comm.all_reduce_async(torch.ones(10))
    t0 = time.monotonic()
    for _ in range(1000):
        work.is_completed()
    assert time.monotonic() - t0 < 0.25
    work.wait()
