"""A small model of step speed under communication (see bench/SCALING.md).

Per rank: ``t`` seconds of compute a step, ``B`` bytes of model (or gradients), ``N``
ranks, per-rank link bandwidth ``b`` bytes/s, latency ``a`` s. A ring all-reduce moves
2(N-1)/N of the bytes per rank in 2(N-1) latency-bound steps:

    T(N) = 2(N-1) a + 2(N-1)/N * B / b

Step time, no overlap assumed for the blocking baselines:
    DDP                      t + T           (a bound: bucketing can hide up to the backward pass)
    periodic averaging (H)   t + T / H
    HPSGD fixed H            max(t, T / H)   (the round runs during the next window)
    HPSGD auto               t               (windows stretch to ceil(T / t) steps; one round stale)
Exposed communication is 1 - t / step.
"""

from __future__ import annotations

import math


def allreduce_seconds(nbytes: float, ranks: int, bandwidth: float, latency: float = 0.0) -> float:
    if ranks <= 1:
        return 0.0
    return 2 * (ranks - 1) * latency + 2 * (ranks - 1) / ranks * nbytes / bandwidth


def step_seconds(algo: str, compute: float, comm: float, window: int = 1) -> float:
    if algo == "ddp":
        return compute + comm
    if algo == "localsgd":
        return compute + comm / window
    if algo == "hpsgd":
        return max(compute, comm / window)
    if algo == "hpsgd-auto":
        return compute
    raise ValueError(f"unknown algorithm {algo!r}")


def auto_window(compute: float, comm: float) -> int:
    """Steps per round HPSGD's auto rule settles at."""
    return max(1, math.ceil(comm / compute))


def predict(compute: float, nbytes: float, ranks: int, bandwidth: float, latency: float = 0.0,
            windows=(4, 16)) -> list[dict]:
    comm = allreduce_seconds(nbytes, ranks, bandwidth, latency)
    rows = [("ddp", 1), ("hpsgd-auto", auto_window(compute, comm))]
    rows += [(a, h) for h in windows for a in ("localsgd", "hpsgd")]
    out = []
    for algo, h in rows:
        s = step_seconds(algo, compute, comm, h)
        out.append({"algo": algo, "window": h, "allreduce_s": comm, "step_s": s,
                    "steps_per_s": 1 / s, "exposed": 1 - compute / s})
    return out
