"""Typed wrappers of the fused ops (``torch.ops.hpsgd.*``) and their fake kernels.

Flat layout (a contract): tensor ``i`` occupies ``flat[off_i : off_i + numel_i]``, in
list order, no padding; a flat buffer may be longer than the total and its tail is
never touched. Math is float32; each output is cast to its own dtype on store.

Accepted dtypes: params float32/bfloat16/float16 (one dtype per call); anchors the
params' dtype or float32; momentum buffers the anchors' dtype; flat buffers (``out``,
``reduced``, ``sent``) float32/bfloat16/float16, one dtype per call. Every tensor
contiguous and on one device. Bad arguments raise ``ValueError``/``TypeError`` naming
the argument before anything is written.
"""

from __future__ import annotations

from typing import Optional, Sequence

import torch

from . import _C  # noqa: F401  (registers torch.ops.hpsgd)

__all__ = ["flatten", "unflatten", "delta_flatten", "merge", "round_step", "flat_numel"]


def flat_numel(tensors: Sequence[torch.Tensor]) -> int:
    """Elements a flat buffer for ``tensors`` must hold at least."""
    return sum(t.numel() for t in tensors)


def flatten(tensors: Sequence[torch.Tensor], out: torch.Tensor) -> torch.Tensor:
    """``out[:total] = cat([t.flatten() for t in tensors])``, cast to ``out.dtype``."""
    torch.ops.hpsgd.flatten(list(tensors), out)
    return out


def unflatten(flat: torch.Tensor, tensors: Sequence[torch.Tensor]) -> None:
    """Copy each segment of ``flat`` back into ``tensors`` (in place, cast)."""
    torch.ops.hpsgd.unflatten(flat, list(tensors))


def delta_flatten(params: Sequence[torch.Tensor], anchors: Sequence[torch.Tensor],
                  out: torch.Tensor) -> torch.Tensor:
    """``out[:total] = cat(p - a)``, computed in float32 and cast to ``out.dtype``."""
    torch.ops.hpsgd.delta_flatten(list(params), list(anchors), out)
    return out


def merge(params: Sequence[torch.Tensor], anchors: Sequence[torch.Tensor],
          reduced: torch.Tensor, lr: float = 1.0) -> None:
    """``a += lr * seg(reduced)``; ``p = a``: merge an averaged change into the model."""
    torch.ops.hpsgd.merge(list(params), list(anchors), reduced, float(lr))


def round_step(params: Sequence[torch.Tensor], anchors: Sequence[torch.Tensor],
               reduced: Optional[torch.Tensor], out: torch.Tensor, lr: float = 1.0,
               momentum_buffers: Optional[Sequence[torch.Tensor]] = None,
               momentum: float = 0.0, nesterov: bool = False,
               sent: Optional[torch.Tensor] = None) -> torch.Tensor:
    """The fused round boundary, per element with the values before the update
    (``S = seg(sent)`` or 0, ``R = seg(reduced)``):

    1. ``d = p - a - S``; ``out = d`` (cast to ``out.dtype``);
    2. outer step: ``lr*R``; with momentum buffers ``m = momentum*m + R`` and
       ``lr*(R + momentum*m)`` (nesterov) or ``lr*m``; 0 when ``reduced`` is None;
    3. ``a += step``;
    4. ``sent`` None: ``p = a`` (reset); else ``p = a + d`` and ``sent = d`` (keep).
    """
    torch.ops.hpsgd.round_step(
        list(params), list(anchors), reduced, out, float(lr),
        None if momentum_buffers is None else list(momentum_buffers),
        float(momentum), bool(nesterov), sent)
    return out


# Fake (meta) kernels: the ops return nothing and write only annotated arguments,
# so tracing needs no shapes from them.
@torch.library.register_fake("hpsgd::flatten")
def _flatten_fake(tensors, out):
    return None


@torch.library.register_fake("hpsgd::unflatten")
def _unflatten_fake(flat, tensors):
    return None


@torch.library.register_fake("hpsgd::delta_flatten")
def _delta_flatten_fake(params, anchors, out):
    return None


@torch.library.register_fake("hpsgd::merge")
def _merge_fake(params, anchors, reduced, lr=1.0):
    return None


@torch.library.register_fake("hpsgd::round_step")
def _round_step_fake(params, anchors, reduced, out, lr=1.0, momentum_buffers=None,
                     momentum=0.0, nesterov=False, sent=None):
    return None
