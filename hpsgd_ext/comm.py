"""The communicator: asynchronous mean all-reduce of one flat buffer per round.

Two transports behind one API (the scheduling, deadlines, ordering, link emulation
and telemetry are shared C++ code):

* ``nccl`` for CUDA buffers: its own ``ncclComm_t`` bootstrapped over the given
  process group (unique id from rank 0), its own high-priority stream; the caller's
  stream is never blocked and the CPU only when it asks to wait.
* ``c10d`` for CPU buffers: any ``torch.distributed`` process group (Gloo), driven
  from C++.

Every collective has a deadline, counted from its issue (the constructor's
``timeout``), and every wait one too (its ``timeout`` argument, else the same). A
watchdog thread per communicator enforces the deadlines and, for NCCL, polls the
communicator's asynchronous errors, whether or not anybody waits: a collective that
misses its deadline aborts the communicator and fails with :class:`CommTimeoutError`
(a ``TimeoutError`` and a :class:`CommError`) naming the collective and the rank; a
failed one with :class:`CommError`. The first failure is recorded: every later call
(:meth:`Communicator.all_reduce_async`, :meth:`Communicator.check`, a Work's
``wait``/``is_completed``) raises the same type with its message, and
:attr:`Communicator.error` returns the message. On CUDA each Work exposes
``valid_flag``, a one-element float32 device tensor in mapped host memory that reads
1 while the communicator is healthy and is cleared to 0 *before* it is aborted, so a
kernel that consumes the reduced buffer can refuse a half-reduced one without a host
sync (CPU: ``None``). ``abort()`` and ``close()`` never wait on a peer.

Link emulation (``link=LinkModel(bandwidth, latency)``) is for benchmarks and the
demo on one machine: each collective's completion is held as a modelled serial link
would hold it (CPU: checked by the waiting thread; CUDA: a one-thread delay kernel
on the comm stream). The policy and the helpers for HPSGD, DDP and blocking
collectives are in :mod:`hpsgd_ext.emulation`. Closing or aborting the
communicator ends its holds.
"""

from __future__ import annotations

import atexit
import datetime as _dt
import weakref
from typing import Optional, Union

import torch
import torch.distributed as dist

from . import _C
from .profiling import label

__all__ = ["Communicator", "LinkModel", "Work", "CommError", "CommTimeoutError", "to_seconds"]

LinkModel = _C.LinkModel
Work = _C.Work
CommError = _C.CommError
CommTimeoutError = _C.CommTimeoutError

Duration = Union[_dt.timedelta, float, int]
# A deadline must be representable everywhere it travels (C++ clocks, Gloo's
# milliseconds, timedelta): a year is far beyond any sensible collective.
_MAX_SECONDS = 365 * 24 * 3600.0


def to_seconds(value: Duration, name: str) -> float:
    """A positive, finite duration in seconds from a timedelta or a number."""
    secs = value.total_seconds() if isinstance(value, _dt.timedelta) else value
    if isinstance(secs, bool) or not isinstance(secs, (int, float)) or not 0 < secs < _MAX_SECONDS:
        raise ValueError(f"{name} is {value!r}; expected a positive, finite timedelta or number of "
                         f"seconds (at most {_MAX_SECONDS:.0f})")
    return float(secs)


# Every open communicator, closed at interpreter exit while Python is still whole:
# its watchdog threads may hold the last reference to a buffer, and freeing a
# tensor that Python has seen needs the GIL, which a finalizing interpreter never
# gives a C++ thread (it ends the thread by a forced unwind, which std::terminate
# stops inside a destructor: "terminate called without an active exception", seen
# from c10d's own Gloo worker thread at the end of a Lightning run).
_OPEN: "weakref.WeakSet[Communicator]" = weakref.WeakSet()


@atexit.register
def _close_all() -> None:
    for comm in list(_OPEN):
        try:
            comm.close()
        except Exception:  # noqa: BLE001  exiting: nothing left to report it to
            pass


def _cta_count(value, name: str) -> int:
    if value is None:
        return 0
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"Communicator: {name} is {value!r}; expected an int >= 1 or None")
    return value


class Communicator:
    """All-reduce of flat buffers (mean, or sum), in place, in the background.

    Args:
        process_group: the group to reduce over (default: the default group).
        device: where the buffers live; CUDA buffers use the NCCL transport when
            :func:`hpsgd_ext.built_with_nccl`, CPU buffers the c10d transport.
            Default: the current CUDA device for an NCCL group, else CPU.
        transport: ``None`` (choose as above), ``"nccl"`` or ``"c10d"``. ``"c10d"``
            with CUDA buffers reduces them through ``process_group`` itself (Gloo
            stages them through host memory, so the host waits for each round: for
            processes that share one GPU, which NCCL refuses, and for tests).
        timeout: deadline of every collective (from its issue) and of every wait.
        link: optional :class:`LinkModel` (emulation, see module docs).
        min_ctas, max_ctas: NCCL transport only: bounds on the CTAs (thread blocks)
            NCCL may use per collective (``ncclConfig_t.minCTAs``/``maxCTAs``), to
            leave SMs to compute. ``None``: NCCL's default. Validated everywhere
            (ints >= 1, ``min_ctas <= max_ctas``), ignored by the c10d transport (CPU
            buffers, or a build without NCCL).

    The communicator owns one watchdog thread and, for NCCL, its own communicator
    and stream; :meth:`close` (or a ``with`` block) releases them, and so does
    dropping the last reference. Work handles still held stay valid.
    """

    def __init__(self, process_group: Optional[dist.ProcessGroup] = None,
                 device: Optional[Union[torch.device, str]] = None,
                 timeout: Duration = _dt.timedelta(minutes=5),
                 link: Optional[LinkModel] = None, *, transport: Optional[str] = None,
                 min_ctas: Optional[int] = None, max_ctas: Optional[int] = None):
        self._core = None
        self._final_error: Optional[str] = None
        if process_group is None:
            if not dist.is_initialized():
                raise RuntimeError("Communicator: torch.distributed is not initialized; call "
                                   "torch.distributed.init_process_group() or pass process_group")
            process_group = dist.group.WORLD
        if link is not None and not isinstance(link, LinkModel):
            raise TypeError(f"Communicator: link is {type(link).__name__}; expected hpsgd_ext.LinkModel or None")
        self.timeout = to_seconds(timeout, "timeout")
        lo, hi = _cta_count(min_ctas, "min_ctas"), _cta_count(max_ctas, "max_ctas")
        if lo and hi and lo > hi:
            raise ValueError(f"Communicator: min_ctas ({lo}) exceeds max_ctas ({hi})")
        self._ctas = (lo, hi)
        backend = dist.get_backend(process_group)
        if device is None:
            device = torch.device("cuda", torch.cuda.current_device()) if backend == "nccl" else torch.device("cpu")
        self.device = torch.device(device)
        self.process_group = process_group
        if transport not in (None, "nccl", "c10d"):
            raise ValueError(f"Communicator: transport is {transport!r}; expected None, 'nccl' or 'c10d'")
        if self.device.type == "cuda" and transport != "c10d":
            self._core = self._make_nccl(process_group, backend, link, required=transport == "nccl")
        elif self.device.type == "cuda":
            if backend not in ("gloo", "nccl"):
                raise ValueError(f"Communicator: transport='c10d' with CUDA buffers needs a gloo or nccl "
                                 f"process group; this one is {backend!r}")
            index = self.device.index if self.device.index is not None else torch.cuda.current_device()
            self.device = torch.device("cuda", index)
            self._core = _C.c10d_communicator(process_group, self.timeout, link)
        elif transport == "nccl":
            raise ValueError(f"Communicator: transport='nccl' needs CUDA buffers; device is {self.device}")
        elif self.device.type == "cpu":
            self._core = _C.c10d_communicator(process_group, self.timeout, link)
        else:
            raise ValueError(f"Communicator: device {self.device} is not supported; expected cpu or cuda")
        _OPEN.add(self)

    def _make_nccl(self, pg, backend, link, required):
        from . import built_with_nccl

        index = self.device.index if self.device.index is not None else torch.cuda.current_device()
        self.device = torch.device("cuda", index)
        if not built_with_nccl():
            if not required and backend in ("gloo", "nccl"):  # the group itself reduces CUDA tensors
                return _C.c10d_communicator(pg, self.timeout, link)
            raise NotImplementedError("Communicator: CUDA buffers need the NCCL transport (or "
                                      "transport='c10d' over a gloo or nccl group), and this "
                                      "build has none (hpsgd_ext.built_with_nccl() is False)")
        rank, world = dist.get_rank(pg), dist.get_world_size(pg)
        uid = [_C.nccl_unique_id() if rank == 0 else None]
        # The unique id travels over the user's group, whatever its backend.
        dist.broadcast_object_list(uid, src=dist.get_global_rank(pg, 0), group=pg,
                                   device=self.device if backend == "nccl" else None)
        lo, hi = self._ctas
        with torch.cuda.device(index):
            return _C.nccl_communicator(uid[0], rank, world, index, self.timeout, link,
                                        min_ctas=lo, max_ctas=hi)

    # --- the API -----------------------------------------------------------------
    def all_reduce_async(self, flat: torch.Tensor, average: bool = True) -> Work:
        """Start an all-reduce of ``flat`` (float32/bfloat16/float16, contiguous) in
        place; returns its :class:`Work`. ``average=True``: the mean over ranks;
        ``average=False``: the plain sum (for a caller that pre-divided its buffer;
        no division pass). Several may be in flight; they complete in issue order.
        Every rank must issue the same sequence. Raises the recorded error if the
        communicator failed (see :meth:`check`)."""
        with label("hpsgd.all_reduce_async"):
            return self._live().all_reduce_async(flat, average)

    def quantized_all_reduce_async(self, codes: torch.Tensor, scales: torch.Tensor,
                                   extra: int = 0) -> Work:
        """Start the 8-bit reduction (docs/round-protocol.md, "8-bit wires") in place;
        returns its :class:`Work`, scheduled and ordered like :meth:`all_reduce_async`.

        ``codes``: 1-D contiguous int8 or float8_e4m3fn, ``n`` block-quantised
        elements (blocks of 512, :func:`hpsgd_ext.reference.quantize_blocks`);
        ``scales``: 1-D contiguous float32 on the same device, one scale per block
        followed by ``extra`` float32 slots. On completion every rank holds the same
        bytes: ``codes`` and the block scales are the re-quantised SUM over ranks (each
        owner of a shard dequantises every rank's shard, sums in float32 in rank
        order, re-quantises: :func:`hpsgd_ext.reference.quantized_all_reduce_codes`),
        and the extra slots the float32 sum over ranks in rank order. A non-finite
        input block (non-finite scale) gives a NaN scale in that block everywhere.
        ``stats()["bytes"]`` counts what this rank sends in both phases. On the c10d
        transport the second phase is issued from the first one's completion; nothing
        else may be issued on its process group meanwhile (this communicator's later
        collectives wait for it)."""
        with label("hpsgd.quantized_all_reduce_async"):
            return self._live().quantized_all_reduce_async(codes, scales, extra)

    def check(self) -> None:
        """Raise the communicator's recorded failure, if any, as the type it failed
        with (:class:`CommTimeoutError` for a missed deadline, :class:`CommError`
        otherwise). Cheap: one atomic load while healthy."""
        self._live().check()

    @property
    def error(self) -> Optional[str]:
        """The recorded failure's message, or ``None`` while healthy."""
        core = self._core
        return self._final_error if core is None else core.error

    @property
    def rank(self) -> int:
        return self._live().rank

    @property
    def world_size(self) -> int:
        return self._live().world_size

    @property
    def transport(self) -> str:
        return self._live().transport

    @property
    def link(self) -> Optional[LinkModel]:
        return self._live().link

    def stats(self) -> dict:
        """Counters: issued, completed, failed, timeouts, bytes, wait_seconds."""
        core = self._live()
        return {"transport": core.transport, **core.counters(), "aborted": core.aborted}

    def abort(self, reason: str = "aborted by the user") -> None:
        """Stop now: in-flight and later collectives raise :class:`CommError`. Never
        blocks on a waiting thread (it releases the GIL; a ``wait`` in another thread
        returns within a few tens of milliseconds)."""
        self._live().abort(reason)

    def close(self) -> None:
        """Release the communicator: its watchdog, its reference to the process
        group, its NCCL communicator and every buffer it still tracks. Never waits on
        a peer: c10d collectives in flight finish (or time out) inside the group;
        NCCL ones get a short drain (about a second), then the communicator is
        finalized when clean, aborted otherwise (in-flight Work then raise
        :class:`CommError`). Work handles still held stay valid. Idempotent."""
        core, self._core = self._core, None
        _OPEN.discard(self)
        if core is not None:
            core.close()
            self._final_error = core.error

    def _live(self):
        if self._core is None:
            raise RuntimeError("Communicator is closed")
        return self._core

    def __enter__(self) -> "Communicator":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def __repr__(self) -> str:
        if self._core is None:
            return "<hpsgd_ext.Communicator closed>"
        return (f"<hpsgd_ext.Communicator {self._core.transport} rank {self._core.rank}/"
                f"{self._core.world_size} on {self.device}>")
