"""Rank bodies of tests/test_fragments_multiprocess.py: streaming rounds
(``fragments=F``, docs/round-protocol.md "Fragments") against the reference of the
same schedule, synchronize() and checkpoints."""

from __future__ import annotations

import io

import torch
from torch import nn

from hook_workers import flat_params, same_on_every_rank, train
from hpsgd_ext import HPSGD
from hpsgd_ext.reference import ReferenceHPSGD
from oracle_workers import StepRecorder, mean_over_ranks


def make_model(seed=0):
    """Six tensors of unequal sizes (144, 16, 256, 16, 48, 3 elements)."""
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(8, 16), nn.Tanh(), nn.Linear(16, 16), nn.Tanh(), nn.Linear(16, 3))


def equals_reference(rank, world, fragments, replica, H, steps, outer_momentum, comm_dtype):
    """HPSGD(fragments=F) against ReferenceHPSGD(fragments=F): a synchronize()
    halfway (the sweep, then training on) and one at the end (a partial window)."""
    out = {}
    for impl in ("hpsgd", "reference"):
        model = make_model(seed=rank)  # the construction broadcasts rank 0's
        opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
        kw = dict(sync_every=H, replica=replica, outer_lr=0.8, outer_momentum=outer_momentum,
                  nesterov=outer_momentum > 0, comm_dtype=comm_dtype, fragments=fragments)
        hp = (HPSGD(model, opt, sync_buffers=False, timeout=30, **kw) if impl == "hpsgd"
              else ReferenceHPSGD(model.parameters(), opt, **kw))
        train(model, opt, rank, steps // 2)
        hp.synchronize()
        half = flat_params(model)
        train(model, opt, rank, steps - steps // 2, start=steps // 2)
        hp.synchronize()
        out[impl] = (half, flat_params(model))
        if impl == "hpsgd":
            st = hp.stats()
            out["rounds"], out["flats"] = st["rounds"], st["extra_bytes_by_buffer"]["flats"]
        hp.close()
    (h_half, h_end), (r_half, r_end) = out["hpsgd"], out["reference"]
    return {"max_diff_half": (h_half - r_half).abs().max().item(),
            "max_diff_end": (h_end - r_end).abs().max().item(),
            "identical": same_on_every_rank(h_end, world),
            "moved": (h_end - flat_params(make_model(seed=0))).abs().max().item(),
            "rounds": out["rounds"], "flats_bytes": out["flats"]}


def each_change_once(rank, world, fragments, H, phases):
    """keep, outer_lr=1, no outer momentum: after each synchronize() the model is
    start + the mean over ranks of every optimizer step's change, whatever
    fragment's window each step fell in (float64 bookkeeping, float32 model)."""
    model = make_model(seed=rank)
    opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    early = StepRecorder(model.parameters(), opt)  # before HPSGD: optimizer steps only
    hp = HPSGD(model, opt, sync_every=H, replica="keep", fragments=fragments, timeout=30)
    start = flat_params(model).double()
    errors, done = [], 0
    for steps in phases:
        train(model, opt, rank, steps[rank], start=done)
        done += steps[rank]
        hp.synchronize()
        expected = start + mean_over_ranks(early.flat(), world)
        errors.append((flat_params(model).double() - expected).abs().max().item())
    moved = (flat_params(model).double() - start).abs().max().item()
    early.remove()
    hp.close()
    return {"errors": errors, "moved": moved, "identical": same_on_every_rank(flat_params(model), world)}


def checkpoint_resumes(rank, world, fragments, replica, H, before, after, comm_dtype=None):
    """state_dict() mid-window with a round of one fragment pending, loaded into a
    fresh model and HPSGD, continues exactly as the uninterrupted run. ``comm_dtype``:
    a torch dtype's name (8-bit wires keep the pending round as codes and scales)."""
    cdt = getattr(torch, comm_dtype) if comm_dtype else None

    def run(resume_at):
        model = make_model(seed=rank)
        opt = torch.optim.SGD(model.parameters(), lr=0.1)
        hp = HPSGD(model, opt, sync_every=H, replica=replica, fragments=fragments, timeout=30,
                   comm_dtype=cdt)
        train(model, opt, rank, before)
        if resume_at:
            buf = io.BytesIO()
            torch.save({"model": model.state_dict(), "opt": opt.state_dict(), "hpsgd": hp.state_dict()}, buf)
            pending = hp.state_dict()["pending"]
            hp.close()
            buf.seek(0)
            state = torch.load(buf, weights_only=True)
            model = make_model(seed=99)
            opt = torch.optim.SGD(model.parameters(), lr=0.1)
            hp = HPSGD(model, opt, sync_every=H, replica=replica, fragments=fragments, timeout=30,
                       comm_dtype=cdt)
            model.load_state_dict(state["model"])
            opt.load_state_dict(state["opt"])
            hp.load_state_dict(state["hpsgd"])
        else:
            pending = None
        train(model, opt, rank, after, start=before)
        hp.synchronize()
        out = flat_params(model)
        hp.close()
        return out, pending

    straight, _ = run(False)
    resumed, pending = run(True)
    return {"equal": torch.equal(straight, resumed), "pending": pending,
            "max_diff": (straight - resumed).abs().max().item()}
