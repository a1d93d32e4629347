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

__all__ = ["flatten", "unflatten", "delta_flatten", "merge", "round_step", "own_flag",
           "reduced_verdict", "flat_numel", "preload_kernels"]


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
               sent: Optional[torch.Tensor] = None, divisor: int = 1,
               verdict: Optional[torch.Tensor] = None,
               out_scales: Optional[torch.Tensor] = None,
               reduced_scales: Optional[torch.Tensor] = None) -> torch.Tensor:
    """The fused round boundary, per element with the values before the update
    (``S = seg(sent)`` or 0, ``R = seg(reduced)``, ``D = divisor``; float32 math):

    1. ``d = p - a - D*S``; ``out = d / D`` (cast to ``out.dtype``);
    2. outer step: ``lr*R``; with momentum buffers ``m = momentum*m + R`` and
       ``lr*(R + momentum*m)`` (nesterov) or ``lr*m``; 0 when ``reduced`` is None;
    3. ``a += step``;
    4. ``sent`` None: ``p = a`` (reset); else ``p = a + d`` and ``sent = d / D``
       (keep; ``sent`` equals ``out`` bit for bit, in wire units).

    ``divisor`` (an integer >= 1, normally the world size): the wire carries the
    change pre-divided, so a SUM all-reduce over ``D`` ranks yields the mean. This
    folds the mean's ``1/D`` into the boundary's single pass, and no partial sum can
    overflow a representable mean (fp16: two ranks of 40000 sum to 40000, not inf).
    ``divisor=1`` is exactly the undivided rule.

    ``verdict`` (optional, only with ``reduced``): a 1-element float32 tensor on the
    parameters' device, read by the kernel on the device (the host never waits for
    it). Nonzero and not NaN: merge as above. 0 or NaN: discard -- the reduced
    round is not merged and the window in progress is thrown away: anchors and
    momentum buffers are left bitwise untouched, ``p = a``, ``out = 0`` and
    ``sent = 0``. This lets the device decide merge-or-discard (a non-finite or
    failed reduction) without the host learning the value.

    An 8-bit wire: ``out`` of dtype torch.int8 or torch.float8_e4m3fn receives the
    codes of ``d / D`` and ``out_scales`` (float32, one per block of 512 elements of
    the flat index space, blocks spanning tensors) their scales, in the same pass
    (docs/round-protocol.md, "8-bit wires"); ``sent`` (float32) then holds what the
    codes carry, dequantised, so what the codes round away is sent next round; and
    ``reduced`` (codes of ``out``'s dtype) is read as ``reduced * reduced_scales``
    of its block. ``reference.quantize_blocks`` is the oracle.
    """
    torch.ops.hpsgd.round_step(
        list(params), list(anchors), reduced, out, float(lr),
        None if momentum_buffers is None else list(momentum_buffers),
        float(momentum), bool(nesterov), sent, int(divisor), verdict, out_scales, reduced_scales)
    return out


def own_flag(flat: torch.Tensor, numel: int, rank: int, world: int, check: bool = True) -> None:
    """The flag slots of a flat wire buffer (``numel`` data elements, then one slot per
    rank): zero them all, then, with ``check``, set ``flat[numel + rank] = 1`` when any
    of the first ``numel`` elements is NaN or +-Inf. One pass over the data, on the
    device (docs/round-protocol.md, "Verdict kernels")."""
    torch.ops.hpsgd.own_flag(flat, int(numel), int(rank), int(world), bool(check))


def reduced_verdict(flats: Sequence[torch.Tensor], numels: Sequence[int], world: int,
                    valid: Optional[torch.Tensor] = None,
                    out: Optional[torch.Tensor] = None) -> torch.Tensor:
    """A round's verdict from its reduced flat buffers, on the device: float32
    ``[1 + world]`` (written into ``out`` when given). ``[0]`` is 1 when every data
    element of every flat is finite, times ``valid`` (a 1-element float32 tensor: the
    communicator's flag) when given; ``[1 + j]`` is 1 when flag slot ``j`` of any flat
    is non-zero (NaN counts), else 0. The host never waits for it."""
    if out is None:
        device = flats[0].device if flats else (valid.device if valid is not None else "cpu")
        out = torch.empty(1 + int(world), dtype=torch.float32, device=device)
    torch.ops.hpsgd.reduced_verdict(list(flats), [int(n) for n in numels], int(world), valid, out)
    return out


def preload_kernels() -> list[dict]:
    """Load every CUDA kernel of the extension now, on the current device.

    Under CUDA lazy loading a kernel's module loads at its first launch, and that load
    can wait behind kernels already running, such as a long collective; HPSGD calls
    this once when built on CUDA so no boundary pays it. Returns one dict per kernel
    (``name``, ``registers``, ``local_bytes`` (spills: 0 expected), ``max_threads``,
    ``blocks_per_sm``); ``[]`` without CUDA (not built, or no device).
    """
    return list(_C.preload_kernels())


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
                     momentum=0.0, nesterov=False, sent=None, divisor=1, verdict=None,
                     out_scales=None, reduced_scales=None):
    return None


@torch.library.register_fake("hpsgd::own_flag")
def _own_flag_fake(flat, numel, rank, world, check=True):
    return None


@torch.library.register_fake("hpsgd::reduced_verdict")
def _reduced_verdict_fake(flats, numels, world, valid, info):
    return None


# --------------------------------------------------------------------------- 8-bit wires (issue 14)
def quantized_shard_sum(codes: torch.Tensor, scales: torch.Tensor, sources: int,
                        out_codes: Optional[torch.Tensor] = None,
                        out_scales: Optional[torch.Tensor] = None):
    """The owner's step of the 8-bit reduction (docs/round-protocol.md, "8-bit
    wires"): ``codes`` (int8 or float8_e4m3fn) holds ``sources`` equal shards one after
    the other in rank order, ``scales`` (float32) their block scales likewise;
    returns ``(out_codes, out_scales)``: the float32 sum of the dequantised shards
    (from 0, in source order, no fused multiply-add) re-quantised per block of 512.
    Bit for bit :func:`hpsgd_ext.reference.quantized_shard_sum`."""
    sources = int(sources)
    if out_codes is None:
        out_codes = torch.empty(codes.numel() // max(sources, 1), dtype=codes.dtype, device=codes.device)
    if out_scales is None:
        out_scales = torch.empty((out_codes.numel() + 511) // 512, dtype=torch.float32,
                                 device=codes.device)
    torch.ops.hpsgd.quantized_shard_sum(codes, scales, sources, out_codes, out_scales)
    return out_codes, out_scales


@torch.library.register_fake("hpsgd::quantized_shard_sum")
def _quantized_shard_sum_fake(codes, scales, sources, out_codes, out_scales):
    return None
