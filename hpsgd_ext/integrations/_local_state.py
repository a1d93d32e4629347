"""What HPSGD keeps per rank and the frameworks' checkpoints do not: the local
optimizer's state.

HPSGD leaves the optimizer's state local (DESIGN.md section 2: momentum or Adam
moments of each replica differ between ranks), but Lightning and Accelerate write
one checkpoint file from rank 0 and load rank 0's optimizer state on every rank.
A resumed run would then continue from other moments than the run it resumes.
The integrations therefore store every rank's optimizer state next to HPSGD's
state and, on resume, give each rank its own back (same world size), so that a
resumed run continues bit for bit as the uninterrupted one.
"""

from __future__ import annotations

import warnings
from typing import Any, Optional

import torch
import torch.distributed as dist

from ..hook import HPSGD


def _to_cpu(x: Any) -> Any:
    if isinstance(x, torch.Tensor):
        return x.detach().cpu().clone()
    if isinstance(x, dict):
        return {k: _to_cpu(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return type(x)(_to_cpu(v) for v in x)
    return x


def save_state(hp: HPSGD) -> dict[str, Any]:
    """Collective over HPSGD's group: HPSGD's state and, on the group's rank 0, every
    rank's optimizer state (elsewhere ``None``: only rank 0 writes the file)."""
    group = hp.process_group
    dst = dist.get_global_rank(group, 0)
    mine = _to_cpu(hp.optimizer.state_dict())
    gathered: Optional[list] = [None] * hp.world_size if hp.rank == 0 else None
    dist.gather_object(mine, gathered, dst=dst, group=group)
    return {"hpsgd": hp.state_dict(), "optimizer_states": gathered}


def load_optimizer_state(hp: HPSGD, state: dict[str, Any], framework: str) -> None:
    """Give this rank its own optimizer state from ``state`` (see :func:`save_state`)."""
    states = state.get("optimizer_states")
    if states is None:
        return
    if len(states) != hp.world_size:
        warnings.warn(f"hpsgd_ext: the checkpoint holds the optimizer states of {len(states)} ranks and this run "
                      f"has {hp.world_size}; every rank keeps the optimizer state {framework} restored "
                      "(rank 0's), so the run does not continue exactly as the saved one would have",
                      stacklevel=3)
        return
    hp.optimizer.load_state_dict(states[hp.rank])
