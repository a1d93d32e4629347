"""The non-finite rule (docs/round-protocol.md, "Non-finite rounds").

A round's verdict is computed on the device from the reduced buffers, which are
bitwise the same on every rank, so every rank reaches the same verdict:
``info[0]`` is 1 when every reduced change is finite, else 0; ``info[1 + j]`` is 1
when rank ``j`` flagged its own change as non-finite (each flat buffer carries one
flag slot per rank after its segments: rank ``j`` writes slot ``j``, the others 0,
and the reduction adds them up). ``round_step`` reads ``info[0]`` on the device and
merges or discards without the host. The host learns the verdict later, without
waiting for the device (CUDA: a copy into pinned memory ordered by an event, read
at a later boundary; CPU: at once), and then warns, counts and, after
``max_bad_rounds`` consecutive bad rounds, raises FloatingPointError on every rank.
"""

from __future__ import annotations

import warnings
from collections import deque

import torch

__all__ = ["Verdicts", "own_flag", "reduced_verdict"]

ADVICE = ("a NaN/Inf gradient also poisons that rank's optimizer state (momentum, Adam moments), "
          "so every later change of that rank is non-finite too. Use a torch.amp.GradScaler (it skips "
          "non-finite steps; pass grad_scaler= to HPSGD with a fixed window) or reset that rank's "
          "optimizer state; see the README's 'Failure behaviour'")


def own_flag(flat: torch.Tensor, numel: int, rank: int, world: int, check: bool) -> None:
    """Zero the flag slots of ``flat`` and set this rank's own one when its change
    ``flat[:numel]`` is not finite. Device ops only: the host does not wait."""
    tail = flat[numel:numel + world]
    tail.zero_()
    if check and numel:
        lo, hi = torch.aminmax(flat[:numel])
        # min and max propagate NaN and reach +-Inf: both finite iff every element is
        tail[rank:rank + 1].copy_(~(torch.isfinite(lo) & torch.isfinite(hi)))


def reduced_verdict(flats: list[torch.Tensor], numels: list[int], world: int) -> torch.Tensor:
    """``info`` (float32, 1 + world elements, on the buffers' device) for one round."""
    finite, flags = [], []
    for flat, n in zip(flats, numels):
        if n:
            lo, hi = torch.aminmax(flat[:n])
            finite += [torch.isfinite(lo), torch.isfinite(hi)]
        flags.append(flat[n:n + world].float())
    ok = torch.stack(finite).all() if finite else torch.ones((), dtype=torch.bool, device=flats[0].device)
    return torch.cat([ok.float().reshape(1), (torch.stack(flags).sum(0) != 0).float()])


class Verdicts:
    """Reads verdicts in round order without blocking, and applies the policy."""

    def __init__(self, device: torch.device, rank: int, world: int, max_bad_rounds: int, comm_dtype_name: str):
        self.device, self.rank, self.world = device, rank, world
        self.max_bad_rounds = max_bad_rounds
        self.comm_dtype_name = comm_dtype_name
        self._queue: deque = deque()  # (round index, host tensor, event or None)
        # The round issued right after a discarded one carries zeros: its finite
        # verdict proves nothing about the replicas, so it does not end a streak.
        self.last_discarded = False
        self.skipped = 0
        self.streak = 0

    def push(self, round_index: int, info: torch.Tensor) -> None:
        if self.device.type == "cuda":
            host = torch.empty(info.shape, dtype=info.dtype, pin_memory=True)
            host.copy_(info, non_blocking=True)
            event = torch.cuda.Event()
            event.record()
            self._queue.append((round_index, host, event))
        else:
            self._queue.append((round_index, info, None))

    def drain(self, block: bool = False) -> None:
        """Apply every verdict whose value has reached the host (all of them with
        ``block``, for synchronize() and state_dict(), which wait anyway)."""
        while self._queue:
            idx, host, event = self._queue[0]
            if event is not None and not event.query():
                if not block:
                    return
                event.synchronize()
            self._queue.popleft()
            self._apply(idx, host)

    def pending(self) -> int:
        return len(self._queue)

    def _apply(self, idx: int, info: torch.Tensor) -> None:
        values = info.tolist()
        valid = values[0] != 0
        zero_round, self.last_discarded = self.last_discarded, not valid
        if valid:
            if not zero_round:
                self.streak = 0
            return
        self.skipped += 1
        self.streak += 1
        ranks = [j for j in range(self.world) if values[1 + j] != 0]
        if ranks:
            who = ("rank " + str(ranks[0]) if len(ranks) == 1 else "ranks " + ", ".join(map(str, ranks)))
            cause = f"{who} sent a non-finite change (NaN/Inf)"
        else:
            cause = (f"every rank's change was finite but their mean overflowed the wire dtype "
                     f"({self.comm_dtype_name}); use a wider comm_dtype")
        if self.streak >= self.max_bad_rounds:
            raise FloatingPointError(
                f"HPSGD: {self.streak} consecutive rounds were not merged (max_bad_rounds="
                f"{self.max_bad_rounds}); in the last one (round {idx}) {cause}. On rank {self.rank}: "
                + (ADVICE if ranks else "nothing was merged since"))
        warnings.warn(f"HPSGD: round {idx} was not merged: {cause}; every replica restarts from the "
                      "global model", RuntimeWarning, stacklevel=4)

    def state(self) -> dict:
        return {"skipped_rounds": self.skipped, "consecutive_bad_rounds": self.streak,
                "last_round_discarded": self.last_discarded}

    def load(self, counters: dict) -> None:
        self._queue.clear()
        self.skipped = int(counters.get("skipped_rounds", 0))
        self.streak = int(counters.get("consecutive_bad_rounds", 0))
        self.last_discarded = bool(counters.get("last_round_discarded", False))
