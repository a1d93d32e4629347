"""Communicator benchmarks, nccl-tests style: warm up, issue collectives back to
back, one final wait; algbw = bytes / time per collective, busbw = algbw * 2(n-1)/n.
Against ``torch.distributed.all_reduce(async_op=True)`` on the same group in the same
run. Correctness is checked outside the timed loop. Also: the CPU cost of issuing one
collective and of ``is_completed``, how much of a collective hides behind compute, and
the 8-bit reduction (``quantized_all_reduce_async``: int8 codes of the same element count
and their scales, two phases) against the float32 all-reduce of those elements.
"""

from __future__ import annotations

import statistics
import time

import torch
import torch.distributed as dist

from ..comm import Communicator
from ..launch import init_from_env


def _sizes(min_bytes: int, max_bytes: int) -> list[int]:
    out, b = [], min_bytes
    while b <= max_bytes:
        out.append(b)
        b *= 4
    return out


def _iters(nbytes: int) -> int:
    return max(2, min(50, int(2e8 // max(nbytes, 1))))


def _time_back_to_back(issue, wait_all, iters: int, device) -> float:
    issue_all = [None] * iters
    if device.type == "cuda":
        torch.cuda.synchronize()
    t0 = time.perf_counter()
    for i in range(iters):
        issue_all[i] = issue()
    wait_all(issue_all)
    if device.type == "cuda":
        torch.cuda.synchronize()
    return (time.perf_counter() - t0) / iters


def worker(min_bytes: int, max_bytes: int, device_type: str) -> dict:
    rank, world = init_from_env("nccl" if device_type == "cuda" else "gloo")
    torch.set_num_threads(1)
    device = torch.device("cuda", torch.cuda.current_device()) if device_type == "cuda" else torch.device("cpu")
    comm = Communicator(device=device, timeout=600)
    rows = []
    for nbytes in _sizes(min_bytes, max_bytes):
        n = nbytes // 4
        x = torch.full((n,), float(rank + 1), device=device)
        # correctness, outside the timed loop
        comm.all_reduce_async(x).wait()
        ok = bool((x == (world + 1) / 2).all())
        iters = _iters(nbytes)
        for _ in range(2):  # warm-up
            comm.all_reduce_async(x).wait()
            dist.all_reduce(x)
        t_ours = _time_back_to_back(lambda: comm.all_reduce_async(x),
                                    lambda ws: ws[-1].wait(), iters, device)
        t_torch = _time_back_to_back(lambda: dist.all_reduce(x, async_op=True),
                                     lambda ws: [w.wait() for w in ws], iters, device)
        codes = torch.zeros(n, dtype=torch.int8, device=device)
        scales = torch.ones((n + 511) // 512, device=device)
        comm.quantized_all_reduce_async(codes, scales).wait()  # warm-up
        t_q8 = _time_back_to_back(lambda: comm.quantized_all_reduce_async(codes, scales),
                                  lambda ws: ws[-1].wait(), iters, device)
        factor = 2 * (world - 1) / world
        rows.append({"bytes": nbytes, "iters": iters, "correct": ok,
                     "hpsgd_s": t_ours, "torch_s": t_torch, "int8_s": t_q8,
                     "hpsgd_algbw_GBps": nbytes / t_ours / 1e9, "torch_algbw_GBps": nbytes / t_torch / 1e9,
                     "hpsgd_busbw_GBps": nbytes / t_ours / 1e9 * factor,
                     "torch_busbw_GBps": nbytes / t_torch / 1e9 * factor})
    issue = _issue_cost(comm, device)
    overlap = _overlap(comm, device)
    dist.barrier()
    return {"rank": rank, "world": world, "transport": comm.transport, "rows": rows,
            "issue": issue, "overlap": overlap}


def _issue_cost(comm: Communicator, device) -> dict:
    x = torch.ones(256, device=device)
    works, costs, polls = [], [], []
    for _ in range(200):
        t0 = time.perf_counter()
        works.append(comm.all_reduce_async(x))
        costs.append(time.perf_counter() - t0)
    for w in works[:100]:
        t0 = time.perf_counter()
        w.is_completed()
        polls.append(time.perf_counter() - t0)
    works[-1].wait()
    return {"issue_us_median": 1e6 * statistics.median(costs),
            "is_completed_us_median": 1e6 * statistics.median(polls)}


def _compute(device, reps: int):
    a = torch.randn(384, 384, device=device)
    for _ in range(reps):
        a = torch.tanh(a @ a / 384)
    if device.type == "cuda":
        torch.cuda.synchronize()
    return a


def _overlap(comm: Communicator, device, nbytes: int = 64 * 2**20) -> dict:
    x = torch.ones(nbytes // 4, device=device)
    reps = 40 if device.type == "cpu" else 4000
    _compute(device, 2)
    t0 = time.perf_counter(); _compute(device, reps); t_comp = time.perf_counter() - t0
    t0 = time.perf_counter(); comm.all_reduce_async(x).wait(); t_comm = time.perf_counter() - t0
    dist.barrier()
    t0 = time.perf_counter()
    w = comm.all_reduce_async(x)
    _compute(device, reps)
    w.wait()
    t_both = time.perf_counter() - t0
    hidden = max(0.0, min(1.0, (t_comp + t_comm - t_both) / t_comm)) if t_comm > 0 else 0.0
    return {"bytes": nbytes, "compute_s": t_comp, "comm_s": t_comm, "both_s": t_both,
            "hidden_fraction": hidden}


def table(res: dict) -> str:
    head = (f"{'bytes':>12} {'iters':>5} {'ok':>3} {'hpsgd algbw':>12} {'busbw':>8} {'torch algbw':>12} "
            f"{'busbw':>8} {'ratio':>6} {'int8 x':>6}")
    lines = [f"transport {res['transport']}, world {res['world']} (GB/s)", head, "-" * len(head)]
    for r in res["rows"]:
        lines.append(f"{r['bytes']:12d} {r['iters']:5d} {'y' if r['correct'] else 'N':>3} "
                     f"{r['hpsgd_algbw_GBps']:12.3f} {r['hpsgd_busbw_GBps']:8.3f} "
                     f"{r['torch_algbw_GBps']:12.3f} {r['torch_busbw_GBps']:8.3f} "
                     f"{r['torch_s'] / r['hpsgd_s']:6.2f} "
                     + (f"{r['hpsgd_s'] / r['int8_s']:6.2f}" if "int8_s" in r else f"{'-':>6}"))
    i, o = res["issue"], res["overlap"]
    lines.append(f"issue cost {i['issue_us_median']:.1f} us (median), is_completed {i['is_completed_us_median']:.2f} us")
    lines.append(f"overlap, {o['bytes'] >> 20} MB: compute {o['compute_s']:.3f} s, comm {o['comm_s']:.3f} s, "
                 f"both {o['both_s']:.3f} s -> {100 * o['hidden_fraction']:.0f}% of the collective hidden")
    if any("int8_s" in r for r in res["rows"]):
        lines.append("int8 x: the float32 all-reduce's time over the 8-bit reduction's for the same elements "
                     "(quantized_all_reduce_async: int8 codes, a float32 scale per 512, two phases)")
    return "\n".join(lines)


def plot(res: dict, path: str) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = res["rows"]
    x = [r["bytes"] for r in rows]
    fig, ax = plt.subplots(figsize=(6, 4))
    ax.plot(x, [r["hpsgd_busbw_GBps"] for r in rows], "o-", label="hpsgd Communicator")
    ax.plot(x, [r["torch_busbw_GBps"] for r in rows], "s--", label="torch.distributed.all_reduce")
    if all("int8_s" in r for r in rows):  # the float32 elements it reduces, per second
        f = 2 * (res["world"] - 1) / res["world"]
        ax.plot(x, [r["bytes"] / r["int8_s"] / 1e9 * f for r in rows], "^:",
                label="8-bit reduction (float32-equivalent)")
    ax.set_xscale("log", base=2)
    ax.set_xlabel("message size (bytes)")
    ax.set_ylabel("bus bandwidth (GB/s)")
    ax.set_title(f"all-reduce, {res['transport']}, {res['world']} ranks")
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
