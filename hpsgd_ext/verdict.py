"""The non-finite rule's device ops (docs/round-protocol.md, "Non-finite rounds"),
exposed for benchmarks and tests; they are ``torch.ops.hpsgd.own_flag`` and
``torch.ops.hpsgd.reduced_verdict`` (typed wrappers in :mod:`hpsgd_ext.ops`). The
rule and its host-side policy (streak, warning, FloatingPointError) run in the C++
engine (csrc/engine/verdict.cpp):

* ``reduced_verdict(flats, numels, world, valid=None, out=None)``: float32
  ``[1 + world]`` on the buffers' device; ``[0]`` is 1 when every reduced change is
  finite (times ``valid``), ``[1 + j]`` is 1 when rank ``j`` flagged its own change;
* ``own_flag(flat, numel, rank, world, check)``: zero the flag slots after the
  segments and set this rank's own one when its change is not finite.
"""

from __future__ import annotations

from .ops import own_flag, reduced_verdict

__all__ = ["reduced_verdict", "own_flag"]
