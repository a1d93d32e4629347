"""round_step on an 8-bit wire (docs/round-protocol.md, "8-bit wires") against the
plain-PyTorch reference (reference.round_step with an 8-bit ``out``: the float32 rule,
then reference.quantize_blocks): awkward sizes whose codec blocks span tensors, every
parameter/anchor dtype, both code dtypes, every option, the verdict, bad input."""

from __future__ import annotations

import itertools

import pytest
import torch

from hpsgd_ext import ops, reference as ref

from conftest import DEVICES
from helpers import PARAM_ANCHOR, assert_same, bitwise_equal, clone_all, rand_list

CODES = [torch.int8, torch.float8_e4m3fn]
BLOCK = ref.QUANT_BLOCK
# Codec blocks of 512 that start inside one tensor and end in another, tensors
# smaller than a block (several in one), empty tensors, a tail block that is short.
AWKWARD = [(3, 5), 0, 1, 700, (0, 4), 2 * BLOCK + 3, 7, 1, 3000, 13]
MOMENTUM = [None, (0.9, False), (0.9, True)]
TAIL = 5  # elements past the total that no call may touch


def numel(sizes):
    return sum(torch.Size(s if isinstance(s, tuple) else (s,)).numel() for s in sizes)


def nblocks(n):
    return (n + BLOCK - 1) // BLOCK


def make(sizes, p_dt, a_dt, code, device, seed, *, reduced, mom, sent):
    g = torch.Generator().manual_seed(seed)
    n = numel(sizes)
    ps = rand_list(sizes, p_dt, device, g)
    an = rand_list(sizes, a_dt, device, g)
    # The change p - a is O(1); rounds carry it pre-divided, reduced rounds are its mean.
    red = red_s = None
    if reduced:
        red, red_s = ref.quantize_blocks(torch.randn(n, generator=g) * 0.1, code)
        red = torch.cat([red.view(torch.uint8), torch.full((TAIL,), 0x55, dtype=torch.uint8)])
        red = red.view(code).to(device)
        red_s = torch.cat([red_s, torch.full((TAIL,), 7.0)]).to(device)
    out = torch.full((n + TAIL,), 0x55, dtype=torch.uint8, device=device).view(code)
    out_s = torch.full((nblocks(n) + TAIL,), float("nan"), device=device)
    ms = rand_list(sizes, a_dt, device, g, scale=0.1) if mom else None
    s = (torch.randn(n + TAIL, generator=g) * 0.01).to(device) if sent else None
    return [ps, an, red, red_s, out, out_s, ms, s]


def call(fn, args, kwargs):
    ps, an, red, red_s, out, out_s, ms, s = args
    c = [clone_all(ps), clone_all(an), red, red_s, out.clone(), out_s.clone(),
         None if ms is None else clone_all(ms), None if s is None else s.clone()]
    fn(c[0], c[1], red, c[4], momentum_buffers=c[6], sent=c[7], out_scales=c[5],
       reduced_scales=red_s, **kwargs)
    return c


def dq(codes, scales, n):
    return ref.dequantize_blocks(codes[:n], scales[:nblocks(n)])


def check_against_reference(k, r, n, *, exact):
    """Lists within the float tolerance (they do not depend on the codec); the codes
    bit for bit when the change itself is exact (no `sent`: no FMA in the rule), else
    within one code step where the kernel's and torch's float32 roundings differ."""
    for xs, ys in zip(k[:2] + [k[6]], r[:2] + [r[6]]):
        for x, y in zip(xs or [], ys or []):
            assert_same(x, y)
    ks, rs = k[5][:nblocks(n)], r[5][:nblocks(n)]
    if exact:
        assert bitwise_equal(k[4][:n], r[4][:n]) and bitwise_equal(ks, rs)
    else:
        torch.testing.assert_close(ks, rs, rtol=1e-5, atol=0)
        kd, rd = dq(k[4], k[5], n), dq(r[4], r[5], n)
        step = rs.repeat_interleave(BLOCK)[:n]
        assert ((kd - rd).abs() <= step * 1.01 + 1e-30).all()
        assert (k[4][:n].view(torch.uint8) != r[4][:n].view(torch.uint8)).float().mean() < 0.01


def verdict_tensor(v, device):
    return None if v is None else torch.tensor([v], dtype=torch.float32, device=device)


def is_discard(v):
    return v is not None and not (v != 0.0 and v == v)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("code", CODES, ids=str)
@pytest.mark.parametrize("p_dt,a_dt", PARAM_ANCHOR, ids=lambda d: str(d).split(".")[-1])
@pytest.mark.parametrize("reduced,mom,sent,divisor,verdict", [
    (r, m, s, d, v) for r, m, s, d, v in itertools.product(
        [False, True], MOMENTUM, [False, True], [1, 3], [None, 1.0, 0.0, float("nan")])
    if (r or (m is None and v is None)) and (d == 3 or (m is None and v in (None, 0.0)))], ids=str)
def test_quantized_round_step_matches_reference(device, code, p_dt, a_dt, reduced, mom, sent,
                                                divisor, verdict):
    args = make(AWKWARD, p_dt, a_dt, code, device, 3, reduced=reduced, mom=mom, sent=sent)
    kw = dict(lr=0.7, divisor=divisor, verdict=verdict_tensor(verdict, device))
    if mom:
        kw.update(momentum=mom[0], nesterov=mom[1])
    k = call(ops.round_step, args, kw)
    r = call(ref.round_step, args, kw)
    n = numel(AWKWARD)
    check_against_reference(k, r, n, exact=not sent)
    # Nothing past the total, or past the last block's scale, is written.
    assert (k[4][n:].view(torch.uint8) == 0x55).all() and torch.isnan(k[5][nblocks(n):]).all()
    if sent:
        # Error feedback: `sent` is exactly what the codes carry; its tail is untouched.
        assert bitwise_equal(k[7][:n], dq(k[4], k[5], n))
        assert bitwise_equal(k[7][n:], args[7][n:])
    if is_discard(verdict):
        for x, x0 in zip(k[1] + (k[6] or []), args[1] + (args[6] or [])):
            assert bitwise_equal(x, x0)
        assert (k[4][:n].view(torch.uint8) == 0).all() and (k[5][:nblocks(n)] == 0).all()
        if sent:
            assert (k[7][:n] == 0).all()


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("code", CODES, ids=str)
def test_codes_are_the_reference_codec_bit_for_bit(device, code):
    """With params - anchors exactly representable (no `sent`, D = 1), the change is exact,
    so codes and scales must equal quantize_blocks' bit for bit, blocks spanning tensors."""
    g = torch.Generator().manual_seed(5)
    sizes = [1, 511, 2, 1030, 0, 300]
    ps = rand_list(sizes, torch.float32, device, g)
    an = [torch.zeros_like(p) for p in ps]
    n = numel(sizes)
    out = torch.empty(n, dtype=code, device=device)
    sc = torch.empty(nblocks(n), device=device)
    codes, scale = ref.quantize_blocks(torch.cat([p.reshape(-1) for p in ps]), code)
    ops.round_step(ps, an, None, out, out_scales=sc)  # "reset": the replica becomes the anchor
    assert bitwise_equal(out, codes) and bitwise_equal(sc, scale)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("code", CODES, ids=str)
def test_residual_is_sent_next_round(device, code):
    """Error feedback in one rank's terms: with the replica unchanged, the second round
    carries what the first rounded away, so the two rounds' sum is the change to within
    the second round's (much finer) quantum."""
    g = torch.Generator().manual_seed(7)
    sizes = [700, 3, 2000]
    ps = rand_list(sizes, torch.float32, device, g)
    an = rand_list(sizes, torch.float32, device, g)
    n = numel(sizes)
    want = torch.cat([(p - a).reshape(-1) for p, a in zip(ps, an)]) / 4
    sent = torch.zeros(n, device=device)
    carried = []
    for _ in range(2):
        out = torch.empty(n, dtype=code, device=device)
        sc = torch.empty(nblocks(n), device=device)
        ops.round_step(ps, an, None, out, sent=sent, divisor=4, out_scales=sc)
        carried.append(dq(out, sc, n))
        assert bitwise_equal(sent, carried[-1])
    err1 = (carried[0] - want).abs().max()
    err2 = (carried[0] + carried[1] - want).abs().max()
    assert err1 > 0 and err2 < err1 / 10


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("code", CODES, ids=str)
def test_non_finite_change_poisons_its_scale_not_its_codes(device, code):
    ps = [torch.ones(600, device=device), torch.ones(1000, device=device)]
    ps[1][900] = float("inf")
    ps[0][3] = float("nan")
    an = [torch.zeros_like(p) for p in ps]
    out = torch.empty(1600, dtype=code, device=device)
    sc = torch.empty(4, device=device)
    ops.round_step(ps, an, None, out, out_scales=sc)
    assert torch.isnan(sc[0]) and torch.isinf(sc[2]) and sc[1] == sc[3] == 1.0 / ref._QMAX[code]
    assert (out[:512].view(torch.uint8) == 0).all() and (out[1024:1536].view(torch.uint8) == 0).all()


def _bad(device, **over):
    g = torch.Generator().manual_seed(1)
    kw = dict(params=rand_list([5, 600], torch.float32, device, g),
              anchors=rand_list([5, 600], torch.float32, device, g),
              reduced=torch.zeros(605, dtype=torch.int8, device=device),
              out=torch.zeros(605, dtype=torch.int8, device=device),
              sent=torch.zeros(605, device=device),
              out_scales=torch.zeros(2, device=device),
              reduced_scales=torch.ones(2, device=device))
    kw.update(over)
    return kw


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("over,exc,msg", [
    (dict(out_scales=None), ValueError, r"out_scales is None with an 8-bit out; expected a float32 tensor of at least 2"),
    (dict(reduced_scales=None), ValueError, r"reduced_scales is None with an 8-bit reduced"),
    (dict(out_scales="short"), ValueError, r"out_scales has 1 elements; expected at least 2"),
    (dict(out_scales="f16"), TypeError, r"out_scales has dtype Half; expected float32"),
    (dict(out_scales="f64"), TypeError, r"out_scales has dtype Double; expected float32"),
    (dict(reduced=None), ValueError, r"reduced_scales is given but reduced is None; expected reduced_scales only"),
    (dict(sent="bf16"), TypeError, r"sent has dtype BFloat16 with an 8-bit out; expected float32"),
    (dict(reduced="fp8"), TypeError, r"reduced has dtype Float8_e4m3fn but out has Char"),
    (dict(out="f32", reduced="f32"), ValueError, r"out_scales is given but out has dtype Float"),
    (dict(out="short"), ValueError, r"out has 600 elements; expected at least 605"),
    (dict(out_scales="alias"), ValueError, r"out_scales.*overlap|overlap.*out_scales"),
], ids=lambda x: x if isinstance(x, str) else None)
def test_bad_input_names_the_argument_and_writes_nothing(device, over, exc, msg):
    kw = _bad(device)
    conv = {"short": lambda t: t[:-1] if t.numel() != 605 else t[:600],
            "f16": lambda t: t.half(), "bf16": lambda t: t.bfloat16(), "f64": lambda t: t.double(),
            "fp8": lambda t: t.view(torch.float8_e4m3fn), "f32": lambda t: t.float(),
            "alias": lambda t: kw["sent"][:2]}
    for k, v in over.items():
        kw[k] = conv[v](kw[k]) if isinstance(v, str) else v
    before = {k: (v.clone() if torch.is_tensor(v) else clone_all(v)) for k, v in kw.items()
              if v is not None}
    with pytest.raises(exc, match=msg):
        ops.round_step(**kw)
    for k, v in before.items():
        for x, y in zip(v if isinstance(v, list) else [v], kw[k] if isinstance(kw[k], list) else [kw[k]]):
            assert bitwise_equal(x, y), k


@pytest.mark.parametrize("device", DEVICES)
def test_opcheck(device):
    g = torch.Generator().manual_seed(0)

    def r(*s):
        return torch.randn(*s, generator=g).to(device)

    for code in CODES:
        red, red_s = ref.quantize_blocks(r(600) * 0.1, code)
        # The schema check compares mutated tensors with an op torch lacks for
        # float8_e4m3fn ("mul_cpu_reduced_float"); int8 runs it, both run the rest.
        utils = [u for u in torch.library._OPCHECK_DEFAULT_UTILS
                 if code == torch.int8 or u != "test_schema"]
        for verdict in (1.0, 0.0):
            torch.library.opcheck(
                torch.ops.hpsgd.round_step.default,
                ([r(3, 4), r(588)], [r(3, 4), r(588)], red, torch.empty(600, dtype=code, device=device)),
                {"lr": 0.7, "momentum_buffers": [r(3, 4), r(588)], "momentum": 0.9, "sent": r(600),
                 "divisor": 4, "verdict": torch.tensor([verdict], device=device),
                 "out_scales": torch.empty(2, device=device), "reduced_scales": red_s},
                test_utils=utils)
