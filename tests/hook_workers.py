"""Bodies of the multi-process HPSGD tests; each runs on every rank."""

from __future__ import annotations

import io
import time

import torch
import torch.distributed as dist
from torch import nn

import hpsgd_ext
from hpsgd_ext import HPSGD
from hpsgd_ext.emulation import EmulatedLink
from hpsgd_ext.reference import ReferenceHPSGD


def make_model(seed=0, hidden=16):
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(8, hidden), nn.Tanh(), nn.Linear(hidden, 3))


def batch(rank, step, n=16):
    g = torch.Generator().manual_seed(10_000 * rank + step)
    x = torch.randn(n, 8, generator=g)
    y = torch.randint(0, 3, (n,), generator=g)
    return x, y


def train(model, opt, rank, steps, start=0, slow=0.0, after_step=None):
    """Rank-specific deterministic batches; ``after_step(s)`` injects a fault."""
    loss_fn = nn.CrossEntropyLoss()
    for s in range(start, start + steps):
        x, y = batch(rank, s)
        opt.zero_grad()
        loss_fn(model(x), y).backward()
        opt.step()
        if slow:
            time.sleep(slow)
        if after_step is not None:
            after_step(s)


def flat_params(model):
    return torch.cat([p.detach().reshape(-1) for p in model.parameters()])


def same_on_every_rank(t: torch.Tensor, world: int) -> bool:
    gathered = [torch.empty_like(t) for _ in range(world)]
    dist.all_gather(gathered, t)
    return all(torch.equal(gathered[0], g) for g in gathered)


def equals_reference(rank, world, replica, H, steps, outer_momentum, nesterov):
    # Different seeds per rank: the initial broadcast must make them equal.
    results = {}
    for impl in ("hpsgd", "reference"):
        model = make_model(seed=rank)
        opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
        if impl == "hpsgd":
            hp = HPSGD(model, opt, sync_every=H, replica=replica, outer_lr=0.8,
                       outer_momentum=outer_momentum, nesterov=nesterov)
        else:
            hp = ReferenceHPSGD(model.parameters(), opt, sync_every=H, replica=replica, outer_lr=0.8,
                                outer_momentum=outer_momentum, nesterov=nesterov)
        train(model, opt, rank, steps)  # steps % H != 0: a partial final window
        hp.synchronize()
        results[impl] = flat_params(model)
        hp.close()
    return {"max_diff": (results["hpsgd"] - results["reference"]).abs().max().item(),
            "ranks_identical": same_on_every_rank(results["hpsgd"], world),
            "moved": (results["hpsgd"] - flat_params(make_model(seed=0))).abs().max().item()}


def straggler_auto(rank, world, steps, replica):
    model = make_model(seed=0)
    opt = torch.optim.SGD(model.parameters(), lr=0.05)
    link = hpsgd_ext.LinkModel(bandwidth=2e6, latency=0.01)
    hp = HPSGD(model, opt, sync_every="auto", replica=replica, communicator=EmulatedLink(link), timeout=30)
    t0 = time.monotonic()
    # rank 0 is 3x slower per step than the others; they end up with longer windows
    train(model, opt, rank, steps, slow=0.015 if rank == 0 else 0.005)
    hp.synchronize()
    out = flat_params(model)
    st = hp.stats()
    hp.close()
    return {"identical": same_on_every_rank(out, world), "stats": st,
            "seconds": time.monotonic() - t0}


def uneven_steps_auto(rank, world):
    """Ranks take different numbers of steps before synchronize(): it must still
    agree on the rounds and terminate."""
    model = make_model(seed=0)
    opt = torch.optim.SGD(model.parameters(), lr=0.05)
    hp = HPSGD(model, opt, sync_every="auto", timeout=30)
    train(model, opt, rank, 5 + 7 * rank)
    hp.synchronize()
    train(model, opt, rank, 3 + rank)
    hp.synchronize()
    out = flat_params(model)
    return {"identical": same_on_every_rank(out, world), "stats": hp.stats()}


def mismatched_model(rank, world):
    model = make_model(seed=0, hidden=16 if rank == 0 else 17)
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    try:
        HPSGD(model, opt, sync_every=2)
    except ValueError as e:
        return str(e)
    return None


def mismatched_option(rank, world):
    model = make_model(seed=0)
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    try:
        HPSGD(model, opt, sync_every=2, comm_dtype=torch.bfloat16 if rank == 1 else None)
    except ValueError as e:
        return str(e)
    return None


def nan_on_one_rank(rank, world, momentum, check_finite, comm_dtype=None):
    """Rank 1 writes a NaN into its replica once, after its 5th step. ``comm_dtype``:
    a torch dtype's name."""
    import warnings

    model = make_model(seed=0)
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=momentum)
    hp = HPSGD(model, opt, sync_every=2, timeout=30, check_finite=check_finite, max_bad_rounds=3,
               comm_dtype=getattr(torch, comm_dtype) if comm_dtype else None)

    def poison(s):
        if rank == 1 and s == 4:
            with torch.no_grad():
                model[0].weight[0, 0] = float("nan")

    raised = None
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        try:
            train(model, opt, rank, 14, after_step=poison)
            hp.synchronize()
        except FloatingPointError as e:
            raised = str(e)
    out = flat_params(model)
    return {"raised": raised, "finite": bool(torch.isfinite(out).all()),
            "identical": same_on_every_rank(out, world),
            "skipped": hp.stats()["skipped_rounds"],
            "warned": any("non-finite" in str(w.message) for w in caught),
            "warnings": [str(w.message) for w in caught if issubclass(w.category, RuntimeWarning)]}


def long_run(rank, world, rounds):
    """Many rounds of a tiny model: memory and per-round time must not grow."""
    import resource

    torch.manual_seed(0)
    model = nn.Linear(4, 2)
    opt = torch.optim.SGD(model.parameters(), lr=0.01)
    hp = HPSGD(model, opt, sync_every=1, timeout=60)
    x, y = torch.randn(8, 4), torch.randn(8, 2)
    marks, times = {}, []

    def rss_mb():
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * resource.getpagesize() / 2**20

    for r in range(rounds):
        t0 = time.perf_counter()
        opt.zero_grad()
        nn.functional.mse_loss(model(x), y).backward()
        opt.step()
        times.append(time.perf_counter() - t0)
        if r + 1 in (rounds // 10, rounds):
            marks[r + 1] = rss_mb()
    hp.synchronize()
    tenth = rounds // 10
    early = sorted(times[tenth:2 * tenth])[tenth // 2]
    late = sorted(times[-tenth:])[tenth // 2]
    st = hp.stats()
    hp.close()
    return {"rss": marks, "early_s": early, "late_s": late, "rounds": st["rounds"]}


def killed_while_training(rank, world, timeout, comm_dtype=None):
    """Rank 1 dies mid-round; the others must raise a clear error within the timeout.
    ``comm_dtype``: a torch dtype's name."""
    import os
    import signal

    model = make_model(seed=0)
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    hp = HPSGD(model, opt, sync_every=2, timeout=timeout,
               comm_dtype=getattr(torch, comm_dtype) if comm_dtype else None)
    t0 = []

    def die(s):
        if s == 5:
            if rank == 1:
                os.kill(os.getpid(), signal.SIGKILL)
            t0.append(time.monotonic())

    try:
        train(model, opt, rank, 200, after_step=die)
        hp.synchronize()
    except (hpsgd_ext.CommError, hpsgd_ext.CommTimeoutError) as e:
        return {"raised": type(e).__name__, "after": time.monotonic() - t0[0], "message": str(e)}
    return {"raised": None}


def pause_once(rank, world, sync_every, pause):
    """Rank 0 stops for `pause` seconds once; training continues and ends in agreement."""
    model = make_model(seed=0)
    opt = torch.optim.SGD(model.parameters(), lr=0.05)
    hp = HPSGD(model, opt, sync_every=sync_every, timeout=pause + 20)
    train(model, opt, rank, 30, after_step=lambda s: time.sleep(pause) if rank == 0 and s == 10 else None)
    hp.synchronize()
    out = flat_params(model)
    st = hp.stats()
    hp.close()
    return {"identical": same_on_every_rank(out, world), "steps": st["local_steps"]}


def mismatched(rank, world, what):
    hidden = 17 if (what == "shape" and rank == 1) else 16
    model = make_model(seed=0, hidden=hidden)
    if what == "dtype" and rank == 1:
        model = model.to(torch.bfloat16)
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    kw = {"sync_every": 2}
    if what == "sync_every" and rank == 1:
        kw["sync_every"] = 3
    if what == "comm_dtype" and rank == 1:
        kw["comm_dtype"] = torch.bfloat16
    try:
        HPSGD(model, opt, **kw)
    except ValueError as e:
        return str(e)
    return None


def stopped_peer(rank, world, timeout, sync_every, comm_dtype=None):
    """Rank 1 is SIGSTOPped mid-training (alive, silent). Rank 0 only runs steps,
    never calls wait(): the watchdog must turn the missed deadline into an error
    at rank 0's next step, within the timeout. ``comm_dtype``: a torch dtype's name."""
    import os
    import signal

    model = make_model(seed=0)
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    hp = HPSGD(model, opt, sync_every=sync_every, timeout=timeout,
               comm_dtype=getattr(torch, comm_dtype) if comm_dtype else None)
    marks = []

    def stop(s):
        if s == 5:
            if rank == 1:
                os.kill(os.getpid(), signal.SIGSTOP)
            marks.append(time.monotonic())
        time.sleep(0.01)

    try:
        train(model, opt, rank, 100_000, after_step=stop)
    except hpsgd_ext.CommError as e:  # CommTimeoutError is one
        return {"raised": type(e).__name__, "after": time.monotonic() - marks[0], "message": str(e)}
    return {"raised": None}
