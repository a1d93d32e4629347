"""Rank bodies of tests/test_hook_gpu_multiprocess.py: two processes share the one
GPU, HPSGD reducing their CUDA buffers through the c10d transport over Gloo (NCCL
refuses two ranks on one device; docs/round-protocol.md names the rule)."""

from __future__ import annotations

import warnings

import torch
import torch.distributed as dist
from torch import nn

from hpsgd_ext import HPSGD, Communicator
from hpsgd_ext.reference import ReferenceHPSGD
from hook_workers import batch, make_model


def _cuda_model(seed):
    torch.cuda.set_device(0)
    return make_model(seed=seed).cuda()


def _steps(model, opt, rank, steps, after_step=None):
    for s in range(steps):
        x, y = (t.cuda() for t in batch(rank, s))
        opt.zero_grad()
        nn.functional.cross_entropy(model(x), y).backward()
        opt.step()
        if after_step is not None:
            after_step(s)


def _flat(model):
    return torch.cat([p.detach().reshape(-1) for p in model.parameters()]).cpu()


def _identical(t: torch.Tensor, world: int) -> bool:
    gathered = [torch.empty_like(t) for _ in range(world)]
    dist.all_gather(gathered, t)
    return all(torch.equal(gathered[0], g) for g in gathered)


def _gloo_comm():
    return Communicator(dist.group.WORLD, device="cuda", transport="c10d", timeout=60)


def equals_reference(rank, world, replica, H, steps):
    results = {}
    for impl in ("hpsgd", "reference"):
        model = _cuda_model(seed=rank)  # different per rank: the broadcast must equalise
        opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
        kw = dict(sync_every=H, replica=replica, outer_lr=0.8, outer_momentum=0.6, nesterov=True)
        comm = None
        if impl == "hpsgd":
            comm = _gloo_comm()
            hp = HPSGD(model, opt, communicator=comm, **kw)
            transport = hp.comm.transport
        else:
            hp = ReferenceHPSGD(model.parameters(), opt, **kw)
        _steps(model, opt, rank, steps)  # steps % H != 0: a partial final window
        hp.synchronize()
        results[impl] = _flat(model)
        hp.close()
        if comm is not None:
            comm.close()
    return {"max_diff": (results["hpsgd"] - results["reference"]).abs().max().item(),
            "ranks_identical": _identical(results["hpsgd"], world), "transport": transport,
            "moved": (results["hpsgd"] - _flat(_cuda_model(seed=0))).abs().max().item()}


def nan_round_skipped(rank, world):
    """Rank 1 poisons its replica after step 5; the round issued at the boundary after
    step 6 carries the NaN, the boundary after step 8 must skip it on the device on
    every rank (the global model bit for bit as before), and the host learns of it at
    most one boundary later."""
    model = _cuda_model(seed=0)
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    comm = _gloo_comm()
    hp = HPSGD(model, opt, sync_every=2, communicator=comm)
    anchors, skipped = {}, {}

    def watch(s):
        if rank == 1 and s == 4:
            with torch.no_grad():
                model[0].weight[0, 0] = float("nan")
        if s in (6, 7, 11):
            anchors[s] = [a.clone() for a in hp.state_dict()["groups"][0]["anchors"]]
        skipped[s] = hp.stats()["skipped_rounds"]

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        _steps(model, opt, rank, 12, after_step=watch)
        hp.synchronize()
    unchanged = all(torch.equal(a.view(torch.int32), b.view(torch.int32)) for a, b in zip(anchors[6], anchors[7]))
    moved_later = any(not torch.equal(a, b) for a, b in zip(anchors[7], anchors[11]))
    out = _flat(model)
    st = hp.stats()
    hp.close()
    comm.close()
    return {"unchanged": unchanged, "moved_later": moved_later, "skipped_by_step_10": skipped[9],
            "skipped": st["skipped_rounds"], "warned": sum(issubclass(c.category, RuntimeWarning) for c in caught),
            "finite": bool(torch.isfinite(out).all()), "identical": _identical(out, world)}
