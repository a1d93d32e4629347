"""Bodies of the multi-process communicator tests; each runs on every rank."""

from __future__ import annotations

import os
import signal
import time

import torch
import torch.distributed as dist

import hpsgd_ext
from hpsgd_ext import Communicator, LinkModel

DTYPES = [torch.float32, torch.bfloat16, torch.float16]


def rank_data(rank: int, n: int, dtype, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed * 1000 + rank)
    return torch.randn(n, generator=g).to(dtype)


def expected_mean(world: int, n: int, dtype, seed: int = 0) -> torch.Tensor:
    return torch.stack([rank_data(r, n, dtype, seed).double() for r in range(world)]).mean(0)


def rel_error(got: torch.Tensor, exp: torch.Tensor) -> float:
    return ((got.double() - exp).abs().max() / exp.abs().max().clamp_min(1e-12)).item()


def mean_every_dtype(rank, world, n):
    comm = Communicator(timeout=30)
    errors = {}
    for i, dt in enumerate(DTYPES):
        x = rank_data(rank, n, dt, seed=i)
        comm.all_reduce_async(x).wait()
        errors[str(dt)] = rel_error(x, expected_mean(world, n, dt, seed=i))
    return errors


def many_in_flight(rank, world, count):
    comm = Communicator(timeout=30)
    sizes = [1 + 7919 * k % 50021 for k in range(count)]
    bufs = [rank_data(rank, s, torch.float32, seed=k) for k, s in enumerate(sizes)]
    works = [comm.all_reduce_async(b) for b in bufs]
    # Waiting on the last first: completion is in issue order, so all are done.
    works[-1].wait()
    all_done = all(w.is_completed() for w in works)
    for w in reversed(works):
        w.wait()
    errs = [rel_error(b, expected_mean(world, s, torch.float32, seed=k))
            for k, (b, s) in enumerate(zip(bufs, sizes))]
    done_times = [w.completed_at for w in works]
    return {"all_done_after_last": all_done, "max_err": max(errs),
            "ordered": all(a <= b for a, b in zip(done_times, done_times[1:])),
            "stats": comm.stats(), "seqs": [w.seq for w in works]}


def big_buffer(rank, world, n):
    comm = Communicator(timeout=60)
    x = torch.full((n,), float(rank + 1))
    comm.all_reduce_async(x).wait()
    exp = sum(range(1, world + 1)) / world
    return {"ok": bool((x == exp).all()), "bytes": x.numel() * 4}


def completion_with_link(rank, world):
    link = LinkModel(bandwidth=10e6, latency=0.02)  # 10 MB/s, 20 ms
    comm = Communicator(timeout=30, link=link)
    bufs = [torch.ones(250_000) * rank for _ in range(3)]  # 1 MB each: 0.12 s modelled
    t0 = hpsgd_ext._C.monotonic()
    works = [comm.all_reduce_async(b) for b in bufs]
    first_check = works[0].is_completed()
    works[-1].wait()
    finished = [w.completed_at - t0 for w in works]
    return {"first_check": first_check, "finished": finished,
            "modelled": link.duration(1e6), "done": all(w.is_completed() for w in works),
            "value_ok": all(bool((b == (world - 1) / 2).all()) for b in bufs)}


def one_rank_never_issues(rank, world, timeout):
    comm = Communicator(timeout=timeout)
    if rank == world - 1:
        time.sleep(timeout + 3)  # silent: never issues
        return "silent"
    work = comm.all_reduce_async(torch.ones(1000))
    t0 = time.monotonic()
    try:
        work.wait()
    except hpsgd_ext.CommTimeoutError as e:
        return {"raised": "CommTimeoutError", "after": time.monotonic() - t0, "message": str(e),
                "refuses_more": _refuses(comm)}
    return {"raised": None}


def killed_mid_collective(rank, world, timeout):
    comm = Communicator(timeout=timeout)
    x = torch.ones(16_000_000)  # 64 MB: the transfer is under way when the victim dies
    work = comm.all_reduce_async(x)
    if rank == 1:
        time.sleep(0.05)
        os.kill(os.getpid(), signal.SIGKILL)
    t0 = time.monotonic()
    try:
        work.wait()
        # Gloo may finish the sum before noticing; the next collective cannot.
        comm.all_reduce_async(torch.ones(10)).wait()
    except (hpsgd_ext.CommError, hpsgd_ext.CommTimeoutError) as e:
        return {"raised": type(e).__name__, "after": time.monotonic() - t0, "message": str(e)}
    return {"raised": None}


def _refuses(comm) -> bool:
    try:
        comm.all_reduce_async(torch.ones(3))
    except hpsgd_ext.CommError:
        return True
    return False


def watchdog_without_wait(rank, world, timeout):
    """Rank 0 issues one collective and never waits on it; the last rank never
    issues. The watchdog alone must fail it, on time, with the right type."""
    comm = Communicator(timeout=timeout)
    if rank == world - 1:
        time.sleep(timeout + 1.5)  # silent: never issues
        return "silent"
    work = comm.all_reduce_async(torch.ones(1000))
    t0 = time.monotonic()
    checks = 0
    while comm.error is None and time.monotonic() - t0 < timeout + 3:
        comm.check()  # cheap, and must not raise while healthy
        checks += 1
        time.sleep(0.01)
    after = time.monotonic() - t0
    out = {"after": after, "error": comm.error, "checks": checks, "valid_flag": work.valid_flag}
    for what, call in (("check", comm.check),
                       ("all_reduce_async", lambda: comm.all_reduce_async(torch.ones(3))),
                       ("is_completed", work.is_completed), ("wait", work.wait)):
        try:
            call()
            out[what] = (None, "")
        except Exception as e:  # noqa: BLE001 - the type is what the test checks
            out[what] = (type(e).__name__, str(e))
    out["is_timeout_error"] = isinstance(_raised(comm.check), TimeoutError)
    out["stats"] = comm.stats()
    comm.close()
    return out


def close_with_silent_peer(rank, world, timeout):
    """Rank 0 closes its communicator with a collective in flight that the last
    rank never joins: close() must not wait for it."""
    comm = Communicator(timeout=timeout)
    if rank == world - 1:
        time.sleep(1.5)
        return "silent"
    work = comm.all_reduce_async(torch.ones(1000))
    time.sleep(0.1)
    t0 = time.monotonic()
    comm.close()
    closed_after = time.monotonic() - t0
    # The handle stays usable after close: polling it neither crashes nor blocks.
    t0 = time.monotonic()
    polled = _raised(work.is_completed)
    return {"closed_after": closed_after, "poll_s": time.monotonic() - t0,
            "poll_raised": type(polled).__name__ if polled else None, "error": comm.error}


def sum_mode(rank, world, n):
    comm = Communicator(timeout=30)
    x = rank_data(rank, n, torch.float32, seed=7)
    y = rank_data(rank, n, torch.float32, seed=8)
    wx = comm.all_reduce_async(x, average=False)
    wy = comm.all_reduce_async(y)  # the default stays the mean
    wx.wait()
    wy.wait()
    exp_sum = torch.stack([rank_data(r, n, torch.float32, seed=7).double() for r in range(world)]).sum(0)
    comm.close()
    return {"sum_err": rel_error(x, exp_sum),
            "mean_err": rel_error(y, expected_mean(world, n, torch.float32, seed=8))}


def _raised(call):
    try:
        call()
    except Exception as e:  # noqa: BLE001
        return e
    return None
