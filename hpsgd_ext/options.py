"""HPSGD's options: validated once, frozen, the same on every rank (checked at
construction), and part of every state dict."""

from __future__ import annotations

import datetime as _dt
import math
from dataclasses import asdict, dataclass
from typing import Optional, Union

import torch

from .comm import to_seconds

__all__ = ["Options"]

COMM_DTYPES = (None, torch.float32, torch.bfloat16, torch.float16, torch.int8, torch.float8_e4m3fn)


def _is_number(x) -> bool:
    return isinstance(x, (int, float)) and not isinstance(x, bool)


@dataclass(frozen=True)
class Options:
    sync_every: Union[str, int] = "auto"
    replica: str = "keep"
    comm_dtype: Optional[torch.dtype] = None
    outer_lr: float = 1.0
    outer_momentum: float = 0.0
    nesterov: bool = False
    sync_buffers: bool = True
    timeout: float = 300.0
    check_finite: bool = True
    max_bad_rounds: int = 3
    fragments: int = 1

    @classmethod
    def make(cls, *, sync_every, replica, comm_dtype, outer_lr, outer_momentum, nesterov,
             sync_buffers, timeout: Union[_dt.timedelta, float], check_finite, max_bad_rounds,
             fragments=1) -> "Options":
        """Every argument checked; errors name the argument and what was expected."""
        if sync_every != "auto" and not (isinstance(sync_every, int) and not isinstance(sync_every, bool)
                                         and sync_every >= 1):
            raise ValueError(f"HPSGD: sync_every is {sync_every!r}; expected 'auto' or an int >= 1")
        if replica not in ("keep", "reset"):
            raise ValueError(f"HPSGD: replica is {replica!r}; expected 'keep' or 'reset'")
        if not any(comm_dtype is d for d in COMM_DTYPES):
            raise TypeError(f"HPSGD: comm_dtype is {comm_dtype!r}; expected None, torch.float32, "
                            "torch.bfloat16, torch.float16, torch.int8 or torch.float8_e4m3fn")
        if not (_is_number(outer_lr) and math.isfinite(outer_lr) and outer_lr > 0):
            raise ValueError(f"HPSGD: outer_lr is {outer_lr!r}; expected a finite number > 0")
        if not (_is_number(outer_momentum) and 0.0 <= outer_momentum < 1.0):
            raise ValueError(f"HPSGD: outer_momentum is {outer_momentum!r}; expected 0 <= momentum < 1")
        for name, flag in (("nesterov", nesterov), ("sync_buffers", sync_buffers), ("check_finite", check_finite)):
            if not isinstance(flag, bool):
                raise TypeError(f"HPSGD: {name} is {flag!r}; expected True or False")
        if nesterov and outer_momentum == 0.0:
            raise ValueError("HPSGD: nesterov=True needs outer_momentum > 0")
        if isinstance(max_bad_rounds, bool) or not isinstance(max_bad_rounds, int) or max_bad_rounds < 1:
            raise ValueError(f"HPSGD: max_bad_rounds is {max_bad_rounds!r}; expected an int >= 1")
        if isinstance(fragments, bool) or not isinstance(fragments, int) or fragments < 1:
            raise ValueError(f"HPSGD: fragments is {fragments!r}; expected an int >= 1")
        return cls(sync_every=sync_every, replica=replica, comm_dtype=comm_dtype, outer_lr=float(outer_lr),
                   outer_momentum=float(outer_momentum), nesterov=nesterov, sync_buffers=sync_buffers,
                   timeout=to_seconds(timeout, "HPSGD: timeout"), check_finite=check_finite,
                   max_bad_rounds=max_bad_rounds, fragments=fragments)

    def as_state(self, world_size: int) -> dict:
        """Plain values (no dtype objects), as saved in state dicts and compared across ranks."""
        d = asdict(self)
        d["comm_dtype"] = str(self.comm_dtype)
        d.pop("timeout")  # a deadline, not part of the algorithm: may change on resume
        if d["fragments"] == 1:
            d.pop("fragments")  # states saved before fragments existed stay loadable
        d["world_size"] = world_size
        return d
