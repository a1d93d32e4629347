"""The algorithms the main job compares, each behind the same small interface and
the same emulated link:

* ``none``: no communication at all (each worker trains alone; the speed ceiling);
* ``hpsgd`` / ``hpsgd-reset``: :class:`hpsgd_ext.HPSGD` with the keep / reset replica;
* ``ddp``: torch DistributedDataParallel, a mean all-reduce of gradients every step
  (through :func:`hpsgd_ext.emulation.link_allreduce_hook`);
* ``localsgd``: torch's ``PostLocalSGDOptimizer`` with a ``PeriodicModelAverager``:
  blocking model averaging every H steps (the averaging held by the same link);
* ``hpsgd-ref``: :class:`hpsgd_ext.reference.ReferenceHPSGD`, the same algorithm with a
  fixed window in plain torch.distributed (no fused op, no communicator);
* ``ceiling``: no synchronisation, while a background thread streams back-to-back
  all-reduces of a model-sized buffer: the speed compute keeps while the transport runs
  (on CPU, Gloo's own CPU cost sets it).

Hierarchical (``--nodes N --workers-per-node M``; a (N, M) DeviceMesh with dims
"cross" and "intra", see topology.py); the flat ones above span all ranks:

* ``ddp+avg``: DDP inside each node, and every ``--period`` steps a blocking average
  of the model across nodes (torch's ``PostLocalSGDOptimizer`` with a
  ``PeriodicModelAverager`` over the cross group: the level of torch's
  ``HierarchicalModelAverager`` that matters here, since DDP already keeps a node's
  replicas equal; the averager itself averages over groups of consecutive ranks and,
  at its longest period, the whole world, not across nodes alone);
* ``ddp+hpsgd``: DDP inside each node, HPSGD across nodes (mesh dim "cross");
* ``fsdp+hpsgd``: FSDP2 (``fully_shard``) inside each node, HPSGD across nodes on the
  local shards.

The hierarchical HPSGDs take a fixed window: ``--sync-every`` if it is a number, else
``--period``, the blocking average's own (same rounds, blocking against overlapped).
Auto windows would end at different steps in different cross groups, and a node's
replicas would drift apart by rounding, which DDP never corrects (README, "Many nodes").
"""

from __future__ import annotations

from typing import Callable, Iterable, Optional

import torch
import torch.distributed as dist
from torch import nn

from ..emulation import EmulatedLink, LinkModel, held_by_link, link_allreduce_hook
from ..hook import HPSGD
from . import topology

HIERARCHICAL = ("ddp+avg", "ddp+hpsgd", "fsdp+hpsgd")
ALGORITHMS = ("none", "hpsgd", "hpsgd-reset", "ddp", "localsgd", "hpsgd-ref", "ceiling") + HIERARCHICAL

# Builds the optimizer over the parameters it is given: FSDP2 replaces a module's
# parameters with sharded ones, so its optimizer can only be built afterwards.
OptimizerFactory = Callable[[Iterable[torch.Tensor]], torch.optim.Optimizer]


class Algorithm:
    """What the training loop needs: the module to call, the optimizer to step,
    a way to make the evaluated model the global one, and counters."""

    def __init__(self, model: nn.Module, optimizer: torch.optim.Optimizer):
        self.model, self.optimizer = model, optimizer

    def sync_for_eval(self) -> None:
        pass

    def stats(self) -> dict:
        return {}

    def close(self) -> None:
        pass


class _HPSGD(Algorithm):
    """HPSGD over all ranks, or (``mesh`` given) across nodes over dim "cross"."""

    def __init__(self, model, optimizer, link, replica, cfg, mesh=None):
        super().__init__(model, optimizer)
        if mesh is None:
            sync_every = cfg["sync_every"] if cfg["sync_every"] == "auto" else int(cfg["sync_every"])
            where = {}
        else:
            sync_every = hierarchical_window(cfg)
            where = {"mesh": mesh, "dim": topology.CROSS}
        self.hp = HPSGD(model, optimizer, sync_every=sync_every, replica=replica,
                        communicator=EmulatedLink(link) if link is not None else None,
                        comm_dtype=COMM_DTYPES[cfg["comm_dtype"]], timeout=cfg["timeout"], **where)
        self.where = topology.group_ranks(mesh) if mesh is not None else {}

    def sync_for_eval(self):
        self.hp.synchronize()

    def stats(self):
        s = self.hp.stats()
        keep = ("rounds", "local_steps", "steps_per_round", "exposed_seconds", "comm_seconds",
                "bytes_reduced", "min_window", "step_seconds", "round_cost_seconds", "extra_bytes")
        return dict({k: s[k] for k in keep if k in s}, **self.where)

    def close(self):
        self.hp.close()


def hierarchical_window(cfg: dict) -> int:
    """The hierarchical HPSGDs' fixed window: --sync-every if a number, else --period."""
    return int(cfg["period"]) if cfg["sync_every"] == "auto" else int(cfg["sync_every"])


def _ddp(model: nn.Module, link: Optional[LinkModel], group=None) -> nn.Module:
    """DDP over ``group`` (default: all ranks), its every all-reduce held by ``link``."""
    ddp = nn.parallel.DistributedDataParallel(model, process_group=group)
    if link is not None:
        ddp.register_comm_hook((link, group or dist.group.WORLD), link_allreduce_hook)
    return ddp


def _fully_shard(model: nn.Module, mesh) -> nn.Module:
    """FSDP2 over the mesh's intra dim: each top-level child that holds parameters is
    one unit (its own all-gather), the root takes the rest. Deeper units could split a
    module whose forward reads a child's weights directly (MultiheadAttention's
    out_proj), which FSDP2 would not have gathered."""
    from torch.distributed.fsdp import fully_shard

    for child in model.children():
        if any(True for _ in child.parameters()):
            fully_shard(child, mesh=mesh[topology.INTRA])
    return fully_shard(model, mesh=mesh[topology.INTRA])


class _LinkedAverager:
    """Builds torch's PeriodicModelAverager over ``group``, holding each averaging for
    the link."""

    @staticmethod
    def make(period: int, link: Optional[LinkModel], group=None):
        from torch.distributed.algorithms.model_averaging.averagers import PeriodicModelAverager

        class Linked(PeriodicModelAverager):
            def average_parameters(self, params):
                params = list(params)
                due = self.step >= self.warmup_steps and (self.step - self.warmup_steps) % self.period == 0
                with held_by_link(link if due else None, _nbytes(params)):
                    super().average_parameters(params)

        return Linked(period=period, warmup_steps=0, process_group=group)


def _nbytes(params) -> int:
    """Bytes of parameters given as tensors or as optimizer param groups."""
    total = 0
    for p in params:
        for t in (p["params"] if isinstance(p, dict) else [p]):
            total += t.numel() * t.element_size()
    return total


class _LocalSGD(Algorithm):
    """Blocking model averaging every ``period`` steps over ``group`` (all ranks by
    default); ``model`` may be DDP inside a node, whose replicas stay equal."""

    def __init__(self, model, optimizer, link, period, group=None, where=None):
        from torch.distributed.optim import PostLocalSGDOptimizer

        self.averager = _LinkedAverager.make(period, link, group)
        self.link, self.group, self.where = link, group, where or {}
        super().__init__(model, PostLocalSGDOptimizer(optim=optimizer, averager=self.averager))

    def sync_for_eval(self):
        from torch.distributed.algorithms.model_averaging.utils import average_parameters

        params = list(self.model.parameters())
        with held_by_link(self.link, _nbytes(params)):
            average_parameters(iter(params), self.group or dist.group.WORLD)

    def stats(self):
        return dict(self.where)


COMM_DTYPES = {"none": None, "bf16": torch.bfloat16, "fp16": torch.float16, "int8": torch.int8,
               "fp8": torch.float8_e4m3fn}


class _Reference(Algorithm):
    def __init__(self, model, optimizer, cfg):
        from ..reference import ReferenceHPSGD

        super().__init__(model, optimizer)
        window = int(cfg["sync_every"]) if cfg["sync_every"] != "auto" else int(cfg["period"])
        self.ref = ReferenceHPSGD(model.parameters(), optimizer, sync_every=window, replica="keep",
                                  comm_dtype=COMM_DTYPES[cfg["comm_dtype"]])

    def sync_for_eval(self):
        self.ref.synchronize()

    def close(self):
        self.ref.close()


class _Ceiling(Algorithm):
    """Train alone while a thread streams all-reduces; every rank stops at the same
    collective (the last element carries a stop vote)."""

    def __init__(self, model, optimizer):
        import threading

        super().__init__(model, optimizer)
        n = sum(p.numel() for p in model.parameters())
        self.buf = torch.zeros(n + 1, device=next(model.parameters()).device)
        self.group = dist.new_group(backend="gloo" if self.buf.device.type == "cpu" else None)
        self.stop, self.count = threading.Event(), 0
        self.thread = threading.Thread(target=self._stream, daemon=True)
        self.thread.start()

    def _stream(self):
        while True:
            self.buf[-1] = 1.0 if self.stop.is_set() else 0.0
            dist.all_reduce(self.buf, group=self.group)
            self.count += 1
            if self.buf[-1].item() > 0:
                return

    def stats(self):
        return {"background_allreduces": self.count}

    def close(self):
        self.stop.set()
        self.thread.join()


# Algorithms that send HPSGD rounds: "NAME@WIRE" runs NAME with comm_dtype WIRE
# (one run of the study compares wires side by side: hpsgd,hpsgd@bf16,hpsgd@int8).
WIRED = ("hpsgd", "hpsgd-reset", "hpsgd-ref", "ddp+hpsgd", "fsdp+hpsgd")


def split_wire(name: str) -> tuple[str, Optional[str]]:
    """("hpsgd", "int8") for "hpsgd@int8", (name, None) without a wire; ValueError
    for an unknown wire or an algorithm that sends no rounds."""
    base, at, wire = name.partition("@")
    if not at:
        return name, None
    if base not in WIRED or wire not in COMM_DTYPES:
        raise ValueError(f"algorithm {name!r}: NAME@WIRE needs NAME from {', '.join(WIRED)} and WIRE from "
                         f"{', '.join(COMM_DTYPES)}")
    return base, wire


def make_algorithm(name: str, model: nn.Module, make_optimizer: OptimizerFactory,
                   link: Optional[LinkModel], cfg: dict) -> Algorithm:
    """``link``: the inter-node link as this rank sees it (None: not emulated); the
    hierarchical algorithms hold only their traffic across nodes by it."""
    name, wire = split_wire(name)
    if wire is not None:
        cfg = dict(cfg, comm_dtype=wire)
    if name in HIERARCHICAL:
        return _hierarchical(name, model, make_optimizer, link, cfg)
    if name == "none":
        return Algorithm(model, make_optimizer(model.parameters()))
    if name in ("hpsgd", "hpsgd-reset"):
        return _HPSGD(model, make_optimizer(model.parameters()), link, "keep" if name == "hpsgd" else "reset", cfg)
    if name == "ddp":
        return Algorithm(_ddp(model, link), make_optimizer(model.parameters()))
    if name == "localsgd":
        return _LocalSGD(model, make_optimizer(model.parameters()), link, int(cfg["period"]))
    if name == "hpsgd-ref":
        return _Reference(model, make_optimizer(model.parameters()), cfg)
    if name == "ceiling":
        return _Ceiling(model, make_optimizer(model.parameters()))
    raise ValueError(f"unknown algorithm {name!r}; expected one of {', '.join(ALGORITHMS)}")


def _hierarchical(name, model, make_optimizer, link, cfg) -> Algorithm:
    """DDP or FSDP2 inside each node (fast links: never held), HPSGD or a blocking
    average across nodes (held by ``link``)."""
    device = next(model.parameters()).device
    mesh = topology.make_mesh(cfg, device.type)
    if name == "fsdp+hpsgd":
        sharded = _fully_shard(model, mesh)
        return _HPSGD(sharded, make_optimizer(sharded.parameters()), link, "keep", cfg, mesh=mesh)
    ddp = _ddp(model, None, mesh.get_group(topology.INTRA))
    opt = make_optimizer(ddp.parameters())
    if name == "ddp+hpsgd":
        return _HPSGD(ddp, opt, link, "keep", cfg, mesh=mesh)
    return _LocalSGD(ddp, opt, link, int(cfg["period"]), mesh.get_group(topology.CROSS),
                     where=topology.group_ranks(mesh))
