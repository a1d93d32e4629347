"""When does an ``sync_every="auto"`` window end? The paper's rule ends it at the
first step at which the previous reduction has completed. That is right when a
round costs nothing but its communication; it is not when a round has a fixed
cost of its own that the window does not hide: the boundary (the fused round_step
and the issue), and, on CPU, the transport's threads taking cores from the
compute (Gloo on the same cores: about 1 ms a round on the 2-core test machine,
more than one 0.7 ms step of the demo model). With the paper's rule a fast link
then makes every step a boundary and the loop slows down by that cost each step.

So a window also lasts at least ``min_window`` steps, sized from measurements so
that one round's own cost is at most ``budget`` of the window's compute:

* ``step``: the median of recent steps' seconds, hook to hook (the user's forward,
  backward, optimizer and data loading); a median, so an occasional slow step (an
  evaluation, a logging all-reduce, the OS) does not move it;
* ``cost`` of a round: its boundary's seconds plus the CPU seconds that threads
  other than the training thread used during the round, less what they use in
  a step with no reduction in flight (intra-op threads, a data loader). CPU time,
  not wall time: it does not count waiting for a slower rank, and it is what the
  transport takes from the compute when cores are shared. On CUDA the transport
  runs on the GPU (and NCCL's proxy thread spins), so there only the boundary counts,
  less its finite check's wait for the GPU to drain the queued steps (the GPU keeps
  working meanwhile; see HPSGD._boundary);
* ``min_window = ceil(cost / (budget x step))``, between 1 and ``max_window``,
  from an exponential average of ``cost``.

To measure the background CPU of a step with nothing in flight when the paper's
rule alone would leave no such step (communication longer than compute), every
``probe_every``-th window takes ``probe_steps`` extra steps after its reduction
has landed.

This only ever makes windows longer, and it is local to a rank: the protocol's
guarantees (one collective per boundary, no rank more than one round ahead,
``synchronize()`` agreeing on the round count) do not depend on window lengths.
"""

from __future__ import annotations

import math
import time
from collections import deque
from statistics import median
from typing import Optional


def _background_cpu() -> float:
    """CPU seconds used so far by every thread of this process but the caller."""
    return time.process_time() - time.thread_time()


class AutoWindow:
    def __init__(self, count_background_cpu: bool, budget: float = 0.02, max_window: int = 128,
                 probe_every: int = 16, probe_steps: int = 2, smoothing: float = 0.2, history: int = 33):
        self.count_background_cpu = count_background_cpu
        self.budget, self.max_window = budget, max_window
        self.probe_every, self.probe_steps, self.smoothing = probe_every, probe_steps, smoothing
        self._steps_s: deque = deque(maxlen=history)   # recent steps' seconds
        self.step_s: Optional[float] = None            # their median
        self.idle_cpu_s = 0.0                          # background CPU of a step with nothing in flight
        self.cost_s: Optional[float] = None            # one round's own cost (averaged)
        self.min_window = 1
        self._rounds = 0
        self._probe_left = probe_steps                 # the first window measures an idle step
        self._mark: Optional[float] = None             # end of the previous hook
        self._cpu_mark = 0.0                           # background CPU then
        self._round_cpu: Optional[float] = None        # background CPU at the last boundary's end
        self._idle = False                             # the step now running has nothing in flight
        self._idle_seen = False

    def should_end(self, now: float, steps_in_window: int, reduced: bool) -> bool:
        """Called at every local step's hook: does this window end here?"""
        if self._mark is not None:
            self._steps_s.append(now - self._mark)
            if self._idle and self.count_background_cpu:
                used = _background_cpu() - self._cpu_mark
                self.idle_cpu_s = used if not self._idle_seen else \
                    self.idle_cpu_s + self.smoothing * (used - self.idle_cpu_s)
                self._idle_seen = True
        if not reduced:
            return False
        self._idle = True
        if self._probe_left > 0:
            self._probe_left -= 1
            return False
        return steps_in_window >= self.min_window

    def step_done(self, now: float) -> None:
        """Called when the hook returns (after any boundary)."""
        self._mark = now
        if self._idle and self.count_background_cpu:
            self._cpu_mark = _background_cpu()

    def round_ended(self, boundary_s: float, steps: int) -> None:
        """Called at the end of every boundary, with its seconds and the window's steps."""
        cpu = _background_cpu() if self.count_background_cpu else 0.0
        if self._steps_s and self._round_cpu is not None:
            self.step_s = median(self._steps_s)
            cost = boundary_s + max(0.0, cpu - self._round_cpu - steps * self.idle_cpu_s)
            self.cost_s = cost if self.cost_s is None else self.cost_s + self.smoothing * (cost - self.cost_s)
            # (1 - 1e-9): a cost of exactly k budgets is k steps, whatever the float rounding
            want = math.ceil(self.cost_s / (self.budget * self.step_s) * (1 - 1e-9)) if self.step_s > 0 else 1
            self.min_window = max(1, min(self.max_window, want))
        self._round_cpu = cpu
        self._idle = False
        self._rounds += 1
        if self._rounds % self.probe_every == 0:
            self._probe_left = self.probe_steps

    def restart(self) -> None:
        """After synchronize() or a load: time outside the loop is no round's."""
        self._mark = None
        self._round_cpu = None
        self._idle = False

    def stats(self) -> dict:
        return {"min_window": self.min_window, "step_seconds": self.step_s or 0.0,
                "round_cost_seconds": self.cost_s or 0.0}
