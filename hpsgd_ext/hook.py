"""The HPSGD optimizer hook: two added lines turn a training loop into HPSGD.

    hp = hpsgd_ext.HPSGD(model, optimizer)         # after init_process_group
    for x, y in data:                               # the loop is unchanged
        loss_fn(model(x), y).backward(); optimizer.step(); optimizer.zero_grad()
    hp.synchronize()                                # before evaluating or saving
    hp.close()

The round protocol (what a boundary does, why ranks of different speeds cannot
deadlock or mismatch collectives, what synchronize() agrees on), the non-finite
rule and the tensor-set rule are written once, in docs/round-protocol.md; the
code below points to its sections by name.
"""

from __future__ import annotations

import datetime as _dt
import time
from dataclasses import dataclass, field
from typing import Iterable, Optional, Union

import torch
import torch.distributed as dist
from torch import nn

from . import ops
from .comm import CommError, CommTimeoutError, Communicator, LinkModel
from .options import Options
from .profiling import label
from .tracking import ChangeWatch, Registry, Tracked, check_owned, collect
from .verdict import Verdicts, own_flag, reduced_verdict
from .window import AutoWindow

__all__ = ["HPSGD"]

_STATE_VERSION = 2
_REGISTRY = Registry()
_COUNTERS = ("rounds", "local_steps", "skipped_steps", "exposed_seconds", "boundary_seconds", "comm_seconds",
             "bytes_reduced", "catch_up_rounds", "synchronizations")


@dataclass
class _Group:
    """Tensors reduced together: one dtype, one kind (parameters or buffers). Each
    flat buffer holds the segments, then one flag slot per rank (hpsgd_ext/verdict.py)."""
    kind: str
    tracked: list[Tracked]
    live: list[torch.Tensor]
    anchors: list[torch.Tensor]
    flats: list[torch.Tensor]                 # double buffer: [in flight, being filled]
    sent: Optional[torch.Tensor]              # keep rule: what was last put on the wire
    momenta: Optional[list[torch.Tensor]]     # outer momentum
    lr: float
    momentum: float
    nesterov: bool
    numel: int = field(init=False)

    def __post_init__(self):
        self.numel = sum(t.numel() for t in self.live)

    @property
    def names(self) -> list[str]:
        return [t.name for t in self.tracked]


class _Done:
    """A reduction that is already complete (restored from a checkpoint)."""
    issued_at = completed_at = None

    def is_completed(self) -> bool:
        return True

    def wait(self, timeout=None) -> None:
        pass

    def synchronize_stream(self) -> None:
        pass


def _private_group(ranks: list[int], timeout: float) -> dist.ProcessGroup:
    """A Gloo group of HPSGD's own over ``ranks``, created by its members only (no
    world-wide collective that ranks outside it would have to join)."""
    return dist.new_group(ranks=ranks, backend="gloo", timeout=_dt.timedelta(seconds=timeout),
                          use_local_synchronization=True)


class HPSGD:
    """Hierarchical parallel SGD as a post-step hook on ``optimizer``.

    Args:
        model_or_params: an ``nn.Module`` (its trainable parameters and, with
            ``sync_buffers``, its floating buffers) or an iterable of parameters.
            Parameters with ``requires_grad=False`` are left alone.
        optimizer: the ``torch.optim.Optimizer`` stepping those parameters; its
            state stays local. One HPSGD per optimizer and per tensor.
        process_group: the data-parallel group (default: the default group).
            Rounds travel on channels of HPSGD's own over the same ranks, created
            here, collectively, by the group's members: the user's own collectives
            on this group never meet a round.
        sync_every: ``"auto"`` (a window ends as soon as the previous reduction has
            completed) or an int H (a window is H step calls).
        replica: ``"keep"`` (the replica keeps its own in-flight progress; 16-bit
            rounding is fed back) or ``"reset"`` (the paper's ``p = a``).
        comm_dtype: dtype of the reduced deltas (None: the parameters' dtype).
        outer_lr, outer_momentum, nesterov: the outer step on the averaged change.
        sync_buffers: average floating buffers (BatchNorm statistics) every round.
        timeout: deadline of every collective and wait (positive, finite).
        link: optional :class:`~hpsgd_ext.LinkModel` (link emulation, benchmarks)
            for the communicator HPSGD builds.
        communicator: a :class:`~hpsgd_ext.Communicator` to use instead of building
            one (over a group with the same ranks; its lifetime stays the caller's).
        check_finite: skip rounds whose averaged change is not finite.
        max_bad_rounds: consecutive skipped rounds before FloatingPointError.
        grad_scaler: the ``torch.amp.GradScaler`` that steps ``optimizer``, if any: a
            step it skips (non-finite gradients on this rank) still counts toward a
            fixed window, so ranks whose scalers disagree stay in step.
    """

    def __init__(self, model_or_params: Union[nn.Module, Iterable[torch.Tensor]],
                 optimizer: torch.optim.Optimizer, process_group: Optional[dist.ProcessGroup] = None,
                 sync_every: Union[str, int] = "auto", replica: str = "keep",
                 comm_dtype: Optional[torch.dtype] = None, outer_lr: float = 1.0,
                 outer_momentum: float = 0.0, nesterov: bool = False, sync_buffers: bool = True,
                 timeout: Union[_dt.timedelta, float] = _dt.timedelta(minutes=5),
                 link: Optional[LinkModel] = None, communicator: Optional[Communicator] = None,
                 check_finite: bool = True, max_bad_rounds: int = 3,
                 grad_scaler: Optional["torch.amp.GradScaler"] = None):
        self.closed = True  # until construction succeeds: close() is then a no-op
        self._ctrl = self._data_pg = None
        if not isinstance(optimizer, torch.optim.Optimizer):
            raise TypeError(f"HPSGD: optimizer is {type(optimizer).__name__}; expected a torch.optim.Optimizer")
        self.options = Options.make(sync_every=sync_every, replica=replica, comm_dtype=comm_dtype,
                                    outer_lr=outer_lr, outer_momentum=outer_momentum, nesterov=nesterov,
                                    sync_buffers=sync_buffers, timeout=timeout, check_finite=check_finite,
                                    max_bad_rounds=max_bad_rounds)
        if grad_scaler is not None and not isinstance(grad_scaler, torch.amp.GradScaler):
            raise TypeError(f"HPSGD: grad_scaler is {type(grad_scaler).__name__}; expected a "
                            "torch.amp.GradScaler or None")
        if communicator is not None and not isinstance(communicator, Communicator):
            raise TypeError(f"HPSGD: communicator is {type(communicator).__name__}; expected a "
                            "hpsgd_ext.Communicator or None")
        if process_group is None:
            if not dist.is_initialized():
                raise RuntimeError("HPSGD: torch.distributed is not initialized; call "
                                   "torch.distributed.init_process_group() first or pass process_group")
            process_group = dist.group.WORLD
        self.process_group = process_group
        self.optimizer = optimizer
        ranks = dist.get_process_group_ranks(process_group)
        self._ctrl = _private_group(ranks, self.options.timeout)
        try:
            self.rank, self.world_size = dist.get_rank(self._ctrl), dist.get_world_size(self._ctrl)
            tracked, frozen = self._agree_on_layout(model_or_params, optimizer)
            self.device = tracked[0].tensor.device
            self._data_pg = _private_group(ranks, self.options.timeout)
            self._broadcast_from_rank0([t.tensor for t in tracked])
            self.groups = self._make_groups(tracked)
            self._own_comm = communicator is None
            self.comm = communicator or Communicator(self._data_pg, device=self.device,
                                                     timeout=self.options.timeout, link=link)
            if self.comm.world_size != self.world_size:
                raise ValueError(f"HPSGD: communicator spans {self.comm.world_size} ranks but the process "
                                 f"group {self.world_size}; expected the same ranks")
        except BaseException:
            self._destroy_groups()
            raise
        self._watch = ChangeWatch(tracked, frozen, optimizer,
                                  model_or_params if isinstance(model_or_params, nn.Module) else None)
        self._inflight: Optional[list] = None  # the round in flight (one Work per group)
        self._fill = 0                         # index of the flat buffer the next round fills
        self._steps_in_window = 0
        self._hook_calls = 0
        self._in_sync = True                   # every rank's state equal (just built or synchronized)
        self._window = AutoWindow(count_background_cpu=self.device.type == "cpu") \
            if self.options.sync_every == "auto" else None
        self._counters = dict.fromkeys(_COUNTERS, 0)
        self._counters.update(exposed_seconds=0.0, boundary_seconds=0.0, comm_seconds=0.0)
        self._verdicts = Verdicts(self.device, self.rank, self.world_size, self.options.max_bad_rounds,
                                  str(self.options.comm_dtype or "the parameters' dtype"))
        self._final_comm_stats: Optional[dict] = None
        self._scaler = grad_scaler
        self._handle = None
        self.closed = False
        self.attach()

    # --- options, read-only ---------------------------------------------------------------
    sync_every = property(lambda self: self.options.sync_every)
    replica = property(lambda self: self.options.replica)
    comm_dtype = property(lambda self: self.options.comm_dtype)
    timeout = property(lambda self: self.options.timeout)

    # --- construction -------------------------------------------------------------------------
    def _agree_on_layout(self, model_or_params, optimizer):
        """Every rank checks its own tensors, then all compare notes: a problem on
        any rank, or a layout or option that differs from rank 0's, raises the same
        error on every rank at once (never a hang or a wrong mean elsewhere)."""
        tracked, frozen, problem = [], [], None
        try:
            tracked, frozen = collect(model_or_params, self.options.sync_buffers)
            check_owned(tracked, optimizer)
            _REGISTRY.check(self, optimizer, tracked)
            devices = {t.tensor.device for t in tracked}
            if len(devices) > 1:
                raise ValueError(f"HPSGD: parameters are on {sorted(map(str, devices))}; expected one "
                                 "device per rank")
        except (TypeError, ValueError) as e:
            problem = (type(e).__name__, str(e))
        mine = {"problem": problem, "options": self.options.as_state(self.world_size),
                "layout": [(t.kind, t.name, tuple(t.tensor.shape), str(t.tensor.dtype)) for t in tracked]}
        everyone: list = [None] * self.world_size
        self._ctrl_collective("checking the model and options", dist.all_gather_object, everyone, mine)
        for r, other in enumerate(everyone):
            if other["problem"] is not None:
                kind, msg = other["problem"]
                exc = TypeError if kind == "TypeError" else ValueError
                raise exc(f"{msg} (on rank {r})")
        ref = everyone[0]
        for r, other in enumerate(everyone[1:], start=1):
            for key, val in ref["options"].items():
                if other["options"][key] != val:
                    raise ValueError(f"HPSGD: option {key}={other['options'][key]!r} on rank {r} but "
                                     f"{val!r} on rank 0; expected the same options on every rank")
            a, b = ref["layout"], other["layout"]
            for i, (x, y) in enumerate(zip(a, b)):
                if x != y:
                    raise ValueError(f"HPSGD: tensor {i} is {y[0]} {y[1]!r} of shape {list(y[2])} and {y[3]} on "
                                     f"rank {r} but {x[0]} {x[1]!r} of shape {list(x[2])} and {x[3]} on rank 0; "
                                     "expected the same model on every rank")
            if len(a) != len(b):
                raise ValueError(f"HPSGD: rank {r} synchronises {len(b)} tensors but rank 0 synchronises "
                                 f"{len(a)}; expected the same model on every rank")
        return tracked, frozen

    @torch.no_grad()
    def _broadcast_from_rank0(self, tensors: list[torch.Tensor]) -> None:
        by_dtype: dict[torch.dtype, list[torch.Tensor]] = {}
        for t in tensors:
            by_dtype.setdefault(t.dtype, []).append(t)
        src = dist.get_global_rank(self._data_pg, 0)
        for dtype, ts in by_dtype.items():
            flat = torch.empty(ops.flat_numel(ts), dtype=dtype, device=self.device)
            ops.flatten(ts, flat)
            wire = flat if self.device.type == "cpu" else flat.cpu()  # a Gloo group
            self._ctrl_collective("broadcasting rank 0's model", dist.broadcast, wire, src=src,
                                  group=self._data_pg)
            if wire is not flat:
                flat.copy_(wire)
            ops.unflatten(flat, ts)

    def _make_groups(self, tracked: list[Tracked]) -> list[_Group]:
        buckets: dict[tuple[str, torch.dtype], list[Tracked]] = {}
        for t in tracked:
            buckets.setdefault((t.kind, t.tensor.dtype), []).append(t)
        o = self.options
        groups = []
        for (kind, dtype), items in buckets.items():
            live = [t.tensor for t in items]
            # 16-bit parameters keep a float32 global model: the averaged change
            # is small and would round away in the anchor's own dtype.
            adt = torch.float32 if dtype != torch.float32 else dtype
            anchors = [t.detach().to(adt, copy=True) for t in live]
            fdt = o.comm_dtype or dtype
            n = sum(t.numel() for t in live)
            flats = [torch.zeros(n + self.world_size, dtype=fdt, device=self.device) for _ in range(2)]
            is_param = kind == "param"
            momentum = o.outer_momentum if is_param else 0.0
            groups.append(_Group(
                kind=kind, tracked=items, live=live, anchors=anchors, flats=flats,
                sent=torch.zeros(n, dtype=fdt, device=self.device) if o.replica == "keep" else None,
                momenta=[torch.zeros_like(a) for a in anchors] if momentum > 0 else None,
                lr=o.outer_lr if is_param else 1.0, momentum=momentum,
                nesterov=o.nesterov and is_param))
        return groups

    # --- the hook -------------------------------------------------------------------------------
    @property
    def attached(self) -> bool:
        return self._handle is not None

    def _tensors(self) -> list[torch.Tensor]:
        return [t for g in self.groups for t in g.live]

    def attach(self) -> None:
        """Follow ``optimizer.step()`` (the constructor attaches). One HPSGD at a time
        may be attached to an optimizer or a tensor; benchmarks switch several over
        one model with :meth:`detach` and this."""
        self._check_open("attach")
        if self._handle is None:
            _REGISTRY.check(self, self.optimizer, [t for g in self.groups for t in g.tracked])
            self._handle = self.optimizer.register_step_post_hook(self._on_step)
            _REGISTRY.add(self, self.optimizer, self._tensors())
        if self._scaler is not None and "step" not in vars(self._scaler):
            self._scaler.step = self._scaler_step

    def detach(self) -> None:
        """Stop following steps (rounds in flight stay in flight; nothing is lost)."""
        if self._handle is not None:
            self._handle.remove()
            self._handle = None
            _REGISTRY.remove(self, self.optimizer, self._tensors())
        if self._scaler is not None and vars(self._scaler).get("step") == self._scaler_step:
            del self._scaler.step

    def _scaler_step(self, optimizer, *args, **kwargs):
        """GradScaler.step, counting a skipped step as a step call (docs: "GradScaler")."""
        calls = self._hook_calls
        out = type(self._scaler).step(self._scaler, optimizer, *args, **kwargs)
        if optimizer is self.optimizer and self._hook_calls == calls and self._handle is not None:
            self._counters["skipped_steps"] += 1
            self._advance()
        return out

    def _on_step(self, optimizer, args, kwargs) -> None:
        self._hook_calls += 1
        self._counters["local_steps"] += 1
        self._advance()

    def _advance(self) -> None:
        self.comm.check()  # a failure the watchdog recorded surfaces at the next step
        self._in_sync = False
        self._steps_in_window += 1
        if self._window is not None:
            # The paper's rule (end the window once the previous round has landed),
            # with a measured minimum window. A round's works complete in issue order,
            # so its last one answers for every group.
            now = time.perf_counter()
            reduced = self._inflight is None or self._inflight[-1].is_completed()
            if self._window.should_end(now, self._steps_in_window, reduced):
                self._boundary()
                now = time.perf_counter()
            self._window.step_done(now)
        elif self._steps_in_window >= self.options.sync_every:
            self._boundary()

    # --- the round (docs/round-protocol.md, "Boundary") -----------------------------------------
    def _await(self) -> float:
        """The round in flight is reduced (CPU) or ordered before what follows on
        the compute stream (CUDA). Returns the seconds the host waited."""
        t0 = time.perf_counter()
        for w in self._inflight:
            if self.device.type == "cuda":
                w.synchronize_stream()  # the compute stream waits; the CPU does not
            else:
                w.wait()
        return time.perf_counter() - t0

    def _verdict(self, prev: int) -> Optional[torch.Tensor]:
        """Device-side verdict of the round reduced into flats[prev] (queued for the
        host), or None when nothing needs deciding. On CUDA it includes the
        communicator's valid flag, which the watchdog clears before it aborts: a
        half-reduced buffer is never merged, even when the merge is already queued."""
        valid = getattr(self._inflight[-1], "valid_flag", None)
        if not self.options.check_finite:
            return valid
        info = reduced_verdict([g.flats[prev] for g in self.groups], [g.numel for g in self.groups],
                               self.world_size)
        if valid is not None:
            info[:1].mul_(valid)
        self._verdicts.push(self._counters["rounds"] - 1, info)
        self._verdicts.drain()  # CPU: at once; CUDA: whatever has reached the host
        return info[:1]

    def _follow_replacements(self) -> None:
        """docs/round-protocol.md, "Tensor set": checked before anything is written."""
        self._watch.check_layout()
        moved = [(g, i, now) for g in self.groups for i, t in enumerate(g.tracked)
                 if (now := ChangeWatch.replacement(t)) is not None]
        for g, i, now in moved:
            _REGISTRY.remove(self, None, [g.live[i]])
            g.tracked[i].tensor = g.live[i] = now
            if self.attached:
                _REGISTRY.add(self, self.optimizer, [now])

    @torch.no_grad()
    def _boundary(self, final: bool = False) -> None:
        """End the current window: merge the previous round, start this one."""
        with label("hpsgd.boundary"):
            t0 = time.perf_counter()
            if self.device.type == "cuda" and torch.cuda.is_current_stream_capturing():
                raise RuntimeError("HPSGD: a round boundary inside CUDA graph capture; a boundary issues a "
                                   "collective on HPSGD's own stream and reads host-side state, which a "
                                   "replayed graph would not redo. Capture the forward/backward/step only "
                                   "and let optimizer.step()'s hook run outside the graph "
                                   "(docs/round-protocol.md, \"CUDA graphs\")")
            self._follow_replacements()
            steps = self._steps_in_window
            exposed = self._await() if self._inflight is not None else 0.0
            prev, fill = 1 - self._fill, self._fill
            verdict = self._verdict(prev) if self._inflight is not None else None
            works = []
            for g in self.groups:
                ops.round_step(g.live, g.anchors, g.flats[prev] if self._inflight is not None else None,
                               g.flats[fill], lr=g.lr, momentum_buffers=g.momenta, momentum=g.momentum,
                               nesterov=g.nesterov, sent=g.sent, divisor=self.world_size, verdict=verdict)
                own_flag(g.flats[fill], g.numel, self.rank, self.world_size, self.options.check_finite)
                # The wire carries d / N (round_step's divisor): a sum is the mean and
                # cannot overflow where the mean itself is representable.
                works.append(self.comm.all_reduce_async(g.flats[fill], average=False))
                self._counters["bytes_reduced"] += g.flats[fill].numel() * g.flats[fill].element_size()
            self._account(self._inflight)
            self._inflight = works
            self._fill = prev
            self._steps_in_window = 0
            self._counters["rounds"] += 1
            self._counters["exposed_seconds"] += exposed
            self._counters["boundary_seconds"] += time.perf_counter() - t0
            if self._window is not None:
                self._window.round_ended(time.perf_counter() - t0 - exposed, steps)

    def _account(self, works) -> None:
        for w in works or ():
            issued, done = w.issued_at, w.completed_at
            if issued is not None and done is not None and done == done:
                self._counters["comm_seconds"] += done - issued

    # --- collective operations -------------------------------------------------------------------
    def _ctrl_collective(self, what: str, fn, *args, group=None, **kwargs):
        """A control collective (HPSGD's own group) whose failures keep HPSGD's
        error types and say what was being agreed, on which rank."""
        try:
            return fn(*args, group=group or self._ctrl, **kwargs)
        except (CommError, CommTimeoutError):
            raise
        except RuntimeError as e:
            text = str(e)
            where = (f"HPSGD: {what} with the other ranks failed on rank {self.rank} of {self.world_size} "
                     f"(timeout {self.options.timeout:g} s)")
            if "timed out" in text.lower() or "timeout" in text.lower():
                raise CommTimeoutError(f"{where}: a rank did not take part in time (it may have died, hung, or "
                                       f"skipped this call): {text}") from e
            raise CommError(f"{where}: {text}") from e

    @torch.no_grad()
    def synchronize(self) -> None:
        """Collective: close the current (partial) window, merge every round in
        flight, and leave every replica equal to the global model. No local step is
        lost or applied twice; call it on every rank (before evaluating, saving or
        leaving the training loop). docs/round-protocol.md, "synchronize()"."""
        self._check_open("synchronize")
        self.comm.check()
        with label("hpsgd.synchronize"):
            issued = torch.tensor([self._counters["rounds"]], dtype=torch.int64)
            self._ctrl_collective("synchronize(): agreeing on the number of rounds",
                                  dist.all_reduce, issued, op=dist.ReduceOp.MAX)
            target = int(issued.item())
            while self._counters["rounds"] < target:  # one round behind: close it as a catch-up
                self._counters["catch_up_rounds"] += 1
                self._boundary()
            self._boundary()  # the final round, in lock step on every rank
            t0 = time.perf_counter()
            for w in self._inflight:
                w.wait()
            self._counters["exposed_seconds"] += time.perf_counter() - t0
            self._account(self._inflight)
            last, scratch = 1 - self._fill, self._fill
            verdict = self._verdict(last)
            self._verdicts.drain(block=True)
            for g in self.groups:
                # Merge the final round; no `sent`: the replica becomes the global model.
                ops.round_step(g.live, g.anchors, g.flats[last], g.flats[scratch], lr=g.lr,
                               momentum_buffers=g.momenta, momentum=g.momentum, nesterov=g.nesterov,
                               divisor=self.world_size, verdict=verdict)
                if g.sent is not None:
                    g.sent.zero_()
            self._inflight = None
            self._steps_in_window = 0
            self._verdicts.last_discarded = False  # the next round carries real changes
            self._counters["synchronizations"] += 1
            self._in_sync = True
            if self._window is not None:
                self._window.restart()

    # --- state (docs/round-protocol.md, "Checkpoints") -------------------------------------------
    def _quiesce(self) -> None:
        """Wait (host) for the round in flight, and read every verdict."""
        self.comm.check()
        if self._inflight is not None:
            for w in self._inflight:
                w.wait()
            if self.device.type == "cuda":
                torch.cuda.current_stream(self.device).synchronize()
        self._verdicts.drain(block=True)

    @torch.no_grad()
    def state_dict(self) -> dict:
        """Anchors, outer momentum, what was last sent, the finished reduction still
        to be merged, this rank's replica, and counters. The reduction in flight is
        waited for (not merged), so a run resumed from this state continues exactly
        as it would have, whether the model is loaded before or after HPSGD is
        built. Loadable with ``torch.load(..., weights_only=True)``. A state taken
        right after :meth:`synchronize` is the same on every rank (any rank may load
        it); one taken mid-training belongs to its rank."""
        self._check_open("state_dict")
        self._quiesce()
        prev = 1 - self._fill
        pending = self._inflight is not None
        return {
            "version": _STATE_VERSION,
            "options": self.options.as_state(self.world_size),
            "rank": self.rank,
            "rank_independent": self._in_sync,
            "layout": [[list(t.shape) for t in g.live] for g in self.groups],
            "counters": {"steps_in_window": self._steps_in_window, **self._counters, **self._verdicts.state()},
            "pending": pending,
            "groups": [{
                "anchors": [a.clone() for a in g.anchors],
                "momenta": [m.clone() for m in g.momenta] if g.momenta is not None else [],
                "sent": g.sent.clone() if g.sent is not None else None,
                "reduced": g.flats[prev].clone() if pending else None,
                "replica": [t.detach().clone() for t in g.live],
            } for g in self.groups],
        }

    def _validate_state(self, state) -> list[dict]:
        """Every tensor of ``state`` checked (count, shape, dtype) before anything
        is written: a bad state raises and leaves this HPSGD and the model as they were."""
        def bad(why: str):
            return ValueError(f"HPSGD.load_state_dict: {why}")

        if not isinstance(state, dict) or state.get("version") != _STATE_VERSION:
            got = state.get("version") if isinstance(state, dict) else None
            raise bad(f"not an HPSGD state of this version (version {got!r}, expected {_STATE_VERSION})")
        missing = [k for k in ("options", "rank", "rank_independent", "layout", "counters", "pending", "groups")
                   if k not in state]
        if missing:
            raise bad(f"incomplete HPSGD state (missing {missing})")
        if state["options"] != self.options.as_state(self.world_size):
            raise bad(f"saved with options {state['options']}, this HPSGD has "
                      f"{self.options.as_state(self.world_size)}")
        if state["layout"] != [[list(t.shape) for t in g.live] for g in self.groups]:
            raise bad("the saved model layout differs from this model's")
        if state["rank"] != self.rank and not state["rank_independent"]:
            raise bad(f"this state was taken on rank {state['rank']} mid-training (its replica, round in flight "
                      f"and `sent` are rank {state['rank']}'s own) and this is rank {self.rank}; load each rank's "
                      "own state, or save right after synchronize() (such a state is the same on every rank)")
        if not isinstance(state["groups"], list) or len(state["groups"]) != len(self.groups):
            raise bad(f"incomplete HPSGD state (expected {len(self.groups)} groups)")
        if not isinstance(state["counters"], dict) or "steps_in_window" not in state["counters"]:
            raise bad("incomplete HPSGD state (counters)")

        def tensors(where, got, like: list[torch.Tensor], dtype=None):
            if not isinstance(got, (list, tuple)) or len(got) != len(like):
                n = len(got) if isinstance(got, (list, tuple)) else type(got).__name__
                raise bad(f"{where} has {n} entries; expected {len(like)}")
            for i, (x, ref) in enumerate(zip(got, like)):
                one(f"{where}[{i}]", x, ref.shape, dtype or ref.dtype)

        def one(where, x, shape, dtype):
            if not isinstance(x, torch.Tensor) or x.shape != shape or x.dtype != dtype:
                desc = f"{x.dtype} {list(x.shape)}" if isinstance(x, torch.Tensor) else type(x).__name__
                raise bad(f"{where} is {desc}; expected {dtype} {list(shape)}")

        for k, (g, s) in enumerate(zip(self.groups, state["groups"])):
            if not isinstance(s, dict) or not {"anchors", "momenta", "sent", "reduced", "replica"} <= s.keys():
                raise bad(f"group {k} is incomplete (expected anchors, momenta, sent, reduced, replica)")
            tensors(f"group {k} anchors", s["anchors"], g.anchors)
            tensors(f"group {k} momenta", s["momenta"], g.momenta or [])
            tensors(f"group {k} replica", s["replica"], g.live)
            if g.sent is None:
                if s["sent"] is not None:
                    raise bad(f"group {k} sent is a tensor; expected None (replica='reset')")
            else:
                one(f"group {k} sent", s["sent"], g.sent.shape, g.sent.dtype)
            if state["pending"]:
                one(f"group {k} reduced", s["reduced"], g.flats[0].shape, g.flats[0].dtype)
            elif s["reduced"] is not None:
                raise bad(f"group {k} reduced is a tensor but nothing is pending")
        return state["groups"]

    @torch.no_grad()
    def load_state_dict(self, state: dict) -> None:
        """Restore a :meth:`state_dict` taken with the same model and options: the
        global model, the round to be merged, and this rank's replica (so the order
        of loading the model and building HPSGD does not matter)."""
        self._check_open("load_state_dict")
        groups = self._validate_state(state)
        self._quiesce()
        prev = 1 - self._fill
        for g, s in zip(self.groups, groups):
            for dst, src in zip(g.anchors + (g.momenta or []) + g.live,
                                s["anchors"] + s["momenta"] + s["replica"]):
                dst.copy_(src)
            if g.sent is not None:
                g.sent.copy_(s["sent"])
            if s["reduced"] is not None:
                g.flats[prev].copy_(s["reduced"])
        self._inflight = [_Done() for _ in self.groups] if state["pending"] else None
        counters = state["counters"]
        self._steps_in_window = int(counters["steps_in_window"])
        for k in _COUNTERS:
            if k in counters:
                self._counters[k] = type(self._counters[k])(counters[k])
        self._verdicts.load(counters)
        self._in_sync = bool(state["rank_independent"])
        if self._window is not None:
            self._window.restart()

    # --- observability and lifetime --------------------------------------------------------------
    def stats(self) -> dict:
        """rounds, local_steps, skipped_steps (steps a GradScaler skipped),
        steps_per_round, exposed_seconds (training loop blocked by communication),
        comm_seconds, bytes_reduced, skipped_rounds, consecutive_bad_rounds, the
        communicator's counters, ``closed``, and in auto mode the window sizing
        (min_window, step_seconds, round_cost_seconds; see hpsgd_ext/window.py).
        Works after close() too (the last values)."""
        if not self.closed:
            self._verdicts.drain()
        s = dict(self._counters)
        v = self._verdicts.state()
        s.update(skipped_rounds=v["skipped_rounds"], consecutive_bad_rounds=v["consecutive_bad_rounds"])
        if self._window is not None:
            s.update(self._window.stats())
        calls = s["local_steps"] + s["skipped_steps"]
        s["steps_per_round"] = calls / s["rounds"] if s["rounds"] else 0.0
        s["comm"] = self._final_comm_stats if self.closed else self.comm.stats()
        s["closed"] = self.closed
        return s

    def _check_open(self, what: str) -> None:
        if self.closed:
            raise RuntimeError(f"HPSGD.{what}: this HPSGD is closed")

    def close(self) -> None:
        """Remove the hook and release the communicator and HPSGD's own groups.
        Rounds in flight are dropped, not waited for (call synchronize() first to
        keep them). Only a Gloo collective still running because a peer never
        issued it can hold the release of HPSGD's group, at most until its deadline."""
        if self.closed:
            return
        self.detach()
        self.closed = True
        self._inflight = None
        self._final_comm_stats = self.comm.stats()
        if self._own_comm:
            self.comm.close()
        self._destroy_groups()

    def _destroy_groups(self) -> None:
        for name in ("_data_pg", "_ctrl"):
            group = getattr(self, name, None)
            if group is not None:
                dist.destroy_process_group(group)  # its threads and sockets
                setattr(self, name, None)

    def __enter__(self) -> "HPSGD":
        return self

    def __exit__(self, *exc) -> None:
        self.close()
