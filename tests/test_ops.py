"""Every fused op against the pure-PyTorch reference (hpsgd_ext.reference) on random
data: awkward sizes, every accepted dtype combination, every option."""

from __future__ import annotations

import itertools

import pytest
import torch

from hpsgd_ext import ops, reference as ref

from conftest import DEVICES
from helpers import (FLOATS, PARAM_ANCHOR, assert_same, bitwise_equal, clone_all, poisoned,
                     rand_list)

# Sizes that cross the CPU chunk (65536) and CUDA chunk (8192) boundaries, odd
# lengths that misalign every later segment, empty tensors between others.
AWKWARD = [(3, 5), 0, 1, 8192 * 2 + 5, (0, 4), 65536 + 3, 7, 1]
MOMENTUM = [None, (0.9, False), (0.9, True)]


def sizes_numel(sizes):
    return sum(torch.Size(s if isinstance(s, tuple) else (s,)).numel() for s in sizes)


def make_round(sizes, p_dt, a_dt, f_dt, device, seed, *, reduced=True, mom=None,
               sent=False, tail=3):
    g = torch.Generator().manual_seed(seed)
    n = sizes_numel(sizes)
    ps = rand_list(sizes, p_dt, device, g)
    anchors = rand_list(sizes, a_dt, device, g)
    red = (torch.randn(n + tail, generator=g) * 0.1).to(f_dt).to(device) if reduced else None
    out = poisoned(n, f_dt, device, tail=tail)
    ms = rand_list(sizes, a_dt, device, g, scale=0.1) if mom else None
    s = (torch.randn(n + tail, generator=g) * 0.01).to(f_dt).to(device) if sent else None
    return ps, anchors, red, out, ms, s


def run_both(args, kwargs):
    """(kernel results, reference results) from identical copies of the inputs."""
    ps, anchors, red, out, ms, s = args
    k = (clone_all(ps), clone_all(anchors), red, out.clone(),
         None if ms is None else clone_all(ms), None if s is None else s.clone())
    r = (clone_all(ps), clone_all(anchors), red, out.clone(),
         None if ms is None else clone_all(ms), None if s is None else s.clone())
    ops.round_step(k[0], k[1], k[2], k[3], momentum_buffers=k[4], sent=k[5], **kwargs)
    ref.round_step(r[0], r[1], r[2], r[3], momentum_buffers=r[4], sent=r[5], **kwargs)
    return k, r


def check_all(k, r):
    for xs, ys in zip(k, r):
        if xs is None:
            continue
        for x, y in zip(xs if isinstance(xs, list) else [xs], ys if isinstance(ys, list) else [ys]):
            assert_same(x, y)


# (divisor, verdict): the undivided and a pre-divided wire; no verdict, a valid one
# and the two ways of saying "discard" (0 and NaN). A verdict needs `reduced`.
DIVISOR_VERDICT = [(d, v) for v in [None, 1.0, 0.0, float("nan")] for d in [1, 3]]


def verdict_tensor(v, device):
    return None if v is None else torch.tensor([v], dtype=torch.float32, device=device)


def is_discard(v):
    return v is not None and not (v != 0.0 and v == v)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("p_dt,a_dt", PARAM_ANCHOR, ids=lambda d: str(d).split(".")[-1])
@pytest.mark.parametrize("f_dt", FLOATS, ids=lambda d: "flat_" + str(d).split(".")[-1])
@pytest.mark.parametrize("reduced,mom,sent,divisor,verdict", [
    (r, m, s, d, v) for r, m, s, (d, v) in itertools.product(
        [False, True], MOMENTUM, [False, True], DIVISOR_VERDICT)
    if (r or m is None) and (r or v is None)], ids=str)
def test_round_step_matches_reference(device, p_dt, a_dt, f_dt, reduced, mom, sent, divisor, verdict):
    args = make_round(AWKWARD, p_dt, a_dt, f_dt, device, seed=1, reduced=reduced, mom=mom, sent=sent)
    kwargs = dict(lr=0.7, divisor=divisor, verdict=verdict_tensor(verdict, device))
    if mom:
        kwargs.update(momentum=mom[0], nesterov=mom[1])
    k, r = run_both(args, kwargs)
    check_all(k, r)
    n = sizes_numel(AWKWARD)
    # The flat tail beyond the total is never touched.
    assert torch.isnan(k[3][n:]).all()
    if sent:
        # keep-own-progress: sent holds exactly what was sent (in wire units).
        assert torch.equal(k[5][:n], k[3][:n])
        assert bitwise_equal(k[5][n:], args[5][n:])
    if is_discard(verdict):
        # Discarded: anchors and momenta bitwise untouched, p = a, nothing on the wire.
        for x, x0 in zip(k[1], args[1]):
            assert bitwise_equal(x, x0)
        for x, x0 in zip(k[4] or [], args[4] or []):
            assert bitwise_equal(x, x0)
        for p, a in zip(k[0], args[1]):
            assert bitwise_equal(p, a.to(p_dt))
        assert bitwise_equal(k[3][:n], torch.zeros(n, dtype=f_dt, device=device))
        if sent:
            assert bitwise_equal(k[5][:n], torch.zeros(n, dtype=f_dt, device=device))
    elif divisor == 1 and verdict is not None:
        # A valid verdict is the plain call, bit for bit.
        plain = dict(kwargs, verdict=None)
        k2, _ = run_both(args, plain)
        for xs, ys in zip(k, k2):
            for x, y in zip(xs if isinstance(xs, list) else [xs], ys if isinstance(ys, list) else [ys]):
                if x is not None:
                    assert bitwise_equal(x, y)


@pytest.mark.parametrize("f_dt", FLOATS, ids=lambda d: "flat_" + str(d).split(".")[-1])
@pytest.mark.parametrize("divisor", [1, 2, 8, 3, 2**40])
def test_divisor_is_an_exact_division_on_cpu(f_dt, divisor):
    """The CPU kernel multiplies by 1/D when D is a power of two (Pow2Divisor in
    csrc/rule.h) and divides otherwise: either way bit for bit torch's float32
    p - a - D*s and its quotient by D, subnormal quotients included (the CPU build does
    not contract, so each kernel operation is torch's, rounded once)."""
    g = torch.Generator().manual_seed(5)
    n = 4099
    a = torch.randn(n, generator=g)
    p = a + torch.randn(n, generator=g)
    s = (torch.randn(n, generator=g) * 0.01).to(f_dt)
    tiny = torch.arange(n) % 3 == 0  # d near the smallest normal: d / D is subnormal
    a[tiny] = 0.0
    p[tiny] = torch.randn(int(tiny.sum()), generator=g) * 1e-37
    s[tiny] = 0.0
    d = p - a - divisor * s.float()
    out = torch.empty(n, dtype=f_dt)
    pk, sk = p.clone(), s.clone()
    ops.round_step([pk], [a.clone()], None, out, sent=sk, divisor=divisor)
    assert (d[tiny] / divisor).abs().lt(torch.finfo(torch.float32).tiny).any() or divisor < 8
    assert bitwise_equal(out, (d / divisor).to(f_dt))
    assert bitwise_equal(sk, out)
    assert bitwise_equal(pk, a + d)


F32, BF16, F16 = torch.float32, torch.bfloat16, torch.float16


@pytest.mark.parametrize("p_dt,a_dt,f_dt", [(BF16, BF16, BF16), (F16, F16, F16), (F16, F32, F16),
                                            (F32, F32, F16), (BF16, BF16, F16), (F16, F16, BF16)],
                         ids=lambda d: str(d).split(".")[-1])
@pytest.mark.parametrize("divisor", [1, 3])
@pytest.mark.parametrize("momentum", [0.0, 0.9])
def test_16bit_step_rounds_once_on_cpu(p_dt, a_dt, f_dt, divisor, momentum):
    """The CPU kernel's 16-bit loops (bfloat16 two elements per word; float16 eight at a
    time through F16C): each stored value is the float32 rule rounded once to its
    stream's dtype, nearest even, bit for bit; NaN where the rule gives NaN (bfloat16:
    c10's 0x7FC0). Odd tensors put every later segment at an odd flat offset, and the
    last elements of a tensor take the loops' tails."""
    g = torch.Generator().manual_seed(7)
    sizes = [3, 4096, 1, 517]
    n = sum(sizes)
    ps = [torch.randn(k, generator=g).to(p_dt) for k in sizes]
    an = [torch.randn(k, generator=g).to(a_dt) for k in sizes]
    ms = [(torch.randn(k, generator=g) * 0.1).to(a_dt) for k in sizes] if momentum else None
    ps[1][5], an[3][0] = float("nan"), float("-inf")
    red = (torch.randn(n, generator=g) * 0.1).to(f_dt)
    sent = (torch.randn(n, generator=g) * 0.01).to(f_dt)
    lr = 0.7
    # The rule in float32 (csrc/rule.h), then one rounding per stored value.
    P, A, R, S = torch.cat(ps).float(), torch.cat(an).float(), red.float(), sent.float()
    d = P - A - divisor * S
    w = d / divisor
    if momentum:
        M = momentum * torch.cat(ms).float() + R
        a_new = A + lr * M
    else:
        a_new = A + lr * R
    want = {"out": (w, f_dt), "sent": (w, f_dt), "anchors": (a_new, a_dt), "params": (a_new + d, p_dt)}
    if momentum:
        want["momenta"] = (M, a_dt)
    kp, ka = clone_all(ps), clone_all(an)
    km = clone_all(ms) if momentum else None
    out, ks = torch.empty(n, dtype=f_dt), sent.clone()
    ops.round_step(kp, ka, red, out, lr=lr, momentum_buffers=km, momentum=momentum, sent=ks,
                   divisor=divisor)
    got = {"out": out, "sent": ks, "anchors": torch.cat(ka), "params": torch.cat(kp)}
    if momentum:
        got["momenta"] = torch.cat(km)
    for name, (value, dt) in want.items():
        nan = value.isnan()
        assert torch.equal(got[name].isnan(), nan), name
        assert bitwise_equal(got[name][~nan], value[~nan].to(dt)), name
        if dt == BF16:  # c10::BFloat16's NaN (torch's vectorised conversion gives 0xFFFF)
            assert (got[name][nan].view(torch.int16) == 0x7FC0).all(), name
    assert w.isnan().any() and a_new.isinf().any()


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("sizes", [
    [], [0], [1], [0, 1, 0], [17], [1000, 1, 3],
    # thousands of tensors in one call
    "many",
], ids=str)
def test_sizes(device, sizes):
    if sizes == "many":
        g = torch.Generator().manual_seed(3)
        sizes = torch.randint(0, 40, (3000,), generator=g).tolist()
    args = make_round(sizes, torch.float32, torch.float32, torch.bfloat16, device, seed=2,
                      mom=(0.5, False), sent=True)
    k, r = run_both(args, dict(lr=1.3, momentum=0.5))
    check_all(k, r)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dt", FLOATS, ids=str)
@pytest.mark.parametrize("f_dt", FLOATS, ids=str)
def test_flatten_unflatten_delta_merge(device, dt, f_dt):
    g = torch.Generator().manual_seed(4)
    sizes = [(2, 3), 0, 5, 8192 + 9, 1]
    n = sizes_numel(sizes)
    ts = rand_list(sizes, dt, device, g)
    anchors = rand_list(sizes, dt, device, g)

    out = ops.flatten(ts, poisoned(n, f_dt, device, tail=2))
    exp = ref.flatten(ts, poisoned(n, f_dt, device, tail=2))
    assert_same(out, exp)
    if f_dt == dt:  # a same-dtype flatten is a copy
        assert torch.equal(out[:n], torch.cat([t.reshape(-1) for t in ts]))

    targets = [torch.full_like(t, float("nan")) for t in ts]
    ops.unflatten(out, targets)
    for t, src in zip(targets, ts):
        assert_same(t, src.to(f_dt).to(dt))

    d = ops.delta_flatten(ts, anchors, poisoned(n, f_dt, device))
    d_ref = ref.delta_flatten(ts, anchors, poisoned(n, f_dt, device))
    assert_same(d, d_ref)

    red = torch.randn(n, generator=g).to(f_dt).to(device)
    kp, ka, rp, ra = clone_all(ts), clone_all(anchors), clone_all(ts), clone_all(anchors)
    ops.merge(kp, ka, red, lr=0.25)
    ref.merge(rp, ra, red, lr=0.25)
    for x, y in zip(kp + ka, rp + ra):
        assert_same(x, y)


@pytest.mark.parametrize("device", DEVICES)
def test_round_rule_semantics(device):
    """The documented rule, checked by hand on one tensor (not via the reference)."""
    p = torch.tensor([3.0, -1.0], device=device)
    a = torch.tensor([1.0, 1.0], device=device)
    r = torch.tensor([0.5, -0.5], device=device)
    s = torch.tensor([0.25, 0.0], device=device)
    m = torch.tensor([1.0, 2.0], device=device)
    out = torch.empty(2, device=device)
    ops.round_step([p], [a], r, out, lr=2.0, momentum_buffers=[m], momentum=0.5, sent=s)
    d = torch.tensor([3.0 - 1.0 - 0.25, -1.0 - 1.0 - 0.0], device=device)
    m_new = torch.tensor([0.5 * 1.0 + 0.5, 0.5 * 2.0 - 0.5], device=device)
    a_new = torch.tensor([1.0, 1.0], device=device) + 2.0 * m_new
    assert torch.equal(out, d)
    assert torch.equal(m, m_new)
    assert torch.equal(a, a_new)
    assert torch.equal(p, a_new + d)
    assert torch.equal(s, d)


@pytest.mark.parametrize("device", DEVICES)
def test_misaligned_views(device):
    """Tensors that start at odd addresses (views into a bigger buffer) and a flat
    buffer that starts at an odd offset: the vector path must fall back correctly."""
    g = torch.Generator().manual_seed(5)
    big = torch.randn(40000, generator=g).to(device)
    ps = [big[1:10001].view(100, 100), big[10003:10003 + 777]]
    anchors = [torch.randn(100, 100, generator=g).to(device),
               torch.randn(777, generator=g).to(device)]
    flat_store = poisoned(20000, torch.float32, device)
    out = flat_store[3:]
    red = torch.randn(20000, generator=g).to(device)[5:]
    sent = torch.randn(20000, generator=g).to(device)[1:]
    args = (ps, anchors, red, out, None, sent)
    k, r = run_both(args, dict(lr=0.9))
    check_all(k, r)


@pytest.mark.parametrize("device", DEVICES)
def test_round_rule_semantics_divisor(device):
    """The pre-divided wire, by hand: d = p - a - D*s; out = sent = d / D; p = a + d."""
    p = torch.tensor([3.0, -1.0], device=device)
    a = torch.tensor([1.0, 1.0], device=device)
    r = torch.tensor([0.5, -0.5], device=device)
    s = torch.tensor([0.25, 0.5], device=device)
    out = torch.empty(2, device=device)
    ops.round_step([p], [a], r, out, lr=2.0, sent=s, divisor=2,
                   verdict=torch.tensor([-3.0], device=device))
    d = torch.tensor([3.0 - 1.0 - 2 * 0.25, -1.0 - 1.0 - 2 * 0.5], device=device)
    a_new = torch.tensor([1.0 + 1.0, 1.0 - 1.0], device=device)
    assert torch.equal(out, d / 2)
    assert torch.equal(s, d / 2)
    assert torch.equal(a, a_new)
    assert torch.equal(p, a_new + d)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("v", [0.0, -0.0, float("nan")], ids=str)
def test_round_rule_semantics_discard(device, v):
    """A verdict of 0 or NaN, by hand: the round is not merged, the window is dropped."""
    p = torch.tensor([3.0, -1.0], device=device)
    a = torch.tensor([1.0, float("nan")], device=device)  # a NaN anchor is kept bit for bit
    m = torch.tensor([1.0, 2.0], device=device)
    r = torch.tensor([0.5, float("inf")], device=device)
    s = torch.tensor([0.25, 0.5], device=device)
    out = torch.full((2,), 7.0, device=device)
    a0, m0 = a.clone(), m.clone()
    ops.round_step([p], [a], r, out, lr=2.0, momentum_buffers=[m], momentum=0.5, sent=s,
                   divisor=4, verdict=torch.tensor([v], device=device))
    assert bitwise_equal(a, a0) and bitwise_equal(m, m0)
    assert bitwise_equal(p, a0)
    assert torch.equal(out, torch.zeros(2, device=device))
    assert torch.equal(s, torch.zeros(2, device=device))


@pytest.mark.parametrize("device", DEVICES)
def test_divisor_keeps_fp16_sum_finite(device):
    """Two ranks, each with a change of 40000, an fp16 wire: undivided, their SUM
    (80000) overflows fp16; with divisor=2 each sends 20000 and the sum is the mean."""
    outs = []
    for _ in range(2):
        p = [torch.full((5,), 40000.0, device=device)]
        a = [torch.zeros(5, device=device)]
        out = torch.empty(5, dtype=torch.float16, device=device)
        ops.round_step(p, a, None, out, divisor=2)
        assert torch.equal(out, torch.full((5,), 20000.0, dtype=torch.float16, device=device))
        outs.append(out)
    total = outs[0] + outs[1]  # what a SUM all-reduce over the two ranks computes
    assert torch.isfinite(total).all()
    assert torch.equal(total, torch.full((5,), 40000.0, dtype=torch.float16, device=device))
    undivided = torch.empty(5, dtype=torch.float16, device=device)
    ops.round_step([torch.full((5,), 40000.0, device=device)], [torch.zeros(5, device=device)],
                   None, undivided)
    assert torch.isinf(undivided + undivided).all()


def test_round_step_none_reduced_leaves_anchor():
    p, a = [torch.randn(5)], [torch.randn(5)]
    a0 = a[0].clone()
    ops.round_step(p, a, None, torch.empty(5))
    assert torch.equal(a[0], a0) and torch.equal(p[0], a0)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dt", [torch.bfloat16, torch.float16], ids=str)
def test_casts_are_bit_identical_to_torch(device, dt):
    """The kernels' own float32 <-> 16-bit conversions round exactly like torch's
    (nearest-even), on ties, subnormals, overflow, infinities and NaN."""
    g = torch.Generator().manual_seed(7)
    special = torch.tensor([0.0, -0.0, float("inf"), float("-inf"), float("nan"), 1e-40, -1e-45,
                            65504.0, 65520.0, 1e30, 3.0e38, 1.0 + 2**-8, 1.0 + 3 * 2**-8,
                            1.0 + 2**-11, 1.0 + 3 * 2**-11])
    # every bit pattern near the rounding boundaries of random values
    bits = torch.randint(-2**31, 2**31 - 1, (20000,), generator=g, dtype=torch.int64).to(torch.int32)
    x = torch.cat([special, bits.view(torch.float32), torch.randn(20003, generator=g)]).to(device)
    out = torch.empty(x.numel(), dtype=dt, device=device)
    ops.flatten([x], out)
    exp = x.to(dt)
    same = (out.view(torch.int16) == exp.view(torch.int16)) | (torch.isnan(out) & torch.isnan(exp))
    assert same.all(), x[~same][:5]
    back = torch.empty(x.numel(), dtype=torch.float32, device=device)
    ops.flatten([out], back)
    assert torch.equal(back.nan_to_num(1.5), out.float().nan_to_num(1.5))
