"""Pure-PyTorch oracle of the fused ops: the same rule, one tensor at a time, in
float32, each output cast to its own dtype on store. Slow and obvious on purpose;
tests compare every kernel against it.
"""

from __future__ import annotations

from typing import Optional, Sequence

import torch

__all__ = ["flatten", "unflatten", "delta_flatten", "merge", "round_step"]


def _segments(tensors: Sequence[torch.Tensor], flat: Optional[torch.Tensor]):
    """Yield (index, tensor, segment view of ``flat`` or None)."""
    off = 0
    for i, t in enumerate(tensors):
        n = t.numel()
        yield i, t, None if flat is None else flat.view(-1)[off:off + n]
        off += n


@torch.no_grad()
def round_step(params, anchors, reduced, out, lr=1.0, momentum_buffers=None,
               momentum=0.0, nesterov=False, sent=None, *, write_params=True,
               has_anchor=True):
    """The full rule; the other ops are special cases of it (see below)."""
    if nesterov and momentum_buffers is None:
        raise ValueError("nesterov needs momentum_buffers")
    red = list(_segments(params, reduced))
    outs = list(_segments(params, out))
    sents = list(_segments(params, sent))
    for i, p, _ in _segments(params, None):
        shape = p.shape
        p32 = p.reshape(-1).float()
        a32 = anchors[i].reshape(-1).float() if has_anchor else torch.zeros_like(p32)
        s32 = sents[i][2].float() if sent is not None else torch.zeros_like(p32)
        d = p32 - a32 - s32
        if out is not None:
            outs[i][2].copy_(d)
        step = torch.zeros_like(p32)
        if reduced is not None:
            r = red[i][2].float()
            if momentum_buffers is not None:
                m = momentum * momentum_buffers[i].reshape(-1).float() + r
                momentum_buffers[i].copy_(m.view(shape))
                step = lr * (r + momentum * m) if nesterov else lr * m
            else:
                step = lr * r
        a_new = a32 + step if has_anchor else step
        if has_anchor and reduced is not None:
            anchors[i].copy_(a_new.view(shape))
        if write_params:
            p.copy_((a_new + d if sent is not None else a_new).view(shape))
        if sent is not None:
            sents[i][2].copy_(d)
    return out


def flatten(tensors, out):
    return round_step(tensors, None, None, out, write_params=False, has_anchor=False)


def unflatten(flat, tensors):
    round_step(tensors, None, flat, None, has_anchor=False)


def delta_flatten(params, anchors, out):
    return round_step(params, anchors, None, out, write_params=False)


def merge(params, anchors, reduced, lr=1.0):
    round_step(params, anchors, reduced, None, lr=lr)
