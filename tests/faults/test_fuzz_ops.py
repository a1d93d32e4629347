"""Fuzz the public ops: shapes, dtypes, lengths, scalars, None or junk where a tensor is
expected. Every call either matches the reference or raises a clear Python exception
(ValueError/TypeError/RuntimeError with a message); never a crash of the process, and a
failed call modifies nothing."""

from __future__ import annotations

import collections
import math

import pytest
import torch
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from hpsgd_ext import ops, reference as ref

from helpers import assert_same, assert_untouched, snapshot_tensors

DTYPES = [torch.float32, torch.bfloat16, torch.float16, torch.float64, torch.int32, torch.bool]
FLOATS = [torch.float32, torch.bfloat16, torch.float16]
FLOAT_OK = set(FLOATS)
BAD_DTYPES = [torch.float64, torch.int32, torch.bool]

shapes = st.lists(st.integers(0, 6), min_size=0, max_size=3).map(tuple)
scalars = st.one_of(st.floats(-3, 3), st.sampled_from([0.0, 1.0, float("nan"), float("inf"), -0.5]))


def tensor(shape, dtype, seed, scale=1.0):
    g = torch.Generator().manual_seed(seed)
    t = torch.randn(shape, generator=g) if shape else torch.randn((), generator=g)
    return (t * scale).to(dtype)


# round_step: most drawn calls are valid (every option drawn: reduced, sent, momentum,
# nesterov, divisor, verdict, mixed dtypes); the others are a valid call with exactly
# one deliberate defect, each of which the contract rejects.
DEFECTS = ["anchors_short", "param_none", "reduced_junk", "bad_dtype", "mixed_flat_dtype",
           "anchor_dtype", "flat_short", "momentum_short", "lr_nonfinite", "momentum_bad",
           "momentum_without_buffers", "divisor_bad", "verdict_without_reduced",
           "verdict_dtype", "verdict_numel", "alias", "noncontiguous"]
VERDICTS = [None, 1.0, -2.5, float("inf"), 0.0, -0.0, float("nan")]
COUNTS: collections.Counter = collections.Counter()


@st.composite
def valid_calls(draw):
    n = draw(st.integers(0, 4))
    shp = [draw(shapes) for _ in range(n)]
    p_dt = draw(st.sampled_from(FLOATS))
    a_dt = draw(st.sampled_from([p_dt, torch.float32]))
    f_dt = draw(st.sampled_from(FLOATS))
    seed = draw(st.integers(0, 2**16))
    total = sum(math.prod(s) for s in shp)
    flat_len = lambda: total + draw(st.integers(0, 3))  # noqa: E731
    divisor = draw(st.one_of(st.just(1), st.integers(2, 8), st.just(1024)))
    params = [tensor(s, p_dt, seed + i) for i, s in enumerate(shp)]
    anchors = [tensor(s, a_dt, seed + 100 + i) for i, s in enumerate(shp)]
    reduced = tensor((flat_len(),), f_dt, seed + 7, 0.1) if draw(st.integers(0, 4)) else None
    out = torch.full((flat_len(),), float("nan")).to(f_dt)
    # sent is in wire units (a change divided by the divisor)
    sent = tensor((flat_len(),), f_dt, seed + 9, 0.5 / divisor) if draw(st.booleans()) else None
    mom = draw(st.sampled_from([None, "momentum", "nesterov"]))
    moms = None if mom is None else [tensor(s, a_dt, seed + 200 + i, 0.1) for i, s in enumerate(shp)]
    v = draw(st.sampled_from(VERDICTS)) if reduced is not None else None
    return dict(params=params, anchors=anchors, reduced=reduced, out=out, lr=draw(st.floats(-3, 3)),
                momentum_buffers=moms, momentum=draw(st.floats(0, 1.5)) if moms is not None else 0.0,
                nesterov=mom == "nesterov", sent=sent, divisor=divisor,
                verdict=None if v is None else torch.tensor([v], dtype=torch.float32))


def _defects(kw):
    """The defects that certainly make this valid call invalid."""
    n, total = len(kw["params"]), sum(p.numel() for p in kw["params"])
    has = {k: kw[k] is not None for k in ("reduced", "sent", "momentum_buffers", "verdict")}
    ok = {"reduced_junk", "bad_dtype", "anchor_dtype", "lr_nonfinite", "momentum_bad",
          "divisor_bad", "verdict_dtype", "verdict_numel", "mixed_flat_dtype"}
    if n:
        ok |= {"anchors_short", "param_none"}
    if total:
        ok |= {"flat_short", "alias"}
    if n and has["momentum_buffers"]:
        ok.add("momentum_short")
    if not has["momentum_buffers"]:
        ok.add("momentum_without_buffers")
    if has["reduced"]:
        ok.add("verdict_without_reduced")
    if kw["out"].numel() >= 2:
        ok.add("noncontiguous")
    if not n:  # no list tensor: a wrong list dtype would go unnoticed
        ok.discard("anchor_dtype")
    return [d for d in DEFECTS if d in ok]


@st.composite
def calls(draw, defect=None):
    """(kwargs, defect): defect None for a valid call. A given defect is forced (the
    valid call is drawn until that defect applies to it)."""
    if defect is not None:
        kw = draw(valid_calls().filter(lambda kw: defect in _defects(kw)))
    else:
        kw = draw(valid_calls())
        if draw(st.integers(0, 9)) < 6:  # hypothesis leans to 0: about 3 in 4 valid
            return kw, None
        defect = draw(st.sampled_from(_defects(kw)))
    n, f_dt = len(kw["params"]), kw["out"].dtype
    pick = lambda k: draw(st.integers(0, k - 1))  # noqa: E731
    if defect == "anchors_short":
        kw["anchors"] = kw["anchors"][:pick(n)]
    elif defect == "param_none":
        kw["params"][pick(n)] = None
    elif defect == "reduced_junk":
        kw["reduced"] = "junk"
    elif defect == "bad_dtype":
        where = [w for w in ("params", "anchors", "momentum_buffers") if n and kw[w] is not None]
        where += [w for w in ("out", "reduced", "sent") if kw[w] is not None]
        w, dt = draw(st.sampled_from(where)), draw(st.sampled_from(BAD_DTYPES))
        if isinstance(kw[w], list):
            i = pick(n)
            kw[w][i] = kw[w][i].to(dt)
        else:
            kw[w] = kw[w].to(dt)
    elif defect == "mixed_flat_dtype":
        w = draw(st.sampled_from([w for w in ("reduced", "sent") if kw[w] is not None] or ["new_sent"]))
        other = draw(st.sampled_from([d for d in FLOATS if d != f_dt]))
        if w == "new_sent":
            kw["sent"] = torch.zeros(kw["out"].numel(), dtype=other)
        else:
            kw[w] = kw[w].to(other)
    elif defect == "anchor_dtype":
        p_dt = kw["params"][0].dtype
        bad = draw(st.sampled_from([d for d in FLOATS if d not in (p_dt, torch.float32)]))
        kw["anchors"] = [a.to(bad) for a in kw["anchors"]]
        if kw["momentum_buffers"] is not None:
            kw["momentum_buffers"] = [m.to(bad) for m in kw["momentum_buffers"]]
    elif defect == "flat_short":
        total = sum(p.numel() for p in kw["params"])
        w = draw(st.sampled_from([w for w in ("out", "reduced", "sent") if kw[w] is not None]))
        kw[w] = kw[w][:total - 1 - pick(total)]
    elif defect == "momentum_short":
        kw["momentum_buffers"] = kw["momentum_buffers"][:pick(n)]
    elif defect == "lr_nonfinite":
        kw["lr"] = draw(st.sampled_from([float("nan"), float("inf"), -float("inf")]))
    elif defect == "momentum_bad":
        kw["momentum"] = draw(st.sampled_from([-0.5, -1e-30, float("nan"), float("inf")]))
    elif defect == "momentum_without_buffers":
        if draw(st.booleans()):
            kw["nesterov"] = True
        else:
            kw["momentum"] = draw(st.floats(1e-6, 1.5))
    elif defect == "divisor_bad":
        kw["divisor"] = draw(st.sampled_from([0, -1, -1024]))
    elif defect == "verdict_without_reduced":
        kw["reduced"], kw["verdict"] = None, torch.ones(1)
    elif defect == "verdict_dtype":
        kw["reduced"] = kw["reduced"] if kw["reduced"] is not None else torch.zeros(kw["out"].numel(), dtype=f_dt)
        kw["verdict"] = torch.ones(1, dtype=draw(st.sampled_from(
            [torch.float64, torch.float16, torch.bfloat16, torch.int32, torch.bool])))
    elif defect == "verdict_numel":
        kw["reduced"] = kw["reduced"] if kw["reduced"] is not None else torch.zeros(kw["out"].numel(), dtype=f_dt)
        kw["verdict"] = torch.ones(draw(st.sampled_from([0, 2, 3])))
    elif defect == "alias":
        how = draw(st.sampled_from(["out_is_reduced", "sent_is_out", "verdict_in_out"]))
        if how == "out_is_reduced":
            kw["reduced"] = kw["out"]
            kw["verdict"] = None
        elif how == "sent_is_out":
            kw["sent"] = kw["out"]
        else:
            kw["out"] = kw["out"].float()
            for w in ("reduced", "sent"):
                if kw[w] is not None:
                    kw[w] = kw[w].float()
            if kw["reduced"] is None:
                kw["reduced"] = torch.zeros(kw["out"].numel())
            # inside the part of out the call writes (its tail is never touched)
            kw["verdict"] = kw["out"][pick(sum(p.numel() for p in kw["params"])):][:1]
    elif defect == "noncontiguous":
        kw["out"] = torch.stack([kw["out"], kw["out"]], 1)[:, 0]
    return kw, defect


def _check_call(kw, defect):
    """Valid (defect None): no error, and equal to the reference. Invalid: a clear
    ValueError/TypeError and every argument untouched."""
    COUNTS["examples"] += 1
    snap = snapshot_tensors(kw)
    try:
        ops.round_step(**kw)
    except (ValueError, TypeError, RuntimeError) as e:
        assert str(e), "an error must say what is wrong"
        assert defect is not None, f"a valid call was refused: {e}"
        # The C++ checks raise ValueError/TypeError; only the dispatcher's own argument
        # parsing (None or a string where a tensor is expected) may say RuntimeError.
        assert isinstance(e, (ValueError, TypeError)) or defect in ("param_none", "reduced_junk"), e
        assert_untouched(kw, snap)
        COUNTS["rejected"] += 1
        COUNTS[f"rejected: {defect}"] += 1
        return
    assert defect is None, f"an invalid call was accepted ({defect})"
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
    COUNTS["valid"] += 1
    for k in ("reduced", "sent", "momentum_buffers", "verdict"):
        COUNTS[f"valid with {k}"] += kw[k] is not None
    COUNTS["valid with divisor > 1"] += kw["divisor"] > 1
    v = None if kw["verdict"] is None else kw["verdict"].item()
    COUNTS["valid discarded"] += v is not None and (v == 0.0 or math.isnan(v))


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(calls())
def _round_step_examples(case):
    kw, defect = case
    event("valid" if defect is None else f"invalid: {defect}")
    _check_call(kw, defect)


def test_round_step_fuzz():
    """Valid calls equal the reference, invalid ones raise and modify nothing; and the
    strategy really does exercise the valid path with every option."""
    COUNTS.clear()
    _round_step_examples()
    n = COUNTS["examples"]
    assert COUNTS["valid"] + COUNTS["rejected"] == n
    assert COUNTS["valid"] > 0.5 * n, dict(COUNTS)
    assert COUNTS["rejected"] > 0.1 * n, dict(COUNTS)
    for k in ("reduced", "sent", "momentum_buffers", "verdict"):
        assert COUNTS[f"valid with {k}"] > 0.1 * n, dict(COUNTS)
    assert COUNTS["valid with divisor > 1"] > 0.1 * n, dict(COUNTS)
    assert COUNTS["valid discarded"] > 0.02 * n, dict(COUNTS)


@pytest.mark.parametrize("defect", DEFECTS)
def test_round_step_each_defect_rejected(defect):
    """Every kind of defect, on varied valid calls (the mixed fuzz above draws some
    kinds rarely): each is refused with every argument left untouched."""
    @settings(max_examples=12, deadline=None,
              suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much])
    @given(calls(defect))
    def run(case):
        _check_call(*case)

    COUNTS.clear()
    run()
    assert COUNTS[f"rejected: {defect}"] == COUNTS["examples"] > 0


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
