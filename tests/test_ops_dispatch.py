"""How the ops reach their kernels. They have no derivative and are never
differentiated through, so each has a fallthrough at the Autograd key
(csrc/ops.cpp): a call goes straight to the device's kernel, unboxed, instead of
through torch's boxed autograd fallback (which, for round_step, put every tensor of
every list into an IValue and back on every call; docs/kernel-notes.md, "Host cost
of a cached call"). What a caller observes must stay what the fallback gave."""

from __future__ import annotations

import pytest
import torch

import hpsgd_ext  # noqa: F401  (registers the ops)
from hpsgd_ext import ops, reference as ref

# Every op the library defines, read from the dispatcher: an op added to
# csrc/ops.cpp's schemas but not to its fallthrough list fails here.
OPS = sorted(n for n in torch._C._dispatch_get_all_op_names() if n.startswith("hpsgd::"))


def test_the_op_list_is_read():
    assert "hpsgd::round_step" in OPS and len(OPS) >= 8


@pytest.mark.parametrize("name", OPS)
def test_every_op_falls_through_autograd(name):
    table = torch._C._dispatch_dump_table(name)
    for key in ("AutogradCPU", "AutogradCUDA"):
        line = next(l for l in table.splitlines() if l.startswith(key + ":"))
        assert "fallthrough" in line and "ops.cpp" in line, line


def test_round_step_on_leaves_that_require_grad():
    # Grad mode on, leaves requiring grad: as with torch's fallback, no error, no
    # grad_fn, and the values the reference gives.
    g = torch.Generator().manual_seed(0)
    shapes = [(3, 5), (7,)]
    params = [torch.randn(s, generator=g).requires_grad_() for s in shapes]
    anchors = [torch.randn(s, generator=g) for s in shapes]
    n = sum(p.numel() for p in params)
    reduced = torch.randn(n, generator=g)
    want_p = [p.detach().clone() for p in params]
    want_a = [a.clone() for a in anchors]
    want_out = torch.empty(n)
    ref.round_step(want_p, want_a, reduced, want_out, lr=0.5)
    out = torch.empty(n)
    assert torch.is_grad_enabled()
    ops.round_step(params, anchors, reduced, out, lr=0.5)
    for p, w in zip(params, want_p):
        assert p.requires_grad and p.grad_fn is None and p.is_leaf
        assert torch.equal(p.detach(), w)
    for a, w in zip(anchors, want_a):
        assert torch.equal(a, w)
    assert torch.equal(out, want_out)
