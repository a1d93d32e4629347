"""Rank bodies of tests/test_hook_oracles_multiprocess.py; each runs on every rank."""

from __future__ import annotations

import warnings

import torch
import torch.distributed as dist

from hook_workers import flat_params, make_model, same_on_every_rank, train
from hpsgd_ext import HPSGD
from hpsgd_ext.reference import ReferenceHPSGD


# --- 3. the bf16 wire ---------------------------------------------------------------------
def train_with_wires(rank, H, steps, wire):
    """The same training three times: HPSGD and ReferenceHPSGD with ``wire``, and HPSGD
    with a float32 wire. Returns {(impl, dtype): (flat parameters, HPSGD's stats or None)}."""
    out = {}
    for impl, cdt in (("hpsgd", wire), ("reference", wire), ("hpsgd", torch.float32)):
        model = make_model(seed=rank)
        opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
        if impl == "hpsgd":
            hp = HPSGD(model, opt, sync_every=H, replica="keep", comm_dtype=cdt, sync_buffers=False, timeout=30)
        else:
            hp = ReferenceHPSGD(model.parameters(), opt, sync_every=H, replica="keep", comm_dtype=cdt)
        train(model, opt, rank, steps)  # steps % H != 0: a partial final window
        hp.synchronize()
        out[(impl, cdt)] = (flat_params(model), hp.stats() if impl == "hpsgd" else None)
        hp.close()
    return out


def bf16_wire_equals_reference(rank, world, H, steps):
    """HPSGD with comm_dtype=bf16 vs ReferenceHPSGD with the same wire, and vs
    HPSGD with a float32 wire (which must differ: the wire is not ignored)."""
    out = train_with_wires(rank, H, steps, torch.bfloat16)
    (bf, s16), (ref, _), (fp, s32) = (out[k] for k in (("hpsgd", torch.bfloat16), ("reference", torch.bfloat16),
                                                       ("hpsgd", torch.float32)))
    return {"max_diff_ref": (bf - ref).abs().max().item(),
            "max_diff_fp32_wire": (bf - fp).abs().max().item(),
            "identical": same_on_every_rank(bf, world),
            "bytes_bf16": s16["bytes_reduced"], "bytes_fp32": s32["bytes_reduced"]}


# --- 5. a NaN right before synchronize() -----------------------------------------------------
def nan_right_before_synchronize(rank, world):
    """Rank 1 poisons its replica right before synchronize(): the final round is
    not finite, so synchronize() must not merge it; then training continues."""
    model = make_model(seed=0)
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    hp = HPSGD(model, opt, sync_every=3, timeout=30, max_bad_rounds=3)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        train(model, opt, rank, 7)
        if rank == 1:
            with torch.no_grad():
                model[0].weight[0, 0] = float("nan")
        hp.synchronize()
        after_first = flat_params(model)
        skipped_first = hp.stats()["skipped_rounds"]
        train(model, opt, rank, 5, start=7)  # the run goes on, healthy
        hp.synchronize()
    out = flat_params(model)
    st = hp.stats()
    hp.close()
    return {"finite_first": bool(torch.isfinite(after_first).all()),
            "identical_first": same_on_every_rank(after_first, world),
            "skipped_first": skipped_first,
            "finite": bool(torch.isfinite(out).all()), "identical": same_on_every_rank(out, world),
            "skipped": st["skipped_rounds"],
            "warned": [str(w.message) for w in caught if issubclass(w.category, RuntimeWarning)]}


# --- 6. the global model is the mean of every rank's optimizer steps ----------------------
class StepRecorder:
    """Sums, in float64, the change each optimizer step makes to the parameters.

    Optimizer step hooks run in registration order. Registered BEFORE HPSGD is
    constructed, this post-hook runs before HPSGD's own post-hook, which moves the
    parameters at a window boundary (merging the others' progress): so it sees
    the optimizer's change only. ``late=True`` registers it after HPSGD (the
    control: it then also sees the boundaries' moves)."""

    def __init__(self, params, opt):
        self.params = list(params)
        self.total = [torch.zeros(p.shape, dtype=torch.float64) for p in self.params]
        self.before = None
        self.handles = [opt.register_step_pre_hook(self._pre), opt.register_step_post_hook(self._post)]

    def _pre(self, *_):
        self.before = [p.detach().double() for p in self.params]

    def _post(self, *_):
        for t, p, b in zip(self.total, self.params, self.before):
            t += p.detach().double() - b
        self.before = None

    def flat(self):
        return torch.cat([t.reshape(-1) for t in self.total])

    def remove(self):
        for h in self.handles:
            h.remove()


def mean_over_ranks(t: torch.Tensor, world: int) -> torch.Tensor:
    gathered = [torch.empty_like(t) for _ in range(world)]
    dist.all_gather(gathered, t)
    return torch.stack(gathered).mean(0)


def optimizer_step_oracle(rank, world, sync_every, phases, slow_rank, slow_s):
    """keep, outer_lr=1, no outer momentum: after each synchronize() the model is
    exactly start + mean over ranks of each rank's summed optimizer-step changes.
    ``phases``: per synchronize() call, each rank's number of steps."""
    model = make_model(seed=rank)  # the construction broadcasts rank 0's model
    opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    early = StepRecorder(model.parameters(), opt)  # before HPSGD: sees optimizer steps only
    hp = HPSGD(model, opt, sync_every=sync_every, replica="keep", outer_lr=1.0, outer_momentum=0.0,
               timeout=30)
    late = StepRecorder(model.parameters(), opt)   # after HPSGD: also sees boundary moves
    start = flat_params(model).double()
    errors, late_gap, catch_ups, done = [], [], [], 0
    for steps in phases:
        n = steps[rank]
        train(model, opt, rank, n, start=done, slow=slow_s if rank == slow_rank else 0.0)
        done += n
        hp.synchronize()
        expected = start + mean_over_ranks(early.flat(), world)
        errors.append((flat_params(model).double() - expected).abs().max().item())
        late_gap.append((start + mean_over_ranks(late.flat(), world) - expected).abs().max().item())
        catch_ups.append(hp.stats()["catch_up_rounds"])
    st = hp.stats()
    early.remove()
    late.remove()
    hp.close()
    return {"errors": errors, "late_gap": late_gap, "catch_ups": catch_ups,
            "moved": (flat_params(model).double() - start).abs().max().item(),
            "identical": same_on_every_rank(flat_params(model), world),
            "rounds": st["rounds"], "local_steps": st["local_steps"], "min_window": st.get("min_window")}
