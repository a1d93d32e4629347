"""Run a function on N spawned ranks over Gloo and collect what each returned or
raised. A rank that does not report within the time limit is killed and reported
as hung: a multi-process test can fail, never hang."""

from __future__ import annotations

import datetime
import os
import queue
import time
import traceback
from dataclasses import dataclass
from typing import Any, Callable

import torch.multiprocessing as mp

from hpsgd_ext.launch import free_port


@dataclass
class RankResult:
    rank: int
    ok: bool
    value: Any = None
    error_type: str = ""
    message: str = ""
    traceback: str = ""
    exitcode: int | None = None


def _entry(target, rank, world, port, q, args, pg_timeout):
    import torch
    import torch.distributed as dist

    torch.set_num_threads(1)
    os.environ["HPSGD_TEST_RANK"] = str(rank)
    try:
        dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank,
                                world_size=world, timeout=datetime.timedelta(seconds=pg_timeout))
        value = target(rank, world, *args)
        q.put(RankResult(rank, True, value))
    except BaseException as e:  # noqa: BLE001 - reported to the parent
        q.put(RankResult(rank, False, None, type(e).__name__, str(e), traceback.format_exc()))
    # Skip interpreter teardown: a group whose peer died must not hold us hostage.
    q.close()
    q.join_thread()
    os._exit(0)


def run_ranks(target: Callable, world: int, *args, timeout: float = 90.0,
              pg_timeout: float = 60.0, allow_missing: tuple[int, ...] = ()) -> dict[int, RankResult]:
    """Run ``target(rank, world, *args)`` on ``world`` processes. Ranks listed in
    ``allow_missing`` may die without reporting (e.g. killed on purpose)."""
    ctx = mp.get_context("spawn")
    q = ctx.Queue()
    port = free_port()
    procs = [ctx.Process(target=_entry, args=(target, r, world, port, q, args, pg_timeout), daemon=True)
             for r in range(world)]
    for p in procs:
        p.start()
    results: dict[int, RankResult] = {}
    deadline = time.monotonic() + timeout
    expected = set(range(world)) - set(allow_missing)
    try:
        while not expected <= results.keys():
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                break
            try:
                res = q.get(timeout=min(remaining, 0.5))
                results[res.rank] = res
            except queue.Empty:
                # A rank that exited without reporting will never report.
                dead = [r for r, p in enumerate(procs) if not p.is_alive() and r not in results
                        and r not in allow_missing]
                if dead and q.empty():
                    time.sleep(0.2)
                    while not q.empty():
                        res = q.get()
                        results[res.rank] = res
                    for r in dead:
                        results.setdefault(r, RankResult(r, False, error_type="Died",
                                                         message=f"exit code {procs[r].exitcode}"))
    finally:
        for p in procs:
            p.join(timeout=max(0.0, min(5.0, deadline - time.monotonic())))
        for p in procs:
            if p.is_alive():
                p.kill()
                p.join(5)
    for r, p in enumerate(procs):
        if r in results:
            results[r].exitcode = p.exitcode
        else:
            results[r] = RankResult(r, False, error_type="Hung" if r not in allow_missing else "Missing",
                                    message="no report within the time limit", exitcode=p.exitcode)
    return results


def values(results: dict[int, RankResult]) -> list[Any]:
    """Every rank's return value; fails with each rank's traceback otherwise."""
    bad = [r for r in results.values() if not r.ok]
    if bad:
        raise AssertionError("\n".join(f"rank {r.rank}: {r.error_type}: {r.message}\n{r.traceback}" for r in bad))
    return [results[r].value for r in sorted(results)]


def assert_survivors_raised(results: dict[int, RankResult], killed: int, timeout: float,
                            slack: float = 2.0) -> None:
    """The killed rank died by SIGKILL; every other rank reported a CommError or
    CommTimeoutError naming a rank, within timeout + slack, and exited cleanly."""
    assert results[killed].exitcode == -9, results[killed]
    for r, res in results.items():
        if r == killed:
            continue
        assert res.ok, res.traceback
        v = res.value
        assert v["raised"] in ("CommError", "CommTimeoutError"), v
        assert v["after"] <= timeout + slack, v
        assert "rank" in v["message"], v
        assert res.exitcode == 0, res  # reported and exited: nothing left hanging
