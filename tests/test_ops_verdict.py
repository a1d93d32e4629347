"""The verdict's ops (torch.ops.hpsgd.own_flag, reduced_verdict; docs/round-protocol.md,
"Verdict kernels") against plain PyTorch: random flats of awkward sizes and offsets in
every wire dtype, NaN/+-Inf injected at random places (the first and last data element,
the flag slots, past the slots), on CPU and CUDA."""

from __future__ import annotations

import random

import pytest
import torch

from hpsgd_ext import ops

from conftest import DEVICES

DTYPES = [torch.float32, torch.bfloat16, torch.float16]
# Around the 16-byte words the CUDA scan reads (4 or 8 elements) and the CPU's
# chunks of 2^16 elements.
SIZES = [0, 1, 3, 7, 8, 9, 17, 1000, 65536, 65536 * 2 + 13]
BAD = [float("nan"), float("inf"), float("-inf")]
INJECT = ["none", "first", "last", "random", "slots", "past"]


def old_own_flag(flat, numel, rank, world, check):
    """Before the fused op: ATen's aminmax and isfinite (the engine's composition)."""
    out = flat.clone()
    tail = out[numel:numel + world]
    tail.zero_()
    if check and numel > 0:
        lo, hi = torch.aminmax(flat[:numel])
        tail[rank] = float(not (torch.isfinite(lo) and torch.isfinite(hi)))
    return out


def old_reduced_verdict(flats, numels, world, valid=None):
    """Before the fused op: all(isfinite(aminmax)) and sum(flags) != 0, times valid."""
    finite = [torch.isfinite(torch.stack(torch.aminmax(f[:n]))) for f, n in zip(flats, numels) if n]
    ok = torch.cat(finite).all() if finite else torch.tensor(True)
    who = torch.stack([f[n:n + world].float() for f, n in zip(flats, numels)]).sum(0).ne(0)
    info = torch.cat([ok.float().reshape(1), who.float()])
    if valid is not None:
        info[0] *= valid.cpu()[0]
    return info


def make_flat(rng, device, dtype, numel, world, offset, inject):
    """A view of `numel + world` elements (+2 past them) at `offset` elements into a
    larger buffer, so the data starts off any 16-byte boundary when offset > 0."""
    g = torch.Generator().manual_seed(rng.randrange(2**31))
    base = torch.randn(offset + numel + world + 2, generator=g).to(dtype)
    flat = base[offset:offset + numel + world]
    flat[numel:] = torch.tensor([rng.choice([0.0, 1.0, 2.0, -0.0]) for _ in range(world)],
                                dtype=dtype)
    where = {"first": [0], "last": [numel - 1],
             "random": rng.sample(range(numel), min(3, numel)) if numel else []}.get(inject)
    if where is not None:
        for i in where:
            if 0 <= i < numel:
                flat[i] = rng.choice(BAD)
    elif inject == "slots":
        flat[numel + rng.randrange(world)] = rng.choice(BAD)
    elif inject == "past":
        base[offset + numel + world:] = float("nan")
    base = base.to(device)
    return base, base[offset:offset + numel + world]


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("numel", SIZES)
def test_own_flag_matches_reference(device, dtype, numel):
    rng = random.Random(numel * 7 + DTYPES.index(dtype))
    for inject in INJECT:
        for offset in (0, 1, 3):
            world = rng.choice([1, 2, 5])
            rank = rng.randrange(world)
            check = rng.random() < 0.8
            base, flat = make_flat(rng, device, dtype, numel, world, offset, inject)
            before = base.clone()
            expected = old_own_flag(flat.cpu(), numel, rank, world, check)
            ops.own_flag(flat, numel, rank, world, check)
            case = (inject, offset, world, rank, check)
            assert torch.equal(flat.cpu().view(torch.int16 if dtype != torch.float32 else torch.int32),
                               expected.view(torch.int16 if dtype != torch.float32 else torch.int32)), case
            # nothing outside the slots is written
            keep = torch.ones(base.numel(), dtype=torch.bool)
            keep[offset + numel:offset + numel + world] = False
            assert torch.equal(base.cpu()[keep].isnan(), before.cpu()[keep].isnan()), case
            torch.testing.assert_close(base.cpu()[keep], before.cpu()[keep], rtol=0, atol=0,
                                       equal_nan=True)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("groups", [1, 2, 5, 70])  # 70: more flats than one CUDA launch takes
def test_reduced_verdict_matches_reference(device, groups):
    rng = random.Random(groups)
    for trial in range(12 if groups < 70 else 3):
        world = rng.choice([1, 2, 3, 8])
        flats, numels, bases = [], [], []
        for _ in range(groups):
            numel = rng.choice(SIZES[:-1] if groups > 5 else SIZES)
            dtype = rng.choice(DTYPES)  # groups of one engine may differ in wire dtype
            inject = rng.choice(INJECT + ["none"] * 3)
            base, flat = make_flat(rng, device, dtype, numel, world, rng.choice([0, 1, 5]), inject)
            bases.append(base)
            flats.append(flat)
            numels.append(numel)
        valid = rng.choice([None, 1.0, 0.0])
        valid = None if valid is None else torch.tensor([valid], device=device)
        before = [b.clone() for b in bases]
        expected = old_reduced_verdict([f.cpu() for f in flats], numels, world, valid)
        info = torch.full((1 + world,), 7.0, device=device)  # every entry is written
        ops.reduced_verdict(flats, numels, world, valid=valid, out=info)
        assert torch.equal(info.cpu(), expected), (trial, info, expected)
        for b, b0 in zip(bases, before):  # read only
            torch.testing.assert_close(b, b0, rtol=0, atol=0, equal_nan=True)


@pytest.mark.parametrize("device", DEVICES)
def test_reduced_verdict_edge_cases(device):
    f32 = dict(device=device)
    # no flats: finite, nobody flagged, times valid
    info = ops.reduced_verdict([], [], 3, valid=torch.tensor([0.0], **f32),
                               out=torch.empty(4, **f32))
    assert info.tolist() == [0.0, 0.0, 0.0, 0.0]
    assert ops.reduced_verdict([], [], 1, out=torch.empty(2, **f32)).tolist() == [1.0, 0.0]
    # a flag slot is "non-zero" in any flat: -0 is zero, a negative or NaN slot is not
    a = torch.tensor([1.0, 2.0, -0.0, -1.0, float("nan")], **f32)
    b = torch.tensor([3.0, 0.0, 0.0, 1.0, 0.0], dtype=torch.bfloat16, device=device)
    info = ops.reduced_verdict([a, b], [2, 2], 3)
    assert info.tolist()[0] == 1.0 and info.tolist()[1:] == [0.0, 1.0, 1.0]
    # a non-finite slot is a flag, not a bad data element
    c = torch.tensor([1.0, float("inf")], dtype=torch.float16, device=device)
    assert ops.reduced_verdict([c], [1], 1).tolist() == [1.0, 1.0]


@pytest.mark.parametrize("device", DEVICES)
def test_own_flag_unchecked_only_zeroes(device):
    flat = torch.tensor([float("nan"), 1.0, 5.0, float("nan")], device=device)
    ops.own_flag(flat, 2, 1, 2, check=False)
    assert flat[2:].tolist() == [0.0, 0.0] and flat[:2].isnan().tolist() == [True, False]
    ops.own_flag(flat, 2, 1, 2)
    assert flat[2:].tolist() == [0.0, 1.0]


def _err(exc, pattern, fn, *args, **kwargs):
    with pytest.raises(exc, match=pattern):
        fn(*args, **kwargs)


@pytest.mark.parametrize("device", DEVICES)
def test_own_flag_bad_arguments(device):
    flat = torch.zeros(10, device=device)
    op = torch.ops.hpsgd.own_flag
    _err(TypeError, r"hpsgd.own_flag: flat has dtype Double; expected float32, bfloat16 or float16",
         op, torch.zeros(10, dtype=torch.float64, device=device), 8, 0, 2, True)
    _err(ValueError, r"hpsgd.own_flag: world is 0; expected an int >= 1", op, flat, 8, 0, 0, True)
    _err(ValueError, r"hpsgd.own_flag: rank is 2; expected 0 <= rank < world \(2\)",
         op, flat, 8, 2, 2, True)
    _err(ValueError, r"hpsgd.own_flag: rank is -1", op, flat, 8, -1, 2, True)
    _err(ValueError, r"hpsgd.own_flag: numel is -1; expected an int >= 0", op, flat, -1, 0, 2, True)
    _err(ValueError, r"hpsgd.own_flag: flat has 10 elements but numel is 9 and world 2",
         op, flat, 9, 0, 2, True)
    _err(ValueError, r"hpsgd.own_flag: flat is not contiguous",
         op, torch.zeros(10, 2, device=device)[:, 0], 8, 0, 2, True)
    assert flat.abs().sum().item() == 0  # nothing written by a refused call


@pytest.mark.parametrize("device", DEVICES)
def test_reduced_verdict_bad_arguments(device):
    op = torch.ops.hpsgd.reduced_verdict
    fl = [torch.zeros(10, device=device), torch.zeros(6, dtype=torch.float16, device=device)]
    info = torch.zeros(3, device=device)
    _err(TypeError, r"hpsgd.reduced_verdict: info has dtype Half; expected float32",
         op, fl, [8, 4], 2, None, torch.zeros(3, dtype=torch.float16, device=device))
    _err(ValueError, r"hpsgd.reduced_verdict: info has 4 elements; expected exactly 3",
         op, fl, [8, 4], 2, None, torch.zeros(4, device=device))
    _err(ValueError, r"hpsgd.reduced_verdict: numels has 1 entries but flats has 2",
         op, fl, [8], 2, None, info)
    _err(ValueError, r"hpsgd.reduced_verdict: flats\[1\] has 6 elements but numels\[1\] is 5",
         op, fl, [8, 5], 2, None, info)
    _err(ValueError, r"hpsgd.reduced_verdict: numels\[0\] is -1", op, fl, [-1, 4], 2, None, info)
    _err(TypeError, r"hpsgd.reduced_verdict: flats\[0\] has dtype Int",
         op, [torch.zeros(10, dtype=torch.int32, device=device), fl[1]], [8, 4], 2, None, info)
    _err(TypeError, r"hpsgd.reduced_verdict: valid has dtype Double; expected float32",
         op, fl, [8, 4], 2, torch.ones(1, dtype=torch.float64, device=device), info)
    _err(ValueError, r"hpsgd.reduced_verdict: valid has 2 elements; expected exactly 1",
         op, fl, [8, 4], 2, torch.ones(2, device=device), info)
    _err(ValueError, r"hpsgd.reduced_verdict: world is 0", op, fl, [8, 4], 0, None,
         torch.zeros(1, device=device))
    big = torch.zeros(20, device=device)
    _err(ValueError, r"hpsgd.reduced_verdict: (info overlaps flats\[0\]|flats\[0\] overlaps info)",
         op, [big[:10]], [8], 2, None, big[8:11])
    assert info.abs().sum().item() == 0


@pytest.mark.gpu
def test_device_mismatch_is_named():
    _err(ValueError, r"hpsgd.reduced_verdict: flats\[0\] is on cpu but the other tensors are on cuda",
         torch.ops.hpsgd.reduced_verdict, [torch.zeros(4)], [2], 2, None,
         torch.zeros(3, device="cuda"))
    _err(ValueError, r"hpsgd.reduced_verdict: valid is on cpu but the other tensors are on cuda",
         torch.ops.hpsgd.reduced_verdict, [torch.zeros(4, device="cuda")], [2], 2, torch.ones(1),
         torch.zeros(3, device="cuda"))


@pytest.mark.gpu
def test_no_host_synchronisation():
    flat = torch.randn(1 << 20, device="cuda")
    info = torch.empty(3, device="cuda")
    valid = torch.ones(1, device="cuda")
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")
    try:
        ops.own_flag(flat, (1 << 20) - 2, 1, 2)
        ops.reduced_verdict([flat], [(1 << 20) - 2], 2, valid=valid, out=info)
    finally:
        torch.cuda.set_sync_debug_mode(0)
    assert info.tolist() == [1.0, 0.0, 0.0]


@pytest.mark.gpu
def test_runs_on_the_current_stream():
    """The flat becomes non-finite only on the side stream, after a long sleep there."""
    side = torch.cuda.Stream()
    flat = torch.zeros(1 << 20, device="cuda")
    info = torch.empty(2, device="cuda")
    torch.cuda.synchronize()
    with torch.cuda.stream(side):
        torch.cuda._sleep(10_000_000)
        flat[12345] = float("nan")
        ops.reduced_verdict([flat], [(1 << 20) - 1], 1, out=info)
        done = torch.cuda.Event()
        done.record()
    assert not done.query()
    done.synchronize()
    assert info.tolist() == [0.0, 0.0]


@pytest.mark.gpu
def test_flat_larger_than_2_pow_31_bytes():
    n = 2**29 + 5  # float32: byte offsets pass 2^31
    flat = torch.zeros(n + 2, device="cuda")
    flat[n - 1] = float("inf")
    ops.own_flag(flat, n, 1, 2)
    info = ops.reduced_verdict([flat], [n], 2)
    assert flat[n:].tolist() == [0.0, 1.0] and info.tolist() == [0.0, 0.0, 1.0]
    flat[n - 1] = 0.0
    flat[2**29 + 1] = float("nan")  # past 2^31 bytes, in the 16-byte words
    assert ops.reduced_verdict([flat], [n], 2).tolist() == [0.0, 0.0, 1.0]
    del flat
    torch.cuda.empty_cache()
