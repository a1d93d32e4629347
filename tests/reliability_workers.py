"""Rank bodies of tests/test_reliability_multiprocess.py: ordinary training code
that broke HPSGD (issue 15). Each runs on every rank of a Gloo world."""

from __future__ import annotations

import io
import time
import warnings

import torch
import torch.distributed as dist
from torch import nn

import hpsgd_ext
from hpsgd_ext import HPSGD
from hpsgd_ext.emulation import EmulatedLink
from hook_workers import batch, flat_params, make_model, same_on_every_rank, train


def _loss_step(model, opt, rank, s, scaler=None, poison_grad=False):
    x, y = batch(rank, s)
    opt.zero_grad()
    loss = nn.functional.cross_entropy(model(x), y)
    if scaler is None:
        loss.backward()
        if poison_grad:
            next(model.parameters()).grad.view(-1)[0] = float("inf")
        opt.step()
        return loss
    scaler.scale(loss).backward()
    if poison_grad:
        next(model.parameters()).grad.view(-1)[0] = float("inf")
    scaler.step(opt)
    scaler.update()
    return loss


# --- 1. the user's own collectives beside HPSGD's rounds -------------------------------
def logging_allreduce(rank, world, sync_every, steps_extra):
    """A per-step all-reduce of the loss for logging, as everyone writes under DDP,
    then (fixed H, uneven steps) a logging all-reduce before synchronize()."""
    model = make_model(seed=0)
    opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    hp = HPSGD(model, opt, sync_every=sync_every, timeout=20)
    steps = 40 + (steps_extra * rank)
    for s in range(steps):
        loss = _loss_step(model, opt, rank, s).detach()
        if not steps_extra:
            dist.all_reduce(loss)  # every step, every rank (same count)
        if rank == 0 and s % 7 == 0:
            time.sleep(0.003)  # auto windows end at different local steps per rank
    dist.all_reduce(torch.ones(3))  # a final metric, beside rounds still in flight
    hp.synchronize()
    out = flat_params(model)
    hp.close()
    return {"identical": same_on_every_rank(out, world), "rounds": hp.stats()["rounds"]}


def two_models(rank, world):
    """A GAN-like loop: two models, two optimizers, two HPSGD instances (auto).
    The ranks are slow at different phases, so their windows end in different
    orders: one rank's generator round meets the other's discriminator round
    unless each HPSGD has channels of its own."""
    gen, disc = make_model(seed=1), make_model(seed=2, hidden=12)
    og = torch.optim.SGD(gen.parameters(), lr=0.05)
    od = torch.optim.SGD(disc.parameters(), lr=0.05)
    link = hpsgd_ext.LinkModel(bandwidth=5e6, latency=0.004)
    hg = HPSGD(gen, og, timeout=20, communicator=EmulatedLink(link))
    hd = HPSGD(disc, od, timeout=20, communicator=EmulatedLink(link))
    for s in range(60):
        _loss_step(gen, og, rank, s)
        if rank == (s // 10) % 2:
            time.sleep(0.003)
        _loss_step(disc, od, rank, s + 1000)
        if rank != (s // 10) % 2:
            time.sleep(0.003)
    hg.synchronize()
    hd.synchronize()
    ok = same_on_every_rank(flat_params(gen), world) and same_on_every_rank(flat_params(disc), world)
    hg.close()
    hd.close()
    return {"identical": ok}


# --- 2. resume ---------------------------------------------------------------------------
def _fresh(H):
    model = make_model(seed=0)
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    return model, opt


def resume_orders(rank, world, H, total, cut):
    """Saved mid-training (no synchronize). Resuming by loading the model and the
    optimizer first and then building HPSGD (whose construction broadcasts rank
    0's parameters) must continue bitwise, as must the other order."""
    model, opt = _fresh(H)
    hp = HPSGD(model, opt, sync_every=H, outer_momentum=0.5, timeout=30)
    train(model, opt, rank, cut)
    buf = io.BytesIO()
    torch.save({"model": model.state_dict(), "opt": opt.state_dict(), "hpsgd": hp.state_dict()}, buf)
    train(model, opt, rank, total - cut, start=cut)
    hp.synchronize()
    uninterrupted = flat_params(model)
    hp.close()

    results = {}
    for order in ("model_first", "hpsgd_first"):
        buf.seek(0)
        ck = torch.load(buf, weights_only=True)
        model, opt = _fresh(H)
        if order == "model_first":
            model.load_state_dict(ck["model"])
            opt.load_state_dict(ck["opt"])
            hp = HPSGD(model, opt, sync_every=H, outer_momentum=0.5, timeout=30)
        else:
            hp = HPSGD(model, opt, sync_every=H, outer_momentum=0.5, timeout=30)
            model.load_state_dict(ck["model"])
            opt.load_state_dict(ck["opt"])
        hp.load_state_dict(ck["hpsgd"])
        train(model, opt, rank, total - cut, start=cut)
        hp.synchronize()
        results[order] = torch.equal(flat_params(model), uninterrupted)
        hp.close()
    return results


def resume_from_rank0_file(rank, world, H):
    """The save-on-rank-0 habit: every rank loads rank 0's file. A state taken
    mid-round is rank-specific and must be refused naming both ranks; a state
    taken right after synchronize() is the same on every rank and must work."""
    model, opt = _fresh(H)
    hp = HPSGD(model, opt, sync_every=H, timeout=30)
    train(model, opt, rank, 5)
    mid = [hp.state_dict()]
    dist.broadcast_object_list(mid, src=0)
    refused = None
    before = hp.state_dict()
    try:
        hp.load_state_dict(mid[0])
    except ValueError as e:
        refused = str(e)
    unchanged = all(torch.equal(a, b) for a, b in zip(before["groups"][0]["anchors"],
                                                         hp.state_dict()["groups"][0]["anchors"]))
    hp.synchronize()
    synced = [hp.state_dict()]
    dist.broadcast_object_list(synced, src=0)
    hp.load_state_dict(synced[0])  # rank-independent: accepted everywhere
    train(model, opt, rank, 4, start=5)
    hp.synchronize()
    ok = same_on_every_rank(flat_params(model), world)
    hp.close()
    return {"refused": refused, "unchanged": unchanged, "identical": ok}


# --- 3. GradScaler ----------------------------------------------------------------------
def gradscaler_fixed_window(rank, world, H, steps):
    """Each rank's scaler skips steps on its own (gradients are local)."""
    model = make_model(seed=0)
    opt = torch.optim.SGD(model.parameters(), lr=0.05)
    scaler = torch.amp.GradScaler("cpu", init_scale=2.0 ** 8)
    hp = HPSGD(model, opt, sync_every=H, timeout=10, grad_scaler=scaler)
    skip = {3, 11, 20, 33, 47} if rank == 1 else set()
    t0 = time.monotonic()
    for s in range(steps):
        _loss_step(model, opt, rank, s, scaler=scaler, poison_grad=s in skip)
    hp.synchronize()
    out = flat_params(model)
    st = hp.stats()
    hp.close()
    return {"identical": same_on_every_rank(out, world), "seconds": time.monotonic() - t0,
            "local_steps": st["local_steps"], "skipped_steps": st["skipped_steps"],
            "finite": bool(torch.isfinite(out).all())}


# --- 5. the set of trained tensors changes ------------------------------------------------
def tensor_set_changes(rank, world, what):
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(8, 16), nn.BatchNorm1d(16), nn.Tanh(), nn.Linear(16, 3))
    if what == "unfreeze":
        model[0].requires_grad_(False)
    opt = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=0.05)
    hp = HPSGD(model, opt, sync_every=2, timeout=20)
    raised = None
    try:
        for s in range(12):
            if s == 5:
                if what == "unfreeze":  # progressive unfreezing
                    model[0].requires_grad_(True)
                    opt.add_param_group({"params": list(model[0].parameters())})
                elif what == "add_head":  # a new head joins the optimizer
                    model.add_module("head", nn.Linear(3, 3))
                    opt.add_param_group({"params": list(model.head.parameters())})
            if what == "buffer":  # a float buffer assigned out of place every step
                model[1].running_mean = 0.9 * model[1].running_mean + 0.01 * (rank + 1)
            _loss_step(model, opt, rank, s)
        hp.synchronize()
    except RuntimeError as e:
        raised = str(e)
    ok = same_on_every_rank(torch.cat([t.detach().reshape(-1) for t in
                                       list(model.parameters()) + [model[1].running_mean]]), world)
    hp.close()
    return {"raised": raised, "identical": ok}


# --- 7. fp16 wire, a representable mean ---------------------------------------------------
def fp16_large_mean(rank, world):
    """Each rank's change is 40,000: it fits fp16, and so does the mean."""
    w = nn.Parameter(torch.zeros(4))
    opt = torch.optim.SGD([w], lr=1.0)
    hp = HPSGD([w], opt, sync_every=1, comm_dtype=torch.float16, timeout=20)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        w.grad = torch.full((4,), -40000.0)
        opt.step()
        hp.synchronize()
    bad = [str(c.message) for c in caught if issubclass(c.category, RuntimeWarning)]
    out = w.detach().clone()
    hp.close()
    return {"value": out.tolist(), "warnings": bad, "skipped": hp.stats()["skipped_rounds"]}


# --- 8. clear errors ---------------------------------------------------------------------
def one_rank_skips_synchronize(rank, world, timeout):
    model = make_model(seed=0)
    opt = torch.optim.SGD(model.parameters(), lr=0.05)
    hp = HPSGD(model, opt, sync_every=2, timeout=timeout)
    train(model, opt, rank, 4)
    if rank == 1:
        time.sleep(timeout + 4)  # alive, but never calls synchronize()
        return {"raised": None}
    t0 = time.monotonic()
    try:
        hp.synchronize()
    except Exception as e:  # noqa: BLE001 - the type is what the test checks
        return {"raised": type(e).__name__, "message": str(e), "after": time.monotonic() - t0,
                "is_timeout": isinstance(e, hpsgd_ext.CommTimeoutError)}
    return {"raised": None}


def float64_buffer_on_one_rank(rank, world):
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(8, 16), nn.BatchNorm1d(16))
    if rank == 1:
        model[1].running_var = model[1].running_var.double()
    opt = torch.optim.SGD(model.parameters(), lr=0.05)
    t0 = time.monotonic()
    try:
        HPSGD(model, opt, sync_every=2, timeout=30)
    except (TypeError, ValueError) as e:
        return {"raised": type(e).__name__, "message": str(e), "after": time.monotonic() - t0}
    return {"raised": None}


# --- 10. close() ------------------------------------------------------------------------
def synchronize_after_close(rank, world):
    model = make_model(seed=0)
    opt = torch.optim.SGD(model.parameters(), lr=0.05)
    hp = HPSGD(model, opt, sync_every=2, timeout=20)
    train(model, opt, rank, 3)
    hp.synchronize()
    hp.close()
    out = {"raised": None}
    if rank == 0:
        t0 = time.monotonic()
        try:
            hp.synchronize()
        except RuntimeError as e:
            out = {"raised": str(e), "after": time.monotonic() - t0}
    else:
        time.sleep(3)
    st = hp.stats()  # still readable after close
    dist.barrier()
    out["stats_rounds"] = st["rounds"]
    return out


# --- 11. NaN with a stateful optimizer -------------------------------------------------------
def nan_in_momentum(rank, world):
    model = make_model(seed=0)
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    hp = HPSGD(model, opt, sync_every=2, timeout=30, max_bad_rounds=3)
    msgs, raised = [], None
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        try:
            for s in range(14):
                _loss_step(model, opt, rank, s, poison_grad=(rank == 1 and s == 4))
            hp.synchronize()
        except FloatingPointError as e:
            raised = str(e)
        msgs = [str(c.message) for c in caught if issubclass(c.category, RuntimeWarning)]
    hp.close()
    return {"raised": raised, "warnings": msgs}


# --- 4. close() releases everything ------------------------------------------------------
def build_use_close(rank, world, cycles):
    import ctypes
    import gc
    import resource

    def rss_mb():
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * resource.getpagesize() / 2 ** 20

    n_big = 1 << 19  # a 2 MB parameter: its flat buffers are easy to count
    marks = []
    for c in range(cycles):
        w = nn.Parameter(torch.zeros(n_big))
        opt = torch.optim.SGD([w], lr=0.1)
        hp = HPSGD([w], opt, sync_every=1, timeout=20)
        for s in range(3):
            w.grad = torch.full_like(w, 0.01 * (rank + 1))
            opt.step()
        hp.synchronize()
        hp.close()
        del hp, opt, w
        gc.collect()
        # glibc keeps freed 2 MB blocks in its heap (its mmap threshold grows with
        # each free): return them first, so RSS counts what is really alive
        ctypes.CDLL("libc.so.6").malloc_trim(0)
        marks.append(rss_mb())
    gc.collect()
    alive = sum(1 for o in gc.get_objects() if isinstance(o, torch.Tensor) and o.numel() >= n_big)
    return {"alive": alive, "growth_mb": marks[-1] - marks[2]}


def nan_round_leaves_global_model_bitwise(rank, world):
    """Rank 1 poisons its replica after step 5: the round issued at step 6 carries
    the NaN, and the boundary at step 8 must leave the global model (the anchors)
    bit for bit as it was, on every rank, and count and warn at once (CPU)."""
    model = make_model(seed=0)
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    hp = HPSGD(model, opt, sync_every=2, timeout=20)
    anchors = {}
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        for s in range(12):
            _loss_step(model, opt, rank, s)
            if rank == 1 and s == 4:
                with torch.no_grad():
                    model[0].weight[0, 0] = float("nan")
            if s in (6, 7, 11):  # after the 7th, 8th and 12th step (the 10th merges the zero round)
                anchors[s] = [a.clone() for a in hp.state_dict()["groups"][0]["anchors"]]
            if s == 7:
                skipped_at_8 = hp.stats()["skipped_rounds"]
                warned_at_8 = len([c for c in caught if issubclass(c.category, RuntimeWarning)])
    hp.synchronize()
    unchanged = all(torch.equal(a.view(torch.int32), b.view(torch.int32)) for a, b in zip(anchors[6], anchors[7]))
    moved_later = any(not torch.equal(a, b) for a, b in zip(anchors[7], anchors[11]))
    out = flat_params(model)
    hp.close()
    return {"unchanged": unchanged, "moved_later": moved_later, "skipped_at_8": skipped_at_8,
            "warned_at_8": warned_at_8, "finite": bool(torch.isfinite(out).all()),
            "identical": same_on_every_rank(out, world)}
