"""Communicator behaviour that one rank can show: argument errors, buffer lifetime,
deadlines, link model, counters. A world of one over Gloo, in this process."""

from __future__ import annotations

import datetime
import gc
import os
import threading
import time
import weakref

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
    # Buffers first: on a loaded machine allocating them can outlast the 10 ms link latency.
    bufs = [torch.ones(n, dtype=torch.bfloat16) for n in (10, 1000, 100_000)]
    works = [comm.all_reduce_async(b) for b in bufs]
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


def _rss_bytes() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def _threads() -> int:
    return len(os.listdir("/proc/self/task"))


def test_close_and_drop_release_everything(world_of_one):
    """No reference cycle: 15 communicators built, used and closed (or just
    dropped) leave no flat buffer, watchdog thread or memory behind."""
    refs = []

    def cycle(i):
        comm = Communicator(timeout=5)
        bufs = [torch.full((1_000_000,), float(i)) for _ in range(3)]  # 4 MB each
        works = [comm.all_reduce_async(b) for b in bufs]
        for w in works:
            w.wait()
        refs.extend(weakref.ref(b) for b in bufs)
        if i % 2 == 0:
            comm.close()  # odd cycles: dropping the last reference must do the same

    for i in range(2):  # warm up allocator and Gloo
        cycle(i)
    gc.collect()
    rss0, threads0 = _rss_bytes(), _threads()
    for i in range(15):
        cycle(i)
    gc.collect()
    alive = sum(r() is not None for r in refs)
    assert alive == 0, f"{alive} flat buffers outlived their communicator"
    assert _threads() <= threads0 + 1  # each watchdog was joined
    growth = _rss_bytes() - rss0
    assert growth < 24 * 2**20, f"RSS grew by {growth / 2**20:.1f} MB over 15 cycles (180 MB if leaking)"


def test_close_releases_the_in_flight_list(world_of_one):
    comm = Communicator(timeout=5)
    core = comm._core
    works = [comm.all_reduce_async(torch.ones(100)) for _ in range(3)]
    works[-1].wait()
    comm.close()
    assert core.closed and core.in_flight == 0
    comm.close()  # idempotent
    assert all(w.is_completed() for w in works)


def test_healthy_communicator_check_and_error(world_of_one):
    comm = Communicator(timeout=5)
    assert comm.error is None
    comm.check()  # no error recorded: returns
    w = comm.all_reduce_async(torch.ones(10))
    assert w.valid_flag is None  # CPU Work has no device flag
    w.wait()
    comm.abort("test reason")
    assert "test reason" in comm.error
    with pytest.raises(hpsgd_ext.CommError, match="test reason") as info:
        comm.check()
    assert not isinstance(info.value, TimeoutError)  # an abort is not a deadline
    with pytest.raises(hpsgd_ext.CommError, match="test reason"):
        comm.all_reduce_async(torch.ones(3))
    comm.close()
    assert "test reason" in comm.error  # kept after close


def test_comm_timeout_error_is_both_types():
    assert issubclass(hpsgd_ext.CommTimeoutError, TimeoutError)
    assert issubclass(hpsgd_ext.CommTimeoutError, hpsgd_ext.CommError)
    assert not issubclass(hpsgd_ext.CommError, TimeoutError)


def test_abort_from_another_thread_releases_a_blocked_wait(world_of_one):
    comm = Communicator(timeout=30, link=LinkModel(bandwidth=1e6, latency=0.0))
    work = comm.all_reduce_async(torch.ones(1_000_000))  # 4 s modelled
    timing = {}

    def aborter():
        time.sleep(0.3)
        timing["t0"] = time.monotonic()
        comm.abort("stopped from another thread")
        timing["abort_s"] = time.monotonic() - timing["t0"]

    th = threading.Thread(target=aborter)
    th.start()
    with pytest.raises(hpsgd_ext.CommError, match="stopped from another thread"):
        work.wait()
    released = time.monotonic() - timing["t0"]
    th.join(5)
    assert timing["abort_s"] < 1.0 and released < 1.0, (timing, released)
    assert comm.stats()["aborted"]


def test_sum_mode_world_of_one(world_of_one):
    comm = Communicator(timeout=5)
    x = torch.arange(6, dtype=torch.float32)
    comm.all_reduce_async(x, average=False).wait()
    assert torch.equal(x, torch.arange(6, dtype=torch.float32))


@pytest.mark.parametrize("kwargs, name", [
    ({"min_ctas": 0}, "min_ctas"), ({"max_ctas": -2}, "max_ctas"), ({"max_ctas": True}, "max_ctas"),
    ({"min_ctas": 2.0}, "min_ctas"), ({"min_ctas": 8, "max_ctas": 4}, "min_ctas"),
])
def test_cta_limits_validated(world_of_one, kwargs, name):
    with pytest.raises(ValueError, match=name):
        Communicator(timeout=5, **kwargs)


def test_cta_limits_ignored_on_cpu(world_of_one):
    with Communicator(timeout=5, min_ctas=1, max_ctas=4) as comm:
        comm.all_reduce_async(torch.ones(5)).wait()


@pytest.mark.parametrize("kwargs, match", [
    ({"transport": "mpi"}, "transport is 'mpi'"),
    ({"transport": "nccl"}, "transport='nccl' needs CUDA buffers"),
])
def test_transport_validated(world_of_one, kwargs, match):
    with pytest.raises(ValueError, match=match):
        Communicator(timeout=5, **kwargs)


def test_c10d_transport_named_explicitly_on_cpu(world_of_one):
    with Communicator(timeout=5, transport="c10d") as comm:
        x = torch.arange(6, dtype=torch.float32)
        comm.all_reduce_async(x).wait()
        assert torch.equal(x, torch.arange(6, dtype=torch.float32))


def test_a_hold_longer_than_the_timeout_times_out(world_of_one):
    """The deadline counts from when the collective can start on the emulated link,
    not from its modelled finish: a transfer the link holds for an hour, under a 1 s
    timeout, is reported by the watchdog at about 1 s, while nobody waits on it."""
    comm = Communicator(timeout=1, link=LinkModel(bandwidth=1.0, latency=3600.0))
    w = comm.all_reduce_async(torch.ones(8))
    t0 = time.monotonic()
    while comm.error is None and time.monotonic() - t0 < 10:
        time.sleep(0.02)
    assert comm.error is not None and time.monotonic() - t0 < 2.5, comm.error
    with pytest.raises(hpsgd_ext.CommTimeoutError):
        w.wait()
    with pytest.raises(hpsgd_ext.CommTimeoutError):
        comm.check()
    comm.close()
