"""The HPSGD optimizer hook: two added lines turn a training loop into HPSGD.

    hp = hpsgd_ext.HPSGD(model, optimizer)         # after init_process_group
    for x, y in data:                               # the loop is unchanged
        loss_fn(model(x), y).backward(); optimizer.step(); optimizer.zero_grad()
    hp.synchronize()                                # before evaluating or saving

Round protocol (DESIGN.md section 2). At the boundary that ends window k, per rank:
``d = p - a (- s)``; wait for ``R^{k-1}``; ``a += step(R^{k-1})``; ``p = a`` (reset)
or ``p = a + d`` (keep); start the mean all-reduce of ``d``. One fused op does the
arithmetic; the all-reduce runs in the background during window k+1.

Why ranks of different speeds cannot deadlock or mismatch collectives:

* Each boundary issues exactly one all-reduce per tensor group, so the k-th
  collective of every rank is the k-th round's delta: sizes and order agree.
* A rank reaches boundary k+1 only once ``R^k`` has completed, which needs every
  rank to have issued round k. So no rank is ever more than one round ahead.
* ``sync_every="auto"`` (the paper's rule) never blocks: a rank ends its window at
  the first local step at which its previous reduction has completed, else it
  keeps training. A slow rank only makes the fast ones take longer windows.
  A window also lasts at least a measured minimum number of steps, so that a
  round's own fixed cost stays under 2% of the window (hpsgd_ext/window.py); that
  only lengthens windows, locally, and changes none of these guarantees.
* ``synchronize()`` first agrees on the number of rounds issued (a MAX all-reduce
  on a separate control group, so it cannot be confused with a round still in
  flight on the data group); a rank one round behind closes its partial window
  as a catch-up round; then every rank runs one final round in lock step, waits
  for it and sets ``p = a``. Every window's change is applied exactly once.

With ``sync_every=H`` a boundary follows every H local steps and waits for the
previous round if it is still in flight (the time is counted as exposed); every
rank must then take the same number of steps between ``synchronize()`` calls.

Non-finite rounds: the reduced mean is bitwise the same on every rank, so when it
holds a NaN or Inf (one rank diverged) every rank sees it and does the same thing:
that round is not merged, the window in progress is discarded (the replica returns
to the global model and a zero delta is sent, since it may carry the same poison),
a RuntimeWarning is issued and ``stats()["skipped_rounds"]`` counts it. After
``max_bad_rounds`` consecutive bad rounds every rank raises FloatingPointError.
``check_finite=False`` turns the check (one read of the reduced buffer per round;
on CUDA a wait for the reduction at the boundary) off.
"""

from __future__ import annotations

import datetime as _dt
import math
import time
import warnings
from dataclasses import dataclass, field
from typing import Iterable, Optional, Union

import torch
import torch.distributed as dist
from torch import nn

from . import ops
from .comm import Communicator, LinkModel, to_seconds
from .profiling import label
from .window import AutoWindow

__all__ = ["HPSGD"]

_STATE_VERSION = 1


@dataclass
class _Group:
    """Tensors reduced together: one dtype, one kind (parameters or buffers)."""
    kind: str
    names: list[str]
    live: list[torch.Tensor]
    anchors: list[torch.Tensor]
    flats: list[torch.Tensor]                 # double buffer: [in flight, being filled]
    sent: Optional[torch.Tensor]              # keep rule: the delta last sent
    momenta: Optional[list[torch.Tensor]]     # outer momentum
    lr: float
    momentum: float
    nesterov: bool
    numel: int = field(init=False)

    def __post_init__(self):
        self.numel = sum(t.numel() for t in self.live)


def _is_number(x) -> bool:
    return isinstance(x, (int, float)) and not isinstance(x, bool)


def _all_finite(flat: torch.Tensor) -> bool:
    """One vectorised read, no temporary: min and max propagate NaN and reach +-Inf,
    so both are finite exactly when every element is. (isfinite().all() builds a
    mask as large as the buffer and costs about 20x more.)"""
    if flat.numel() == 0:
        return True
    lo, hi = torch.aminmax(flat)
    return bool(torch.isfinite(lo) & torch.isfinite(hi))


class _Done:
    """A reduction that is already complete (restored from a checkpoint)."""
    def is_completed(self) -> bool:
        return True

    def wait(self, timeout=None) -> None:
        pass

    def synchronize_stream(self) -> None:
        pass


class HPSGD:
    """Hierarchical parallel SGD as a post-step hook on ``optimizer``.

    Args:
        model_or_params: an ``nn.Module`` (its trainable parameters and, with
            ``sync_buffers``, its floating buffers) or an iterable of parameters.
            Parameters with ``requires_grad=False`` are left alone.
        optimizer: any ``torch.optim.Optimizer`` stepping those parameters; its
            state stays local.
        process_group: the data-parallel group (default: the default group).
        sync_every: ``"auto"`` (a window ends as soon as the previous reduction has
            completed) or an int H (a window is H local steps).
        replica: ``"keep"`` (the replica keeps its own in-flight progress; 16-bit
            rounding is fed back) or ``"reset"`` (the paper's ``p = a``).
        comm_dtype: dtype of the reduced deltas (None: the parameters' dtype).
        outer_lr, outer_momentum, nesterov: the outer step on the averaged change.
        sync_buffers: average floating buffers (BatchNorm statistics) every round.
        timeout: deadline of every collective and wait.
        link: optional :class:`~hpsgd_ext.LinkModel` (link emulation, benchmarks).
        check_finite: skip rounds whose averaged change is not finite (see above).
        max_bad_rounds: consecutive skipped rounds before FloatingPointError.
    """

    def __init__(self, model_or_params: Union[nn.Module, Iterable[torch.Tensor]],
                 optimizer: torch.optim.Optimizer, process_group: Optional[dist.ProcessGroup] = None,
                 sync_every: Union[str, int] = "auto", replica: str = "keep",
                 comm_dtype: Optional[torch.dtype] = None, outer_lr: float = 1.0,
                 outer_momentum: float = 0.0, nesterov: bool = False, sync_buffers: bool = True,
                 timeout: Union[_dt.timedelta, float] = _dt.timedelta(minutes=5),
                 link: Optional[LinkModel] = None, check_finite: bool = True, max_bad_rounds: int = 3):
        if not isinstance(optimizer, torch.optim.Optimizer):
            raise TypeError(f"HPSGD: optimizer is {type(optimizer).__name__}; expected a torch.optim.Optimizer")
        if sync_every != "auto" and not (isinstance(sync_every, int) and not isinstance(sync_every, bool)
                                         and sync_every >= 1):
            raise ValueError(f"HPSGD: sync_every is {sync_every!r}; expected 'auto' or an int >= 1")
        if replica not in ("keep", "reset"):
            raise ValueError(f"HPSGD: replica is {replica!r}; expected 'keep' or 'reset'")
        if comm_dtype not in (None, torch.float32, torch.bfloat16, torch.float16):
            raise TypeError(f"HPSGD: comm_dtype is {comm_dtype!r}; expected None, torch.float32, "
                            "torch.bfloat16 or torch.float16")
        if not (_is_number(outer_lr) and math.isfinite(outer_lr)):
            raise ValueError(f"HPSGD: outer_lr is {outer_lr!r}; expected a finite number")
        if not (_is_number(outer_momentum) and 0.0 <= outer_momentum < 1.0):
            raise ValueError(f"HPSGD: outer_momentum is {outer_momentum!r}; expected 0 <= momentum < 1")
        if nesterov and outer_momentum == 0.0:
            raise ValueError("HPSGD: nesterov=True needs outer_momentum > 0")
        if isinstance(max_bad_rounds, bool) or not isinstance(max_bad_rounds, int) or max_bad_rounds < 1:
            raise ValueError(f"HPSGD: max_bad_rounds is {max_bad_rounds!r}; expected an int >= 1")
        if process_group is None:
            if not dist.is_initialized():
                raise RuntimeError("HPSGD: torch.distributed is not initialized; call "
                                   "torch.distributed.init_process_group() first or pass process_group")
            process_group = dist.group.WORLD
        self.process_group = process_group
        self.sync_every = sync_every
        self.replica = replica
        self.comm_dtype = comm_dtype
        self.outer_lr, self.outer_momentum, self.nesterov = float(outer_lr), float(outer_momentum), bool(nesterov)
        self.sync_buffers = bool(sync_buffers)
        self.check_finite, self.max_bad_rounds = bool(check_finite), max_bad_rounds
        self.timeout = to_seconds(timeout, "timeout")
        self.optimizer = optimizer
        self.rank = dist.get_rank(process_group)
        self.world_size = dist.get_world_size(process_group)

        named = self._collect(model_or_params)
        devices = {t.device for _, _, t in named}
        if len(devices) > 1:
            raise ValueError(f"HPSGD: parameters are on {sorted(map(str, devices))}; expected one device per rank")
        self.device = devices.pop() if devices else torch.device("cpu")
        # Control messages (layout check, round agreement) travel on their own
        # group, so they can never be matched against a round still in flight.
        self._ctrl = dist.new_group(ranks=dist.get_process_group_ranks(process_group), backend="gloo",
                                    timeout=_dt.timedelta(seconds=self.timeout))
        self._check_same_everywhere(named)
        self._broadcast_from_rank0([t for _, _, t in named])
        self.groups = self._make_groups(named)
        self.comm = Communicator(process_group, device=self.device, timeout=self.timeout, link=link)

        self._pending: Optional[list] = None   # the round in flight (one Work per group)
        self._fill = 0                         # index of the flat buffer the next round fills
        self._steps_in_window = 0
        self._zero_round_in_flight = False  # the round in flight is the zero one sent after a discard
        self._window = AutoWindow(count_background_cpu=self.device.type == "cpu") if sync_every == "auto" else None
        self._stats = {"rounds": 0, "local_steps": 0, "exposed_seconds": 0.0, "boundary_seconds": 0.0,
                       "comm_seconds": 0.0, "bytes_reduced": 0, "catch_up_rounds": 0, "synchronizations": 0,
                       "skipped_rounds": 0, "consecutive_bad_rounds": 0}
        self._handle = optimizer.register_step_post_hook(self._on_step)

    # --- construction helpers --------------------------------------------------------
    def _collect(self, model_or_params) -> list[tuple[str, str, torch.Tensor]]:
        """(kind, name, tensor) of everything HPSGD keeps in sync, in a fixed order."""
        if isinstance(model_or_params, nn.Module):
            out = [("param", n, p) for n, p in model_or_params.named_parameters() if p.requires_grad]
            if self.sync_buffers:
                out += [("buffer", n, b) for n, b in model_or_params.named_buffers()
                        if b.is_floating_point()]
        else:
            params = list(model_or_params)
            for i, p in enumerate(params):
                if not isinstance(p, torch.Tensor):
                    raise TypeError(f"HPSGD: model_or_params[{i}] is {type(p).__name__}; expected a tensor")
            out = [("param", f"params[{i}]", p) for i, p in enumerate(params) if p.requires_grad]
        if not out:
            raise ValueError("HPSGD: nothing to synchronise (no parameter requires grad)")
        seen = set()
        for kind, name, t in out:
            if t.dtype not in (torch.float32, torch.bfloat16, torch.float16):
                raise TypeError(f"HPSGD: {kind} {name!r} has dtype {t.dtype}; expected float32, bfloat16 or float16")
            if not t.is_contiguous():
                raise ValueError(f"HPSGD: {kind} {name!r} is not contiguous; expected contiguous tensors")
            if id(t) in seen:
                raise ValueError(f"HPSGD: {kind} {name!r} appears twice")
            seen.add(id(t))
        return out

    def _options(self) -> dict:
        return {"sync_every": self.sync_every, "replica": self.replica, "comm_dtype": str(self.comm_dtype),
                "outer_lr": self.outer_lr, "outer_momentum": self.outer_momentum, "nesterov": self.nesterov,
                "sync_buffers": self.sync_buffers, "check_finite": self.check_finite,
                "max_bad_rounds": self.max_bad_rounds, "world_size": self.world_size}

    def _check_same_everywhere(self, named) -> None:
        """Every rank compares every rank's layout and options with rank 0's and
        raises the same error, so a mismatch never becomes a hang or a wrong mean."""
        mine = {"options": self._options(),
                "layout": [(k, n, tuple(t.shape), str(t.dtype)) for k, n, t in named]}
        everyone: list = [None] * self.world_size
        dist.all_gather_object(everyone, mine, group=self._ctrl)
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

    @torch.no_grad()
    def _broadcast_from_rank0(self, tensors: list[torch.Tensor]) -> None:
        by_dtype: dict[torch.dtype, list[torch.Tensor]] = {}
        for t in tensors:
            by_dtype.setdefault(t.dtype, []).append(t)
        backend = dist.get_backend(self.process_group)
        src = dist.get_global_rank(self.process_group, 0)
        for dtype, ts in by_dtype.items():
            flat = torch.empty(ops.flat_numel(ts), dtype=dtype, device=self.device)
            ops.flatten(ts, flat)
            wire = flat if (self.device.type == "cpu" or backend == "nccl") else flat.cpu()
            dist.broadcast(wire, src=src, group=self.process_group)
            if wire is not flat:
                flat.copy_(wire)
            ops.unflatten(flat, ts)

    def _make_groups(self, named) -> list[_Group]:
        buckets: dict[tuple[str, torch.dtype], list[tuple[str, torch.Tensor]]] = {}
        for kind, name, t in named:
            buckets.setdefault((kind, t.dtype), []).append((name, t))
        groups = []
        for (kind, dtype), items in buckets.items():
            live = [t for _, t in items]
            # 16-bit parameters keep a float32 global model: the averaged change
            # is small and would round away in the anchor's own dtype.
            adt = torch.float32 if dtype != torch.float32 else dtype
            anchors = [t.detach().to(adt, copy=True) for t in live]
            fdt = self.comm_dtype or dtype
            n = sum(t.numel() for t in live)
            flats = [torch.zeros(n, dtype=fdt, device=self.device) for _ in range(2)]
            is_param = kind == "param"
            momentum = self.outer_momentum if is_param else 0.0
            groups.append(_Group(
                kind=kind, names=[nm for nm, _ in items], live=live, anchors=anchors, flats=flats,
                sent=torch.zeros(n, dtype=fdt, device=self.device) if self.replica == "keep" else None,
                momenta=[torch.zeros_like(a) for a in anchors] if momentum > 0 else None,
                lr=self.outer_lr if is_param else 1.0, momentum=momentum,
                nesterov=self.nesterov and is_param))
        return groups

    # --- the hot path ------------------------------------------------------------------
    def _on_step(self, optimizer, args, kwargs) -> None:
        self._steps_in_window += 1
        self._stats["local_steps"] += 1
        if self._window is not None:
            # The paper's rule (end the window once the previous round has landed),
            # with a measured minimum window. A round's works complete in issue order,
            # so its last one answers for every group.
            now = time.perf_counter()
            reduced = self._pending is None or self._pending[-1].is_completed()
            if self._window.should_end(now, self._steps_in_window, reduced):
                self._boundary()
                now = time.perf_counter()
            self._window.step_done(now)
        elif self._steps_in_window >= self.sync_every:
            self._boundary()

    @torch.no_grad()
    def _boundary(self) -> None:
        """End the current window: merge the previous round, start this one."""
        with label("hpsgd.boundary"):
            t0 = time.perf_counter()
            steps = self._steps_in_window
            if self._pending is not None:
                self._await(self._pending)
            exposed = time.perf_counter() - t0
            prev, fill = 1 - self._fill, self._fill
            t_check = time.perf_counter()
            merge = self._pending is not None and self._round_is_finite(prev)
            # On CUDA the finite check waits for the GPU to drain what the CPU queued:
            # time the GPU keeps working, not a cost of the round.
            drained = time.perf_counter() - t_check if self.device.type == "cuda" else 0.0
            discard = self._pending is not None and not merge
            works = []
            for g in self.groups:
                ops.round_step(g.live, g.anchors, g.flats[prev] if merge else None, g.flats[fill],
                               lr=g.lr, momentum_buffers=g.momenta, momentum=g.momentum,
                               nesterov=g.nesterov, sent=None if discard else g.sent)
                if discard:  # the replica is back at the global model; send no change
                    g.flats[fill].zero_()
                    if g.sent is not None:
                        g.sent.zero_()
                works.append(self.comm.all_reduce_async(g.flats[fill]))
                self._stats["bytes_reduced"] += g.flats[fill].numel() * g.flats[fill].element_size()
            self._zero_round_in_flight = discard
            self._account(self._pending)
            self._pending = works
            self._fill = prev
            self._steps_in_window = 0
            self._stats["rounds"] += 1
            self._stats["exposed_seconds"] += exposed
            self._stats["boundary_seconds"] += time.perf_counter() - t0
            if self._window is not None:
                self._window.round_ended(time.perf_counter() - t0 - exposed - drained, steps)

    def _round_is_finite(self, prev: int) -> bool:
        """Is the finished round's averaged change finite? The same answer on every
        rank (the reduced buffer is identical everywhere). Warns, counts, and raises
        after max_bad_rounds consecutive bad rounds."""
        if not self.check_finite:
            return True
        finite = all(_all_finite(g.flats[prev]) for g in self.groups)
        if finite:
            # The zero round sent after a discard proves nothing about the replicas:
            # only a round that carried real changes ends a streak of bad ones.
            if not self._zero_round_in_flight:
                self._stats["consecutive_bad_rounds"] = 0
            self._zero_round_in_flight = False
            return True
        self._stats["skipped_rounds"] += 1
        self._stats["consecutive_bad_rounds"] += 1
        bad = self._stats["consecutive_bad_rounds"]
        if bad >= self.max_bad_rounds:
            raise FloatingPointError(
                f"HPSGD: {bad} consecutive rounds had a non-finite averaged change (NaN/Inf) on "
                f"rank {self.rank}; a replica diverges every window (max_bad_rounds={self.max_bad_rounds})")
        warnings.warn(f"HPSGD: round {self._stats['rounds'] - 1} had a non-finite averaged change; "
                      "it was not merged and every replica restarts from the global model",
                      RuntimeWarning, stacklevel=3)
        return False

    def _await(self, works) -> None:
        for w in works:
            if self.device.type == "cuda":
                w.synchronize_stream()  # the compute stream waits; the CPU does not
            else:
                w.wait()

    def _account(self, works) -> None:
        for w in works or ():
            issued, done = getattr(w, "issued_at", None), getattr(w, "completed_at", None)
            if issued is not None and done == done and done is not None:
                self._stats["comm_seconds"] += done - issued

    # --- collective operations -----------------------------------------------------------
    @torch.no_grad()
    def synchronize(self) -> None:
        """Collective: close the current (partial) window, merge every round in
        flight, and leave every replica equal to the global model. No local step is
        lost or applied twice; call it on every rank (before evaluating, saving or
        leaving the training loop)."""
        with label("hpsgd.synchronize"):
            issued = torch.tensor([self._stats["rounds"]], dtype=torch.int64)
            dist.all_reduce(issued, op=dist.ReduceOp.MAX, group=self._ctrl)
            target = int(issued.item())
            while self._stats["rounds"] < target:  # one round behind: close it as a catch-up
                self._stats["catch_up_rounds"] += 1
                self._boundary()
            self._boundary()  # the final round, in lock step on every rank
            t0 = time.perf_counter()
            for w in self._pending:
                w.wait()
            self._stats["exposed_seconds"] += time.perf_counter() - t0
            self._account(self._pending)
            last, scratch = 1 - self._fill, self._fill
            merge = self._round_is_finite(last)
            for g in self.groups:
                # Merge the final round; no `sent`: the replica becomes the global model.
                ops.round_step(g.live, g.anchors, g.flats[last] if merge else None, g.flats[scratch],
                               lr=g.lr, momentum_buffers=g.momenta, momentum=g.momentum, nesterov=g.nesterov)
                if g.sent is not None:
                    g.sent.zero_()
            self._pending = None
            self._steps_in_window = 0
            self._stats["synchronizations"] += 1
            if self._window is not None:
                self._window.restart()

    # --- state ---------------------------------------------------------------------------
    @torch.no_grad()
    def state_dict(self) -> dict:
        """Anchors, outer momentum, what was last sent, the finished reduction still
        to be merged, and counters. The reduction in flight is waited for (not
        merged), so a run resumed from this state continues exactly as it would
        have. Loadable with ``torch.load(..., weights_only=True)``."""
        if self._pending is not None:
            for w in self._pending:
                w.wait()
            if self.device.type == "cuda":
                torch.cuda.current_stream(self.device).synchronize()
        prev = 1 - self._fill
        return {
            "version": _STATE_VERSION,
            "options": self._options(),
            "layout": [[list(t.shape) for t in g.live] for g in self.groups],
            "counters": {"steps_in_window": self._steps_in_window, **{
                k: v for k, v in self._stats.items()}},
            "pending": self._pending is not None,
            "groups": [{
                "anchors": [a.clone() for a in g.anchors],
                "momenta": [m.clone() for m in g.momenta] if g.momenta is not None else [],
                "sent": g.sent.clone() if g.sent is not None else None,
                "reduced": g.flats[prev].clone() if self._pending is not None else None,
            } for g in self.groups],
        }

    @torch.no_grad()
    def load_state_dict(self, state: dict) -> None:
        """Restore a :meth:`state_dict` taken with the same model and options. The
        live parameters are the model's own (load them with the model)."""
        if not isinstance(state, dict) or state.get("version") != _STATE_VERSION:
            raise ValueError(f"HPSGD.load_state_dict: not an HPSGD state (version "
                             f"{state.get('version') if isinstance(state, dict) else None!r}, expected {_STATE_VERSION})")
        missing = [k for k in ("options", "layout", "counters", "pending", "groups") if k not in state]
        if missing or len(state.get("groups", ())) != len(self.groups):
            raise ValueError(f"HPSGD.load_state_dict: incomplete HPSGD state (missing {missing or 'groups'})")
        if state["options"] != self._options():
            raise ValueError(f"HPSGD.load_state_dict: saved with options {state['options']}, "
                             f"this HPSGD has {self._options()}")
        layout = [[list(t.shape) for t in g.live] for g in self.groups]
        if state["layout"] != layout:
            raise ValueError("HPSGD.load_state_dict: the saved model layout differs from this model's")
        if self._pending is not None:
            for w in self._pending:
                w.wait()
        prev = 1 - self._fill
        for g, s in zip(self.groups, state["groups"]):
            for a, v in zip(g.anchors, s["anchors"]):
                a.copy_(v)
            if g.momenta is not None:
                for m, v in zip(g.momenta, s["momenta"]):
                    m.copy_(v)
            if g.sent is not None:
                g.sent.copy_(s["sent"])
            if s["reduced"] is not None:
                g.flats[prev].copy_(s["reduced"])
        self._pending = [_Done() for _ in self.groups] if state["pending"] else None
        counters = dict(state["counters"])
        self._steps_in_window = int(counters.pop("steps_in_window"))
        self._stats.update(counters)
        if self._window is not None:
            self._window.restart()

    # --- observability and lifetime ----------------------------------------------------------
    def stats(self) -> dict:
        """rounds, local_steps, steps_per_round, exposed_seconds (training loop
        blocked by communication), comm_seconds, bytes_reduced, the communicator's
        counters, and in auto mode the window sizing (min_window, step_seconds,
        round_cost_seconds; see hpsgd_ext/window.py)."""
        s = dict(self._stats)
        if self._window is not None:
            s.update(self._window.stats())
        s["steps_per_round"] = s["local_steps"] / s["rounds"] if s["rounds"] else 0.0
        s["comm"] = self.comm.stats()
        return s

    def close(self) -> None:
        """Remove the hook and release the communicator (rounds in flight are
        dropped: call synchronize() first to keep them)."""
        if self._handle is not None:
            self._handle.remove()
            self._handle = None
        self._pending = None
        self.comm.close()
        if self._ctrl is not None:
            dist.destroy_process_group(self._ctrl)  # its threads and sockets
            self._ctrl = None

    def __enter__(self) -> "HPSGD":
        return self

    def __exit__(self, *exc) -> None:
        self.close()
