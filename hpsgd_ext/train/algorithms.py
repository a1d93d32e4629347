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
"""

from __future__ import annotations

from typing import Optional

import torch
import torch.distributed as dist
from torch import nn

from ..emulation import EmulatedLink, LinkModel, held_by_link, link_allreduce_hook
from ..hook import HPSGD

ALGORITHMS = ("none", "hpsgd", "hpsgd-reset", "ddp", "localsgd", "hpsgd-ref", "ceiling")


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
    def __init__(self, model, optimizer, link, replica, cfg):
        super().__init__(model, optimizer)
        sync_every = cfg["sync_every"] if cfg["sync_every"] == "auto" else int(cfg["sync_every"])
        self.hp = HPSGD(model, optimizer, sync_every=sync_every, replica=replica,
                        communicator=EmulatedLink(link) if link is not None else None,
                        comm_dtype=COMM_DTYPES[cfg["comm_dtype"]], timeout=cfg["timeout"])

    def sync_for_eval(self):
        self.hp.synchronize()

    def stats(self):
        s = self.hp.stats()
        keep = ("rounds", "local_steps", "steps_per_round", "exposed_seconds", "comm_seconds",
                "bytes_reduced", "min_window", "step_seconds", "round_cost_seconds")
        return {k: s[k] for k in keep if k in s}

    def close(self):
        self.hp.close()


class _DDP(Algorithm):
    def __init__(self, model, optimizer, link):
        ddp = nn.parallel.DistributedDataParallel(model)
        if link is not None:
            ddp.register_comm_hook((link, dist.group.WORLD), link_allreduce_hook)
        super().__init__(ddp, optimizer)


class _LinkedAverager:
    """Builds torch's PeriodicModelAverager, holding each averaging for the link."""

    @staticmethod
    def make(period: int, link: Optional[LinkModel]):
        from torch.distributed.algorithms.model_averaging.averagers import PeriodicModelAverager

        class Linked(PeriodicModelAverager):
            def average_parameters(self, params):
                params = list(params)
                due = self.step >= self.warmup_steps and (self.step - self.warmup_steps) % self.period == 0
                with held_by_link(link if due else None, _nbytes(params)):
                    super().average_parameters(params)

        return Linked(period=period, warmup_steps=0)


def _nbytes(params) -> int:
    """Bytes of parameters given as tensors or as optimizer param groups."""
    total = 0
    for p in params:
        for t in (p["params"] if isinstance(p, dict) else [p]):
            total += t.numel() * t.element_size()
    return total


class _LocalSGD(Algorithm):
    def __init__(self, model, optimizer, link, period):
        from torch.distributed.optim import PostLocalSGDOptimizer

        self.averager = _LinkedAverager.make(period, link)
        self.link = link
        super().__init__(model, PostLocalSGDOptimizer(optim=optimizer, averager=self.averager))

    def sync_for_eval(self):
        from torch.distributed.algorithms.model_averaging.utils import average_parameters

        params = list(self.model.parameters())
        with held_by_link(self.link, _nbytes(params)):
            average_parameters(iter(params), dist.group.WORLD)


COMM_DTYPES = {"none": None, "bf16": torch.bfloat16, "fp16": torch.float16}


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


def make_algorithm(name: str, model: nn.Module, optimizer: torch.optim.Optimizer,
                   link: Optional[LinkModel], cfg: dict) -> Algorithm:
    if name == "none":
        return Algorithm(model, optimizer)
    if name in ("hpsgd", "hpsgd-reset"):
        return _HPSGD(model, optimizer, link, "keep" if name == "hpsgd" else "reset", cfg)
    if name == "ddp":
        return _DDP(model, optimizer, link)
    if name == "localsgd":
        return _LocalSGD(model, optimizer, link, int(cfg["period"]))
    if name == "hpsgd-ref":
        return _Reference(model, optimizer, cfg)
    if name == "ceiling":
        return _Ceiling(model, optimizer)
    raise ValueError(f"unknown algorithm {name!r}; expected one of {', '.join(ALGORITHMS)}")
