"""hpsgd.quantized_shard_sum, the 8-bit reduction's owner step (docs/round-protocol.md,
"8-bit wires"), bit for bit against hpsgd_ext.reference.quantized_shard_sum on each
device, through torch.library.opcheck, and its argument checks."""

from __future__ import annotations

import pytest
import torch

from hpsgd_ext import ops
from hpsgd_ext.reference import quantize_blocks, quantized_shard_sum

from conftest import DEVICES

DTYPES = [torch.int8, torch.float8_e4m3fn]


def _sources(sources, m, dtype, seed, bad=None):
    """``sources`` shards of ``m`` elements quantised one by one, concatenated."""
    g = torch.Generator().manual_seed(seed)
    cs, ss = [], []
    for s in range(sources):
        x = torch.randn(m, generator=g) * torch.logspace(-3, 3, m) * (s + 1)
        if m > 600:
            x[512:1024] = 0.0
        if bad is not None and s == sources - 1:
            x[bad] = float("nan") if bad % 2 else float("inf")
        c, sc = quantize_blocks(x, dtype)
        cs.append(c)
        ss.append(sc)
    return torch.cat(cs), torch.cat(ss)


def _same(a, b):
    if a.dtype == torch.float32:
        na, nb = torch.isnan(a), torch.isnan(b)
        return torch.equal(na, nb) and torch.equal(a[~na].view(torch.int32), b[~nb].view(torch.int32))
    return torch.equal(a.view(torch.uint8), b.view(torch.uint8))


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("sources", [1, 2, 3, 4])
def test_against_the_reference(device, dtype, sources):
    for i, m in enumerate([0, 1, 511, 512, 513, 4103]):
        codes, scales = _sources(sources, m, dtype, seed=10 * sources + i)
        want_codes, want_scales, _ = quantized_shard_sum(codes, scales, sources)
        got_codes, got_scales = ops.quantized_shard_sum(codes.to(device), scales.to(device), sources)
        assert _same(got_codes.cpu(), want_codes), (m, sources)
        assert _same(got_scales.cpu(), want_scales), (m, sources)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", DTYPES)
def test_a_non_finite_source_block_is_nan_never_a_crash(device, dtype):
    codes, scales = _sources(3, 2000, dtype, seed=7, bad=1100)  # block 2 of the last source
    got_codes, got_scales = ops.quantized_shard_sum(codes.to(device), scales.to(device), 3)
    got_scales = got_scales.cpu()
    assert torch.isnan(got_scales[2]) and torch.isfinite(got_scales[[0, 1, 3]]).all()
    assert (got_codes.cpu()[1024:1536].view(torch.uint8) == 0).all()  # never a NaN code
    want_codes, want_scales, _ = quantized_shard_sum(codes, scales, 3)
    assert _same(got_codes.cpu(), want_codes) and _same(got_scales, want_scales)


def _bad_calls(device):
    c = torch.zeros(1030, dtype=torch.int8, device=device)
    s = torch.zeros(4, device=device)  # 2 sources x 2 blocks
    oc = torch.zeros(515, dtype=torch.int8, device=device)
    os_ = torch.zeros(2, device=device)
    yield "codes has dtype Float", TypeError, (c.float(), s, 2, oc, os_)
    yield "out_codes has dtype Float8_e4m3fn; expected codes' dtype", TypeError, \
        (c, s, 2, oc.view(torch.float8_e4m3fn), os_)
    yield "scales has dtype Half", TypeError, (c, s.half(), 2, oc, os_)
    yield "sources is 0", ValueError, (c, s, 0, oc, os_)
    yield "codes has 1030 elements; expected sources", ValueError, (c, s, 3, oc, os_)
    yield "scales has 3 elements", ValueError, (c, s[:3], 2, oc, os_)
    yield "out_scales has 3 elements", ValueError, (c, s, 2, oc, torch.zeros(3, device=device))
    yield "out_codes is not contiguous", ValueError, (c, s, 2, torch.zeros(1030, dtype=torch.int8, device=device)[::2], os_)
    if device == "cuda":  # (a meta tensor would send the call to the fake kernel)
        yield "scales is on cpu but the other tensors are on cuda", ValueError, (c, s.cpu(), 2, oc, os_)
    yield "out_codes overlaps codes", ValueError, (c, s, 2, c[:515], os_)


@pytest.mark.parametrize("device", DEVICES)
def test_bad_arguments_name_the_argument_and_write_nothing(device):
    for match, exc, args in _bad_calls(device):
        outs = [a.clone() for a in args[3:] if a.device.type != "meta"]
        with pytest.raises(exc, match=match):
            torch.ops.hpsgd.quantized_shard_sum(*args)
        for a, b in zip([a for a in args[3:] if a.device.type != "meta"], outs):
            assert torch.equal(a.view(torch.uint8), b.view(torch.uint8)), match


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", DTYPES)
def test_opcheck(device, dtype):
    for sources, m in [(1, 7), (3, 1030)]:
        codes, scales = _sources(sources, m, dtype, seed=m)
        out_codes = torch.empty(m, dtype=dtype, device=device)
        out_scales = torch.empty((m + 511) // 512, device=device)
        # test_schema compares tensors with arithmetic torch lacks for float8 on the
        # CPU; the int8 case checks the schema's mutations (the same for both).
        utils = ("test_schema", "test_autograd_registration", "test_faketensor",
                 "test_aot_dispatch_dynamic")
        torch.library.opcheck(torch.ops.hpsgd.quantized_shard_sum.default,
                              (codes.to(device), scales.to(device), sources, out_codes, out_scales),
                              test_utils=utils if dtype == torch.int8 else utils[1:])
