"""Link emulation, for benchmarks and the demo on one machine: one module, one
policy, wrapped around communication instead of threaded through HPSGD.

It is an *emulation*, not a network: one serial link of ``bandwidth`` bytes/s and
``latency`` seconds (:class:`LinkModel`). A collective of B bytes issued at t
finishes, as modelled, at ``max(t, previous finish) + latency + B / bandwidth`` and
its completion is held until then. Pass the same ``LinkModel`` object to every
algorithm of a comparison so all of them see the same link:

* HPSGD: ``HPSGD(model, opt, communicator=EmulatedLink(link))`` — HPSGD builds its
  communicator on its own channel through this policy (and closes it);
* a :class:`~hpsgd_ext.Communicator` of your own: ``Communicator(group, link=link)``;
* DDP: ``ddp.register_comm_hook((link, group), link_allreduce_hook)``;
* any blocking collective: ``with held_by_link(link, nbytes): ...``.

Where the hold lives: inside the communicator's C++ core (``csrc/comm``), because
the watchdog must cancel it on failure and, on CUDA, it is a delay kernel on the
communicator's stream (the host never sleeps). On CUDA, warm up before a long hold:
with lazy module loading, the first launch of a kernel may wait for every running
kernel, the spinning hold too. Close a communicator whose hold is running before any
other: tearing an NCCL communicator down may synchronize the whole device, which
waits for a hold spinning on another communicator's stream (seen on an H200:
``hpsgd-bench hook`` hung in ``close()``).
"""

from __future__ import annotations

import datetime as _dt
import time
from typing import Optional, Union

import torch
import torch.distributed as dist

from . import _C
from .comm import Communicator

__all__ = ["LinkModel", "EmulatedLink", "link_allreduce_hook", "held_by_link"]

LinkModel = _C.LinkModel


class EmulatedLink:
    """A communicator policy: the communicator HPSGD builds for its own channel
    has its completions held by ``link``. Pass it as ``HPSGD(...,
    communicator=EmulatedLink(link))``."""

    def __init__(self, link: LinkModel):
        if not isinstance(link, LinkModel):
            raise TypeError(f"EmulatedLink: link is {type(link).__name__}; expected hpsgd_ext.LinkModel")
        self.link = link

    def communicator(self, process_group: dist.ProcessGroup, device: Union[torch.device, str],
                     timeout: Union[_dt.timedelta, float]) -> Communicator:
        """A new communicator over ``process_group`` whose collectives the link holds."""
        return Communicator(process_group, device=device, timeout=timeout, link=self.link)

    def __repr__(self) -> str:
        return f"EmulatedLink(bandwidth={self.link.bandwidth:g} B/s, latency={self.link.latency:g} s)"


def _sleep_until(finish: float) -> None:
    """Block until ``finish`` on the communicator's monotonic clock."""
    delay = finish - _C.monotonic()
    if delay > 0:
        time.sleep(delay)


def link_allreduce_hook(state, bucket):
    """A DDP communication hook that applies the same :class:`LinkModel` emulation as
    the Communicator: mean all-reduce of the bucket, completion held until the
    modelled time. ``state`` is ``(link, process_group)``; register with
    ``ddp_model.register_comm_hook((link, group), link_allreduce_hook)``."""
    link, group = state
    buf = bucket.buffer()
    finish = link.reserve(buf.numel() * buf.element_size())
    world = dist.get_world_size(group)
    fut = dist.all_reduce(buf, group=group, async_op=True).get_future()

    def held(f):
        _sleep_until(finish)
        return f.value()[0].div_(world)

    return fut.then(held)


class held_by_link:
    """Context manager for a *blocking* collective of ``nbytes``: books the link on
    entry (the collective's issue) and, on exit, blocks until the modelled finish.
    A no-op when ``link`` is None."""

    def __init__(self, link: Optional[LinkModel], nbytes: int):
        self.link, self.nbytes, self.finish = link, nbytes, 0.0

    def __enter__(self):
        if self.link is not None:
            self.finish = self.link.reserve(self.nbytes)
        return self

    def __exit__(self, *exc):
        if self.link is not None:
            _sleep_until(self.finish)
