"""Which tensors an HPSGD keeps in sync, who owns them, and whether that set has
changed since construction.

The set is fixed at construction: every rank reduces the same flat layout in the
same order, so a tensor cannot join or leave one rank's rounds alone. What changes
in ordinary training code, and what HPSGD does about it at the next boundary
(before it writes anything; see docs/round-protocol.md, "Tensor set"):

* a tracked tensor re-assigned out of place with the same shape, dtype and device
  (``self.buf = 0.9 * self.buf + x``): followed, on every rank alike (each rank
  runs the same code), since the layout is unchanged;
* anything that changes the layout (a frozen parameter unfrozen, a parameter
  group added to the optimizer, a tracked tensor replaced by one of another
  shape or dtype): a RuntimeError naming the tensor.

A DTensor parameter (FSDP2's, or a tensor-parallel one) is synchronised as its
local shard: HPSGD reads and writes a view of the DTensor's own local storage, so
rank i of one group averages its shard with rank i of the others, and FSDP2 sees
HPSGD's writes at its next all-gather. FSDP2 may give the DTensor another local
tensor (after ``model.to()`` or a ``load_state_dict`` before the first forward):
followed like an out-of-place replacement.
"""

from __future__ import annotations

import weakref
from dataclasses import dataclass
from typing import Iterable, Optional, Union

import torch
from torch import nn
from torch.distributed.tensor import DTensor

__all__ = ["Tracked", "collect", "Registry"]

FLOAT_DTYPES = (torch.float32, torch.bfloat16, torch.float16)


@dataclass
class Tracked:
    """One synchronised tensor: its kind and name, the object the model and the
    optimizer hold (``tensor``; a DTensor for FSDP2), the plain tensor HPSGD reads
    and writes (``local``: ``tensor`` itself, or the DTensor's local shard), and
    where the model holds it (the module's ``_parameters``/``_buffers`` dict and
    key), if it came from one."""
    kind: str
    name: str
    tensor: torch.Tensor
    holder: Optional[dict] = None
    key: Optional[str] = None
    local: Optional[torch.Tensor] = None

    def __post_init__(self):
        if self.local is None:
            self.local = local_view(self.tensor)

    @property
    def shard(self) -> Optional[str]:
        """Which shard ``local`` is, for a DTensor (None otherwise): the ranks HPSGD
        averages must hold the same shard."""
        t = self.tensor
        if not isinstance(t, DTensor):
            return None
        return (f"local shard at {tuple(t.device_mesh.get_coordinate())} of {tuple(t.placements)} on a mesh "
                f"of shape {tuple(t.device_mesh.shape)}")


def local_view(t: torch.Tensor) -> torch.Tensor:
    """``t``, or for a DTensor its local shard: a view of the DTensor's own
    storage, so in-place writes to it are writes to the DTensor."""
    if isinstance(t, DTensor):
        with torch.no_grad():
            return t.to_local().detach()
    return t


def _same_view(a: torch.Tensor, b: torch.Tensor) -> bool:
    return a.data_ptr() == b.data_ptr() and a.shape == b.shape and a.stride() == b.stride()


def _named(module: nn.Module, what: str):
    """(qualified name, holder dict, key, tensor) of every parameter or buffer."""
    for mod_name, mod in module.named_modules(remove_duplicate=True):
        holder = mod._parameters if what == "param" else mod._buffers
        for key, t in holder.items():
            if t is not None:
                yield (f"{mod_name}.{key}" if mod_name else key), holder, key, t


def collect(model_or_params: Union[nn.Module, Iterable[torch.Tensor]], sync_buffers: bool):
    """(tracked, frozen): the tensors to synchronise in a fixed order, and the
    parameters left alone because they do not require grad (watched for change)."""
    tracked: list[Tracked] = []
    frozen: list[tuple[str, torch.Tensor]] = []
    seen: set[int] = set()
    if isinstance(model_or_params, nn.Module):
        for name, holder, key, p in _named(model_or_params, "param"):
            if id(p) in seen:
                continue  # shared (tied) parameters are one tensor
            seen.add(id(p))
            (tracked.append(Tracked("param", name, p, holder, key)) if p.requires_grad
             else frozen.append((name, p)))
        if sync_buffers:
            for name, holder, key, b in _named(model_or_params, "buffer"):
                if b.is_floating_point() and id(b) not in seen:
                    seen.add(id(b))
                    tracked.append(Tracked("buffer", name, b, holder, key))
    else:
        params = list(model_or_params)
        for i, p in enumerate(params):
            if not isinstance(p, torch.Tensor):
                raise TypeError(f"HPSGD: model_or_params[{i}] is {type(p).__name__}; expected a tensor")
            if id(p) in seen:
                raise ValueError(f"HPSGD: param 'params[{i}]' appears twice")
            seen.add(id(p))
            (tracked.append(Tracked("param", f"params[{i}]", p)) if p.requires_grad
             else frozen.append((f"params[{i}]", p)))
    if not tracked:
        raise ValueError("HPSGD: nothing to synchronise (no parameter requires grad)")
    for t in tracked:
        check_tensor(t.kind, t.name, t.local)
    return tracked, frozen


def split_fragments(numels: list[int], fragments: int) -> list[int]:
    """The fragment of each tensor, in order: ``fragments`` runs of consecutive
    tensors of similar total size (a cut where the running total first reaches
    k/F of the whole), none empty. docs/round-protocol.md, "Fragments"."""
    n = len(numels)
    if not 1 <= fragments <= n:
        raise ValueError(f"HPSGD: fragments is {fragments}; expected 1 to {n} (the number of tensors "
                         "HPSGD synchronises: a fragment holds whole tensors)")
    total, run, out = sum(numels), 0, []
    f = 0
    for i, k in enumerate(numels):
        # Move on once this fragment has its share, keeping one tensor for each fragment left.
        if f < fragments - 1 and out and (run * fragments >= (f + 1) * total or n - i == fragments - 1 - f):
            f += 1
        out.append(f)
        run += k
    return out


def check_tensor(kind: str, name: str, t: torch.Tensor) -> None:
    if t.dtype not in FLOAT_DTYPES:
        raise TypeError(f"HPSGD: {kind} {name!r} has dtype {t.dtype}; expected float32, bfloat16 or float16")
    if not t.is_contiguous():
        raise ValueError(f"HPSGD: {kind} {name!r} is not contiguous; expected contiguous tensors")


def optimizer_params(optimizer: torch.optim.Optimizer) -> list[torch.Tensor]:
    return [p for group in optimizer.param_groups for p in group["params"]]


def _n_stepped(optimizer: torch.optim.Optimizer) -> int:
    return sum(len(group["params"]) for group in optimizer.param_groups)


def check_owned(tracked: list[Tracked], optimizer: torch.optim.Optimizer) -> None:
    """Every synchronised parameter must be stepped by the optimizer the hook sits on."""
    stepped = {id(p) for p in optimizer_params(optimizer)}
    for t in tracked:
        if t.kind == "param" and id(t.tensor) not in stepped:
            raise ValueError(f"HPSGD: param {t.name!r} is not stepped by the optimizer; expected the "
                             "optimizer that trains the given parameters")


class Registry:
    """Attached HPSGD instances by optimizer and by tensor: one optimizer or one
    tensor under two attached HPSGD instances would be stepped or merged twice.
    Entries hold weak references, so an instance never closed pins nothing."""

    def __init__(self):
        self._optimizers: dict[int, weakref.ref] = {}
        self._tensors: dict[int, weakref.ref] = {}

    @staticmethod
    def _other(ref: Optional[weakref.ref], me) -> bool:
        owner = ref() if ref is not None else None
        return owner is not None and owner is not me and owner.attached

    def check(self, me, optimizer, tracked: list[Tracked]) -> None:
        if self._other(self._optimizers.get(id(optimizer)), me):
            raise ValueError("HPSGD: this optimizer already has an HPSGD attached; expected one HPSGD per "
                             "optimizer (close() or detach() the first one before attaching another)")
        for t in tracked:
            if self._other(self._tensors.get(id(t.tensor)), me):
                raise ValueError(f"HPSGD: {t.kind} {t.name!r} is already synchronised by another HPSGD; "
                                 "expected each tensor under one HPSGD (two would merge its change twice)")

    def add(self, owner, optimizer, tensors: Iterable[torch.Tensor]) -> None:
        ref = weakref.ref(owner)
        self._optimizers[id(optimizer)] = ref
        for t in tensors:
            self._tensors[id(t)] = ref

    def remove(self, owner, optimizer, tensors: Iterable[torch.Tensor]) -> None:
        """Forget ``owner``'s entries for ``optimizer`` (None: keep it) and ``tensors``."""
        entries = [(id(t), self._tensors) for t in tensors]
        if optimizer is not None:
            entries.append((id(optimizer), self._optimizers))
        for key, table in entries:
            ref = table.get(key)
            if ref is not None and ref() in (owner, None):
                del table[key]


class ChangeWatch:
    """Cheap per-boundary check that the synchronised set is as it was built."""

    def __init__(self, tracked: list[Tracked], frozen: list[tuple[str, torch.Tensor]],
                 optimizer: torch.optim.Optimizer, model: Optional[nn.Module]):
        self.frozen = frozen
        self.optimizer = optimizer
        self.model = model
        self.n_stepped = _n_stepped(optimizer)
        self.known = {id(t.tensor) for t in tracked} | {id(p) for _, p in frozen}

    def check_layout(self) -> None:
        """Raise naming the first tensor whose change alters the flat layout."""
        for name, p in self.frozen:
            if p.requires_grad:
                raise RuntimeError(_changed(f"param {name!r} started requiring grad"))
        if _n_stepped(self.optimizer) != self.n_stepped:
            new = [p for p in optimizer_params(self.optimizer) if id(p) not in self.known]
            name = self._name_of(new[0]) if new else "a parameter"
            raise RuntimeError(_changed(f"{name} joined the optimizer (add_param_group)"
                                        if new else "the optimizer's parameters changed"))

    def _name_of(self, t: torch.Tensor) -> str:
        if self.model is not None:
            for name, p in self.model.named_parameters():
                if p is t:
                    return f"param {name!r}"
        return f"a parameter of shape {list(t.shape)}"

    @staticmethod
    def replacement(t: Tracked) -> Optional[tuple[torch.Tensor, torch.Tensor]]:
        """(object, local tensor) the model now holds in ``t``'s place, when either
        is another one. Raises when the replacement would change the layout."""
        now = t.tensor if t.holder is None else t.holder.get(t.key)
        if isinstance(t.tensor, DTensor) and now is not None and not isinstance(now, DTensor):
            # FSDP2 registers the unsharded parameter while it is gathered (a
            # step under set_reshard_after_backward(False)): the DTensor is
            # still the parameter the optimizer steps.
            now = t.tensor
        if now is t.tensor and not isinstance(now, DTensor):
            return None
        local = None if now is None else local_view(now)
        if now is t.tensor and _same_view(local, t.local):
            return None
        old = t.local
        if now is None or local.shape != old.shape or local.dtype != old.dtype or local.device != old.device \
                or not local.is_contiguous():
            what = "was removed" if now is None else \
                f"was replaced by a {local.dtype} tensor of shape {list(local.shape)} on {local.device}"
            raise RuntimeError(_changed(f"{t.kind} {t.name!r} {what} (it was {old.dtype} "
                                        f"{list(old.shape)} on {old.device})"))
        return now, local


def _changed(what: str) -> str:
    return (f"HPSGD: {what} after HPSGD was built. The set of synchronised tensors is fixed at "
            "construction (a tensor outside it would silently drift apart on each rank). To change "
            "it: hp.synchronize(); hp.close(); then build a new HPSGD over the model and optimizer")
