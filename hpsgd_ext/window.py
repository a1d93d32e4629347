"""The ``sync_every="auto"`` window: when a window ends and why it lasts at least a
measured minimum is written in docs/round-protocol.md, "Auto window". The rule runs
in the C++ engine (csrc/engine/window.cpp); this module exposes the same class for
tests and benchmarks that drive it on a synthetic clock:

    w = AutoWindow(count_background_cpu=False, budget=0.02)
    w.should_end(now, steps_in_window, reduced)   # at every step's hook
    w.step_done(now)                              # when the hook returns
    w.round_ended(boundary_s, steps)              # at the end of every boundary
    w.restart()                                   # after synchronize() or a load
    w.min_window, w.step_s, w.cost_s, w.stats()
"""

from __future__ import annotations

from . import _C

__all__ = ["AutoWindow"]

AutoWindow = _C.AutoWindow
