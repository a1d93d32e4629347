"""Fuzz the public ops: shapes, dtypes, lengths, scalars, None or junk where a tensor is
expected. Every call either matches the reference or raises a clear Python exception
(ValueError/TypeError/RuntimeError with a message); never a crash of the process, and a
failed call modifies nothing."""

from __future__ import annotations

import math

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from hpsgd_ext import ops, reference as ref

from helpers import assert_same, assert_untouched, snapshot_tensors

DTYPES = [torch.float32, torch.bfloat16, torch.float16, torch.float64, torch.int32, torch.bool]
FLOAT_OK = {torch.float32, torch.bfloat16, torch.float16}

shapes = st.lists(st.integers(0, 6), min_size=0, max_size=3).map(tuple)
scalars = st.one_of(st.floats(-3, 3), st.sampled_from([0.0, 1.0, float("nan"), float("inf"), -0.5]))


def tensor(shape, dtype, seed):
    g = torch.Generator().manual_seed(seed)
    t = torch.randn(shape, generator=g) if shape else torch.randn((), generator=g)
    return t.to(dtype)


@st.composite
def calls(draw):
    n = draw(st.integers(0, 4))
    shp = [draw(shapes) for _ in range(n)]
    p_dt = draw(st.sampled_from(DTYPES))
    a_dt = draw(st.sampled_from(DTYPES + [None]))  # None: same as params
    f_dt = draw(st.sampled_from(DTYPES))
    seed = draw(st.integers(0, 2**16))
    params = [tensor(s, p_dt, seed + i) for i, s in enumerate(shp)]
    anchors = [tensor(s, a_dt or p_dt, seed + 100 + i) for i, s in enumerate(shp)]
    if n and draw(st.booleans()) and draw(st.booleans()):
        anchors = anchors[: draw(st.integers(0, n - 1))]          # wrong length
    if n and draw(st.integers(0, 9)) == 0:
        params[draw(st.integers(0, n - 1))] = None                # None where a tensor is expected
    total = sum(math.prod(s) for s in shp)
    flat_len = lambda: max(0, total + draw(st.integers(-2, 3)))  # noqa: E731
    reduced = draw(st.sampled_from(["none", "tensor", "junk"]))
    reduced = None if reduced == "none" else ("junk" if reduced == "junk" else tensor((flat_len(),), f_dt, seed + 7))
    out = tensor((flat_len(),), f_dt, seed + 8)
    sent = tensor((flat_len(),), f_dt, seed + 9) if draw(st.booleans()) else None
    mom = draw(st.sampled_from([None, "ok", "short"]))
    moms = None if mom is None else [tensor(s, a_dt or p_dt, seed + 200 + i) for i, s in enumerate(shp)]
    if mom == "short" and moms:
        moms = moms[:-1]
    return dict(params=params, anchors=anchors, reduced=reduced, out=out, lr=draw(scalars),
                momentum_buffers=moms, momentum=abs(draw(scalars)) if moms is not None else 0.0,
                nesterov=draw(st.booleans()) if moms is not None else False, sent=sent)


def _valid(kw) -> bool:
    """What the documented contract accepts (the fuzz oracle for 'must succeed')."""
    ps, an = kw["params"], kw["anchors"]
    if any(p is None for p in ps) or len(an) != len(ps) or isinstance(kw["reduced"], str):
        return False
    if kw["momentum_buffers"] is not None and len(kw["momentum_buffers"]) != len(ps):
        return False
    if not (math.isfinite(kw["lr"]) and math.isfinite(kw["momentum"])):
        return False
    flats = [t for t in (kw["out"], kw["reduced"], kw["sent"]) if t is not None]
    total = sum(p.numel() for p in ps)
    if any(t.dtype not in FLOAT_OK or t.numel() < total for t in flats) or len({t.dtype for t in flats}) > 1:
        return False
    if ps:
        pdt, adt = ps[0].dtype, an[0].dtype
        if pdt not in FLOAT_OK or adt not in (pdt, torch.float32):
            return False
    return True


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(calls())
def test_round_step_fuzz(kw):
    snap = snapshot_tensors(kw)
    try:
        ops.round_step(**kw)
    except (ValueError, TypeError, RuntimeError) as e:
        assert str(e), "an error must say what is wrong"
        assert not _valid(kw), f"a valid call was refused: {e}"
        assert_untouched(kw, snap)
        return
    assert _valid(kw), "an invalid call was accepted"
    # The same call on the snapshot, through the reference: the same answer.
    it = iter(snap)
    rebuilt = {}
    for k, v in kw.items():
        if isinstance(v, list):
            rebuilt[k] = [next(it) for t in v]
        elif isinstance(v, torch.Tensor):
            rebuilt[k] = next(it)
        else:
            rebuilt[k] = v
    ref.round_step(**rebuilt)
    for a, b in zip(snapshot_tensors(kw), snapshot_tensors(rebuilt)):
        assert_same(a, b)


@settings(max_examples=150, deadline=None)
@given(st.lists(shapes, max_size=4), st.sampled_from(DTYPES), st.sampled_from(DTYPES),
       st.integers(-2, 2), st.integers(0, 1000))
def test_flatten_unflatten_fuzz(shp, dt, f_dt, slack, seed):
    ts = [tensor(s, dt, seed + i) for i, s in enumerate(shp)]
    total = sum(t.numel() for t in ts)
    flat = torch.full((max(0, total + slack),), 7.0).to(f_dt)
    ok = (not ts or dt in FLOAT_OK) and f_dt in FLOAT_OK and flat.numel() >= total
    try:
        ops.flatten(ts, flat)
    except (ValueError, TypeError) as e:
        assert not ok and str(e)
        return
    assert ok
    if ts:
        assert torch.equal(flat[:total].float(), torch.cat([t.reshape(-1) for t in ts]).to(f_dt).float())
    back = [torch.empty_like(t) for t in ts]
    ops.unflatten(flat, back)
    for b, t in zip(back, ts):
        assert torch.equal(b, t.to(f_dt).to(dt))


@pytest.mark.parametrize("junk", [None, 3, "x", [1.0], object()])
def test_junk_arguments_raise(junk):
    p, a = [torch.randn(3)], [torch.randn(3)]
    with pytest.raises((TypeError, RuntimeError)):
        ops.round_step(p, a, None, junk)
    with pytest.raises((TypeError, RuntimeError)):
        ops.flatten(junk, torch.empty(3))
