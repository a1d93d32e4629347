"""Which ranks an HPSGD spans, and HPSGD's own groups over them.

A user names the ranks with a process group or with one dimension of a
``DeviceMesh`` (hierarchical training: DDP or FSDP2 inside each group of fast
links, HPSGD across groups). Either way HPSGD builds two Gloo groups of its own
over the same ranks (docs/round-protocol.md, "Channels"), created by the members
only: a world-wide ``new_group`` that ranks called with different members would
hang (issue 12).

Groups that cannot work are errors, not hangs:

* a rank outside the group it passes (``new_group`` hands such ranks
  ``GroupMember.NON_GROUP_MEMBER``) is a ValueError at once;
* ranks whose groups disagree (rank 0 passes {0, 1}, rank 1 passes {1, 2})
  never meet: before any group is created, every member announces the member
  list it passed on the default store and waits, with HPSGD's timeout, for the
  other members to announce the same list. A member missing at the deadline is a
  CommTimeoutError naming it and the ranks it passed instead, if it passed any.
  A rank cannot fail sooner: the missing member may be building another HPSGD
  first (rank 1 builds over {1, 2}, then over {0, 1}), which is legal.
"""

from __future__ import annotations

import datetime as _dt
import hashlib
import json
import torch.distributed as dist

from .comm import CommTimeoutError

__all__ = ["resolve_group", "handshake", "private_group"]

# Per member list, how many HPSGDs this process has started to build over it: the
# members of one list build over it equally often, so the count names one
# construction on every member.
_ATTEMPTS: dict[tuple[int, ...], int] = {}


def resolve_group(process_group, mesh, dim) -> dist.ProcessGroup:
    """The group an HPSGD spans: ``process_group``, ``mesh.get_group(dim)``, or the
    default group; this rank must belong to it."""
    if mesh is None:
        if dim is not None:
            raise TypeError("HPSGD: dim is given without mesh; expected mesh=DeviceMesh with dim=, "
                            "or process_group= alone")
        if process_group is None:
            if not dist.is_initialized():
                raise RuntimeError("HPSGD: torch.distributed is not initialized; call "
                                   "torch.distributed.init_process_group() first or pass process_group")
            return dist.group.WORLD
        return _member_group(process_group)
    if process_group is not None:
        raise TypeError("HPSGD: process_group and mesh are mutually exclusive; pass process_group=, or "
                        "mesh= with dim= (HPSGD then spans mesh.get_group(dim))")
    from torch.distributed.device_mesh import DeviceMesh

    if not isinstance(mesh, DeviceMesh):
        raise TypeError(f"HPSGD: mesh is {type(mesh).__name__}; expected a "
                        "torch.distributed.device_mesh.DeviceMesh")
    names = mesh.mesh_dim_names
    if dim is None:
        if mesh.ndim != 1:
            raise TypeError(f"HPSGD: mesh has {mesh.ndim} dims {_dims(mesh)}; expected dim= naming the one "
                            "HPSGD spans")
        dim = 0
    if isinstance(dim, str):
        if not names or dim not in names:
            raise ValueError(f"HPSGD: dim={dim!r} is not a dim of the mesh, whose dims are {_dims(mesh)}; "
                             "expected one of those names or an index")
    elif isinstance(dim, int) and not isinstance(dim, bool):
        if not 0 <= dim < mesh.ndim:
            raise ValueError(f"HPSGD: dim={dim} is out of range for a mesh of {mesh.ndim} dims {_dims(mesh)}; "
                             f"expected 0 to {mesh.ndim - 1} or a dim name")
    else:
        raise TypeError(f"HPSGD: dim is {type(dim).__name__}; expected a mesh dim name (str) or index (int)")
    if mesh.get_coordinate() is None:
        raise ValueError(f"HPSGD: this rank ({dist.get_rank()}) is not in mesh {mesh.mesh.tolist()}; expected "
                         "a mesh that includes every rank that builds an HPSGD over it")
    return mesh.get_group(dim)


def _dims(mesh) -> str:
    names = mesh.mesh_dim_names
    return str(tuple(names)) if names else f"(unnamed, indices 0 to {mesh.ndim - 1})"


def _member_group(group) -> dist.ProcessGroup:
    if group is dist.GroupMember.NON_GROUP_MEMBER:
        raise ValueError(f"HPSGD: process_group is GroupMember.NON_GROUP_MEMBER on rank {dist.get_rank()}: "
                         "torch.distributed.new_group returned it because this rank is not among the group's "
                         "ranks; expected a group this rank belongs to (each rank passes its own group)")
    if not isinstance(group, dist.ProcessGroup):
        raise TypeError(f"HPSGD: process_group is {type(group).__name__}; expected a "
                        "torch.distributed.ProcessGroup or None")
    if dist.get_rank(group) < 0:
        raise ValueError(f"HPSGD: process_group spans ranks {dist.get_process_group_ranks(group)}, which do not "
                         f"include this rank ({dist.get_rank()}); expected a group this rank belongs to")
    return group


def handshake(ranks: list[int], timeout: float) -> None:
    """Wait until every rank of ``ranks`` builds an HPSGD over the same ranks, or
    raise CommTimeoutError at the deadline naming who is missing (module docstring)."""
    store = dist.PrefixStore("hpsgd/members", dist.distributed_c10d._get_default_store())
    me = dist.get_rank()
    key = tuple(ranks)
    attempt = _ATTEMPTS[key] = _ATTEMPTS.get(key, -1) + 1
    tag = hashlib.sha1("_".join(map(str, ranks)).encode()).hexdigest()
    name = f"{tag}/{attempt}"
    # What this rank passed, for the error message of a peer that waits for it in vain.
    store.set(f"passed/{me}", json.dumps(ranks))
    store.set(f"{name}/{me}", "")
    try:
        store.wait([f"{name}/{r}" for r in ranks], _dt.timedelta(seconds=timeout))
    except (dist.DistStoreError, RuntimeError):
        missing = [r for r in ranks if not store.check([f"{name}/{r}"])]
        if not missing:  # they all arrived just at the deadline
            return
        raise CommTimeoutError(f"HPSGD: process_group spans ranks {ranks}, but {_who(store, missing)} did not "
                               f"join within the timeout ({timeout:g} s); expected every rank of the group to "
                               "build its HPSGD over a group of the same ranks (with a DeviceMesh: the same "
                               "dim)") from None


def _who(store, missing: list[int]) -> str:
    parts = []
    for r in missing:
        passed = json.loads(store.get(f"passed/{r}")) if store.check([f"passed/{r}"]) else None
        parts.append(f"rank {r} (its latest HPSGD is over ranks {passed})" if passed is not None
                     else f"rank {r} (it has started no HPSGD)")
    return ", ".join(parts)


def private_group(ranks: list[int], timeout: float) -> dist.ProcessGroup:
    """A Gloo group of HPSGD's own over ``ranks``, created by its members only (no
    world-wide collective that ranks outside it would have to join)."""
    return dist.new_group(ranks=ranks, backend="gloo", timeout=_dt.timedelta(seconds=timeout),
                          use_local_synchronization=True)

