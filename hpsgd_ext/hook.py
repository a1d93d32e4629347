"""The HPSGD optimizer hook: two added lines turn a training loop into HPSGD.

    hp = hpsgd_ext.HPSGD(model, optimizer)         # after init_process_group
    for x, y in data:                               # the loop is unchanged
        loss_fn(model(x), y).backward(); optimizer.step(); optimizer.zero_grad()
    hp.synchronize()                                # before evaluating or saving
    hp.close()

The round protocol (what a boundary does, why ranks of different speeds cannot
deadlock or mismatch collectives, what synchronize() agrees on), the non-finite
rule and the tensor-set rule are written once, in docs/round-protocol.md; the
code points to its sections by name. The round runs in the C++ engine
(csrc/engine; "Where each rule lives" in that note); this module wires it to a
module, an optimizer, Python's exceptions and warnings, and state dicts.
"""

from __future__ import annotations

import datetime as _dt
import warnings
from dataclasses import dataclass
from typing import Iterable, Optional, Union

import torch
import torch.distributed as dist
from torch import nn

from . import _C, ops
from .comm import CommError, CommTimeoutError, Communicator
from .emulation import EmulatedLink
from .groups import handshake, private_group, resolve_group
from .options import Options
from .tracking import ChangeWatch, Registry, Tracked, check_owned, collect, split_fragments

__all__ = ["HPSGD"]

_STATE_VERSION = 2
_REGISTRY = Registry()
_COUNTERS = ("rounds", "local_steps", "skipped_steps", "exposed_seconds", "boundary_seconds", "comm_seconds",
             "bytes_reduced", "catch_up_rounds", "synchronizations")


@dataclass
class _Group:
    """Which tracked tensors the engine's group ``index`` reduces together (one
    dtype, one kind). The engine owns the group's buffers."""
    kind: str
    index: int
    tracked: list[Tracked]
    fragment: int = 0

    @property
    def names(self) -> list[str]:
        return [t.name for t in self.tracked]


def _describe(row) -> str:
    """One row of the construction check's layout, for its error message."""
    kind, name, shape, dtype, shard = row
    return f"{kind} {name!r} of shape {list(shape)} and {dtype}" + (f" ({shard})" if shard else "")


class HPSGD:
    """Hierarchical parallel SGD as a post-step hook on ``optimizer``.

    The round itself (buffers, the round in flight, the window schedule, the
    non-finite policy, synchronize()'s agreement, the counters) runs in the C++
    engine (csrc/engine, ``hpsgd_ext._C.Engine``); this class wires it to a
    module, an optimizer and Python's errors, warnings and state dicts.

    Args:
        model_or_params: an ``nn.Module`` (its trainable parameters and, with
            ``sync_buffers``, its floating buffers) or an iterable of parameters.
            Parameters with ``requires_grad=False`` are left alone.
        optimizer: the ``torch.optim.Optimizer`` stepping those parameters; its
            state stays local. One HPSGD per optimizer and per tensor.
        process_group: the data-parallel group (default: the default group); this
            rank must belong to it. Rounds travel on channels of HPSGD's own over
            the same ranks, created here, collectively, by the group's members
            only: the user's own collectives on this group never meet a round.
            Every rank of the group must pass a group of the same ranks; one that
            does not join within ``timeout`` is a CommTimeoutError naming it.
        sync_every: ``"auto"`` (a window ends as soon as the previous reduction has
            completed) or an int H (a window is H step calls).
        replica: ``"keep"`` (the replica keeps its own in-flight progress; 16-bit
            rounding is fed back) or ``"reset"`` (the paper's ``p = a``).
        comm_dtype: dtype of the reduced deltas (None: the parameters' dtype).
            ``torch.int8`` or ``torch.float8_e4m3fn``: an 8-bit wire, one float32
            scale per 512 elements, reduced without ever summing in 8 bits; with
            "keep", what the codes round away is sent next round
            (docs/round-protocol.md, "8-bit wires").
        outer_lr, outer_momentum, nesterov: the outer step on the averaged change.
        sync_buffers: average floating buffers (BatchNorm statistics) every round.
        timeout: deadline of every collective and wait (positive, finite).
        communicator: a :class:`~hpsgd_ext.Communicator` to use instead of building
            one (over a group with the same ranks; its lifetime stays the caller's),
            or a policy that builds HPSGD's own, such as
            :class:`hpsgd_ext.emulation.EmulatedLink` (link emulation, benchmarks).
        check_finite: skip rounds whose averaged change is not finite.
        max_bad_rounds: consecutive skipped rounds before FloatingPointError.
        grad_scaler: the ``torch.amp.GradScaler`` that steps ``optimizer``, if any: a
            step it skips (non-finite gradients on this rank) still counts toward a
            fixed window, so ranks whose scalers disagree stay in step.
        mesh, dim: instead of ``process_group``, a ``DeviceMesh`` and the name or
            index of the dimension HPSGD spans (``mesh.get_group(dim)``; ``dim`` may
            be left out on a 1-D mesh). Hierarchical training: DDP or FSDP2 over the
            other dimension, HPSGD across it (README, "Many nodes"). Parameters that
            are DTensors (FSDP2) are synchronised as their local shards: rank i of
            one group with rank i of the others.
        fragments: streaming rounds (Streaming DiLoCo's schedule with HPSGD's
            overlap): the tensors, in model order, form this many fragments of
            similar size, and each boundary closes one fragment's window in
            rotation, so a fragment's window spans ``fragments`` boundaries, the
            flat buffers hold one fragment and the network sees smaller rounds.
            docs/round-protocol.md, "Fragments".
    """

    def __init__(self, model_or_params: Union[nn.Module, Iterable[torch.Tensor]],
                 optimizer: torch.optim.Optimizer, process_group: Optional[dist.ProcessGroup] = None,
                 sync_every: Union[str, int] = "auto", replica: str = "keep",
                 comm_dtype: Optional[torch.dtype] = None, outer_lr: float = 1.0,
                 outer_momentum: float = 0.0, nesterov: bool = False, sync_buffers: bool = True,
                 timeout: Union[_dt.timedelta, float] = _dt.timedelta(minutes=5),
                 communicator: Optional[Union[Communicator, EmulatedLink]] = None,
                 check_finite: bool = True, max_bad_rounds: int = 3,
                 grad_scaler: Optional["torch.amp.GradScaler"] = None,
                 mesh: Optional["torch.distributed.device_mesh.DeviceMesh"] = None,
                 dim: Optional[Union[str, int]] = None, fragments: int = 1):
        self.closed = True  # until construction succeeds: close() is then a no-op
        self._ctrl = self._data_pg = None
        self._engine = None
        if not isinstance(optimizer, torch.optim.Optimizer):
            raise TypeError(f"HPSGD: optimizer is {type(optimizer).__name__}; expected a torch.optim.Optimizer")
        self.options = Options.make(sync_every=sync_every, replica=replica, comm_dtype=comm_dtype,
                                    outer_lr=outer_lr, outer_momentum=outer_momentum, nesterov=nesterov,
                                    sync_buffers=sync_buffers, timeout=timeout, check_finite=check_finite,
                                    max_bad_rounds=max_bad_rounds, fragments=fragments)
        if grad_scaler is not None and not isinstance(grad_scaler, torch.amp.GradScaler):
            raise TypeError(f"HPSGD: grad_scaler is {type(grad_scaler).__name__}; expected a "
                            "torch.amp.GradScaler or None")
        if communicator is not None and not isinstance(communicator, (Communicator, EmulatedLink)):
            raise TypeError(f"HPSGD: communicator is {type(communicator).__name__}; expected a "
                            "hpsgd_ext.Communicator, a hpsgd_ext.emulation.EmulatedLink or None")
        self.process_group = process_group = resolve_group(process_group, mesh, dim)
        self.mesh, self.mesh_dim = mesh, dim
        self.optimizer = optimizer
        ranks = dist.get_process_group_ranks(process_group)
        handshake(ranks, self.options.timeout)
        self._ctrl = private_group(ranks, self.options.timeout)
        self._own_comm = not isinstance(communicator, Communicator)
        self.comm = None
        try:
            self.rank, self.world_size = dist.get_rank(self._ctrl), dist.get_world_size(self._ctrl)
            tracked, frozen = self._agree_on_layout(model_or_params, optimizer)
            # The same on every rank (the layouts agree): an error here is everyone's.
            fragment_of = split_fragments([t.local.numel() for t in tracked], self.options.fragments)
            self.device = tracked[0].local.device
            self._data_pg = private_group(ranks, self.options.timeout)
            self._broadcast_from_rank0([t.local for t in tracked])
            if isinstance(communicator, Communicator):
                self.comm = communicator
            else:
                policy = communicator.communicator if communicator is not None else Communicator
                self.comm = policy(self._data_pg, device=self.device, timeout=self.options.timeout)
            if self.comm.world_size != self.world_size:
                raise ValueError(f"HPSGD: communicator spans {self.comm.world_size} ranks but the process "
                                 f"group {self.world_size}; expected the same ranks")
            self.groups, specs = self._make_groups(tracked, fragment_of)
            o = self.options
            # The engine's core is the communicator's (a Python Communicator is its owner's handle).
            self._engine = _C.Engine(
                specs, self.comm._live(), self._ctrl, sync_every=0 if o.sync_every == "auto" else o.sync_every,
                keep=o.replica == "keep", check_finite=o.check_finite, max_bad_rounds=o.max_bad_rounds,
                comm_dtype_name=str(o.comm_dtype or "the parameters' dtype"), timeout=o.timeout,
                fragments=o.fragments)
        except BaseException:
            if self._own_comm and self.comm is not None:
                self.comm.close()
            self._destroy_groups()
            raise
        self._memory = self._extra_bytes()
        self._watch = ChangeWatch(tracked, frozen, optimizer,
                                  model_or_params if isinstance(model_or_params, nn.Module) else None)
        self._hook_calls = 0
        self._final: Optional[dict] = None  # stats() after close()
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
            devices = {t.local.device for t in tracked}
            if len(devices) > 1:
                raise ValueError(f"HPSGD: parameters are on {sorted(map(str, devices))}; expected one "
                                 "device per rank")
        except (TypeError, ValueError) as e:
            problem = (type(e).__name__, str(e))
        mine = {"problem": problem, "options": self.options.as_state(self.world_size),
                "layout": [(t.kind, t.name, tuple(t.local.shape), str(t.local.dtype), t.shard) for t in tracked]}
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
                    raise ValueError(f"HPSGD: tensor {i} is {_describe(y)} on rank {r} but {_describe(x)} on "
                                     "rank 0; expected the same model on every rank (with sharded parameters: "
                                     "the same shard)")
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

    def _make_groups(self, tracked: list[Tracked], fragment_of: list[int]) -> tuple[list[_Group], list[tuple]]:
        """Tensors grouped by (fragment, kind, dtype), and the engine's spec of each
        group: (tensors, wire dtype, outer lr, outer momentum, nesterov, fragment).
        Buffers get a plain average: no outer step."""
        buckets: dict[tuple[int, str, torch.dtype], list[Tracked]] = {}
        for t, f in zip(tracked, fragment_of):
            buckets.setdefault((f, t.kind, t.local.dtype), []).append(t)
        o = self.options
        groups, specs = [], []
        for (fragment, kind, dtype), items in sorted(buckets.items(), key=lambda kv: kv[0][0]):
            is_param = kind == "param"
            groups.append(_Group(kind=kind, index=len(groups), tracked=items, fragment=fragment))
            specs.append(([t.local for t in items], o.comm_dtype or dtype, o.outer_lr if is_param else 1.0,
                          o.outer_momentum if is_param else 0.0, o.nesterov and is_param, fragment))
        return groups, specs

    # --- the hook -------------------------------------------------------------------------------
    @property
    def attached(self) -> bool:
        return self._handle is not None

    def _tensors(self) -> list[torch.Tensor]:
        return [t.tensor for g in self.groups for t in g.tracked]

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
        """GradScaler.step, counting a skipped step as a step call (docs: "Boundary")."""
        calls = self._hook_calls
        out = type(self._scaler).step(self._scaler, optimizer, *args, **kwargs)
        if optimizer is self.optimizer and self._hook_calls == calls and self._handle is not None:
            self._advance(skipped=True)
        return out

    def _on_step(self, optimizer, args, kwargs) -> None:
        self._hook_calls += 1
        self._advance(skipped=False)

    def _advance(self, skipped: bool) -> None:
        # The engine counts the step and decides (docs/round-protocol.md, "Boundary");
        # the tensor set is checked before a boundary writes anything.
        if self._engine.step(skipped):
            self._follow_replacements()
            self._call(self._engine.boundary)  # profiler labels: the engine's

    def _call(self, fn, *args):
        """An engine call; the non-finite policy's warnings become RuntimeWarning
        (FloatingPointError and the communicator's errors keep their types)."""
        try:
            return fn(*args)
        finally:
            if self._engine is not None:
                for msg in self._engine.take_warnings():
                    warnings.warn(msg, RuntimeWarning, stacklevel=3)

    def _follow_replacements(self) -> None:
        """docs/round-protocol.md, "Tensor set": checked before anything is written."""
        self._watch.check_layout()
        moved = [(g, i, t, now) for g in self.groups for i, t in enumerate(g.tracked)
                 if (now := ChangeWatch.replacement(t)) is not None]
        for g, i, t, (now, local) in moved:
            _REGISTRY.remove(self, None, [t.tensor])
            t.tensor, t.local = now, local
            self._engine.replace_live(g.index, i, local)
            if self.attached:
                _REGISTRY.add(self, self.optimizer, [now])

    # --- collective operations -------------------------------------------------------------------
    def _ctrl_collective(self, what: str, fn, *args, group=None, **kwargs):
        """A control collective (HPSGD's own group) whose failures keep HPSGD's
        error types and say what was being agreed, on which rank (the engine's
        rule, shared with synchronize()'s agreement)."""
        try:
            return fn(*args, group=group or self._ctrl, **kwargs)
        except (CommError, CommTimeoutError):
            raise
        except RuntimeError as e:
            try:
                _C.raise_control_error(what, self.rank, self.world_size, self.options.timeout, str(e))
            except (CommError, CommTimeoutError) as typed:
                raise typed from e

    @torch.no_grad()
    def synchronize(self) -> None:
        """Collective: close the current (partial) window, merge every round in
        flight, and leave every replica equal to the global model. No local step is
        lost or applied twice; call it on every rank (before evaluating, saving or
        leaving the training loop). docs/round-protocol.md, "synchronize()"."""
        self._check_open("synchronize")
        self._call(self._engine.synchronize)

    # --- state (docs/round-protocol.md, "Checkpoints") -------------------------------------------
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
        eng = self._engine
        self._call(eng.quiesce)
        pending = eng.pending
        reduced = eng.reduced() if pending else None
        reduced_scales = eng.reduced_scales() if pending else None
        carried = eng.pending_fragment  # the pending round carries this fragment's groups only
        return {
            "version": _STATE_VERSION,
            "options": self.options.as_state(self.world_size),
            "rank": self.rank,
            "rank_independent": eng.in_sync,
            "layout": [[list(t.shape) for t in eng.live(g.index)] for g in self.groups],
            "counters": eng.counters(),
            "pending": pending,
            "groups": [{
                "anchors": [a.clone() for a in eng.anchors(g.index)],
                "momenta": [m.clone() for m in eng.momenta(g.index)],
                "sent": s.clone() if (s := eng.sent(g.index)) is not None else None,
                "reduced": reduced[g.index].clone() if pending and g.fragment == carried else None,
                # 8-bit wires: the reduced codes' block scales and flag slots.
                "reduced_scales": (reduced_scales[g.index].clone() if pending and g.fragment == carried
                                   and reduced_scales[g.index] is not None else None),
                "replica": [t.detach().clone() for t in eng.live(g.index)],
            } for g in self.groups],
        }

    def _validate_state(self, state) -> list[dict]:
        """Every tensor of ``state`` checked (count, shape, dtype) before anything
        is written: a bad state raises and leaves this HPSGD and the model as they were."""
        def bad(why: str):
            return ValueError(f"HPSGD.load_state_dict: {why}")

        eng = self._engine
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
        if state["layout"] != [[list(t.shape) for t in eng.live(g.index)] for g in self.groups]:
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

        for g, s in zip(self.groups, state["groups"]):
            k = g.index
            if not isinstance(s, dict) or not {"anchors", "momenta", "sent", "reduced", "replica"} <= s.keys():
                raise bad(f"group {k} is incomplete (expected anchors, momenta, sent, reduced, replica)")
            tensors(f"group {k} anchors", s["anchors"], eng.anchors(k))
            tensors(f"group {k} momenta", s["momenta"], eng.momenta(k))
            tensors(f"group {k} replica", s["replica"], eng.live(k))
            sent = eng.sent(k)
            if sent is None:
                if s["sent"] is not None:
                    raise bad(f"group {k} sent is a tensor; expected None (replica='reset')")
            else:
                one(f"group {k} sent", s["sent"], sent.shape, sent.dtype)
            flat = eng.flat(k, 0)
            # The rounds rotate over the fragments: the pending one carried the fragment
            # of round (rounds - 1), the same count on every rank.
            rounds = state["counters"].get("rounds") if isinstance(state["counters"], dict) else None
            carried = (rounds - 1) % self.options.fragments if isinstance(rounds, int) else None
            scales = eng.scales(k, 0)
            if state["pending"] and g.fragment == carried:
                one(f"group {k} reduced", s["reduced"], flat.shape, flat.dtype)
                if scales is not None:
                    one(f"group {k} reduced_scales", s.get("reduced_scales"), scales.shape, scales.dtype)
            elif s["reduced"] is not None:
                raise bad(f"group {k} reduced is a tensor but no round of its fragment is pending")
            if s.get("reduced_scales") is not None and (scales is None or s["reduced"] is None):
                raise bad(f"group {k} reduced_scales is a tensor but "
                          + ("this group's wire is not 8-bit" if scales is None else "no round is pending"))
        return state["groups"]

    @torch.no_grad()
    def load_state_dict(self, state: dict) -> None:
        """Restore a :meth:`state_dict` taken with the same model and options: the
        global model, the round to be merged, and this rank's replica (so the order
        of loading the model and building HPSGD does not matter)."""
        self._check_open("load_state_dict")
        groups = self._validate_state(state)
        eng = self._engine
        self._call(eng.quiesce)
        reduced, reduced_scales = eng.reduced(), eng.reduced_scales()
        for g, s in zip(self.groups, groups):
            k = g.index
            for dst, src in zip(eng.anchors(k) + eng.momenta(k) + eng.live(k),
                                s["anchors"] + s["momenta"] + s["replica"]):
                dst.copy_(src)
            if (sent := eng.sent(k)) is not None:
                sent.copy_(s["sent"])
            if s["reduced"] is not None:
                reduced[k].copy_(s["reduced"])
                if reduced_scales[k] is not None:
                    reduced_scales[k].copy_(s["reduced_scales"])
        eng.restore(state["counters"], bool(state["pending"]), bool(state["rank_independent"]))

    # --- observability and lifetime --------------------------------------------------------------
    def stats(self) -> dict:
        """rounds, local_steps, skipped_steps (steps a GradScaler skipped),
        steps_per_round, exposed_seconds (training loop blocked by communication),
        comm_seconds, bytes_reduced, skipped_rounds, consecutive_bad_rounds, the
        communicator's counters, ``closed``, and in auto mode the window sizing
        (min_window, step_seconds, round_cost_seconds; docs/round-protocol.md,
        "Auto window"). Memory: ``extra_bytes`` (HPSGD's own buffers on this rank's
        device), ``extra_bytes_per_param`` (per synchronised element; float32
        parameters, float32 wire, "keep": 16 = anchor 4 + two flats 2x4 + sent 4,
        plus a few flag slots) and ``extra_bytes_by_buffer`` (anchors, flats, sent,
        momenta). Works after close() too (the last values)."""
        if self.closed:
            if self._final is None:
                raise RuntimeError("HPSGD.stats: this HPSGD was never built")
            return dict(self._final)
        self._call(self._engine.poll_verdicts)
        return self._snapshot()

    def _extra_bytes(self) -> dict:
        """The memory HPSGD adds to the model, from the engine's own buffers (all
        allocated at construction, never grown): float32 anchors (the global model),
        two flat wire buffers (the round being filled and the one in flight, each
        with one flag slot per rank), ``sent`` ("keep"), the outer momenta. The
        transport's own scratch (Gloo's, NCCL's channels) is not counted."""
        eng = self._engine
        by = {"anchors": 0, "flats": 0, "sent": 0, "momenta": 0}
        numel = 0
        flats = {}  # fragments share their flats' storage (docs/round-protocol.md, "Fragments")
        for g in self.groups:
            k = g.index
            numel += sum(t.numel() for t in eng.live(k))
            sent = eng.sent(k)
            for b in (eng.flat(k, 0), eng.flat(k, 1), eng.scales(k, 0), eng.scales(k, 1)):
                if b is not None:  # scales: 8-bit wires only
                    flats[b.untyped_storage().data_ptr()] = b.untyped_storage().nbytes()
            for name, bufs in (("anchors", eng.anchors(k)), ("sent", [] if sent is None else [sent]),
                               ("momenta", eng.momenta(k))):
                by[name] += sum(b.numel() * b.element_size() for b in bufs)
        by["flats"] = sum(flats.values())
        total = sum(by.values())
        return {"extra_bytes": total, "extra_bytes_per_param": total / numel, "extra_bytes_by_buffer": by}

    def _snapshot(self) -> dict:
        c = self._engine.counters()
        s = {k: c[k] for k in _COUNTERS}
        s.update(skipped_rounds=c["skipped_rounds"], consecutive_bad_rounds=c["consecutive_bad_rounds"])
        s.update(self._engine.window_stats() or {})
        calls = s["local_steps"] + s["skipped_steps"]
        s["steps_per_round"] = calls / s["rounds"] if s["rounds"] else 0.0
        s["comm"] = self.comm.stats()
        s.update(self._memory, extra_bytes_by_buffer=dict(self._memory["extra_bytes_by_buffer"]))
        s["closed"] = False
        return s

    def _check_open(self, what: str) -> None:
        if self.closed:
            raise RuntimeError(f"HPSGD.{what}: this HPSGD is closed")

    def close(self) -> None:
        """Remove the hook and release the engine, the communicator and HPSGD's own
        groups. Rounds in flight are dropped, not waited for (call synchronize()
        first to keep them). Only a Gloo collective still running because a peer
        never issued it can hold the release of HPSGD's group, at most until its
        deadline."""
        if self.closed:
            return
        self.detach()
        self._final = {**self._snapshot(), "closed": True}
        self.closed = True
        self._engine.close()
        self._engine = None
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
