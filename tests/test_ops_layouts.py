"""The kernels' fast paths on real-model-like layouts, and the plan cache.

Each layout sends tensors down a different path of the CUDA kernel (csrc/cuda/
boundary_cuda.cu) and through the CPU kernel's typed 8-wide loop and its tail: segments
aligned in the flat buffer (the vector path), segments shifted by an odd-sized tensor
before them (a 10-class head, a 50,257-vocabulary bias: the misaligned path), shifts
that misalign a 16-bit wire but not a float32 one, and pieces of tensors that cross the
CUDA kernel's block ranges. Every output is poisoned first and compared with the
reference (hpsgd_ext.reference) for every dtype combination and kernel variant.
"""

from __future__ import annotations

import pytest
import torch

from hpsgd_ext import _C, ops, reference as ref

from conftest import DEVICES
from helpers import FLOATS, PARAM_ANCHOR, assert_same, bitwise_equal
from test_ops import check_all, make_round, run_both, sizes_numel, verdict_tensor

LAYOUTS = {
    # every segment aligned: the vector path (with a short tail per tensor)
    "aligned": [(64, 256), 8192 * 3, 256, (8, 8), 4096 + 8],
    # a 10-class head first: every later segment shifted by 10 elements
    "head10": [(10,), (64, 256), 8192 * 2 + 3, 1000, 4096],
    # shifted by 4: aligned for a float32 wire, misaligned for a 16-bit one
    "shift4": [4, 20000, (8, 8), 3 * 8192],
    # an odd vocabulary-sized tensor, then aligned ones
    "vocab": [5025 * 3 + 2, (128, 64), 8192, 1, 12288],
}
# (reduced, momentum, sent, verdict): the hook's variants
VARIANTS = {
    "keep": (True, None, True, None),
    "keep_mom": (True, (0.9, True), True, 1.0),
    "reset_mom": (True, (0.9, False), False, None),
    "first_round": (False, None, True, None),
    "discard": (True, (0.9, False), True, 0.0),
}


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("layout", list(LAYOUTS))
@pytest.mark.parametrize("p_dt,a_dt", PARAM_ANCHOR, ids=lambda d: str(d).split(".")[-1])
@pytest.mark.parametrize("f_dt", FLOATS, ids=lambda d: "flat_" + str(d).split(".")[-1])
@pytest.mark.parametrize("variant", list(VARIANTS))
def test_layout_matches_reference(device, layout, p_dt, a_dt, f_dt, variant):
    reduced, mom, sent, verdict = VARIANTS[variant]
    sizes = LAYOUTS[layout]
    args = make_round(sizes, p_dt, a_dt, f_dt, device, seed=11, reduced=reduced, mom=mom, sent=sent)
    kwargs = dict(lr=0.6, divisor=2, verdict=verdict_tensor(verdict, device))
    if mom:
        kwargs.update(momentum=mom[0], nesterov=mom[1])
    k, r = run_both(args, kwargs)
    check_all(k, r)
    n = sizes_numel(sizes)
    assert torch.isnan(k[3][n:]).all()  # the flat tail is never touched


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("f_dt", FLOATS, ids=str)
@pytest.mark.parametrize("shift", [1, 2, 3, 4, 5, 6, 7])
def test_flat_buffers_at_every_offset(device, f_dt, shift):
    """Flat buffers that are views at every element offset mod 8, against tensors that
    start aligned: every combination of head and misalignment."""
    g = torch.Generator().manual_seed(shift)
    sizes = [8192 + 5, 3, 16384]
    n = sizes_numel(sizes)
    ps = [torch.randn(s, generator=g).to(device) for s in sizes]
    an = [torch.randn(s, generator=g).to(device) for s in sizes]
    store = torch.full((n + 16,), float("nan"), dtype=f_dt, device=device)
    out = store[shift:shift + n]
    red = torch.randn(n + 16, generator=g).to(f_dt).to(device)[8 - shift % 8:][:n]
    sent = (torch.randn(n + 16, generator=g) * 0.01).to(f_dt).to(device)[shift:][:n]
    k, r = run_both((ps, an, red, out, None, sent), dict(lr=0.3))
    check_all(k, r)
    assert torch.isnan(store[:shift]).all() and torch.isnan(store[shift + n:]).all()


# ---------------------------------------------------------------- the plan cache
def _fresh(device, sizes=(300, 7, 4096), f_dt=torch.float32, seed=0):
    args = make_round(list(sizes), torch.float32, torch.float32, f_dt, device, seed=seed,
                      mom=(0.5, False), sent=True)
    return args


@pytest.fixture
def cache_on():
    old = _C._set_plan_cache_enabled(True)
    _C._clear_plan_cache()
    yield
    _C._set_plan_cache_enabled(old)


def run_in_place(args, kwargs):
    """The kernel on the buffers themselves (so repeated calls hit the plan cache), the
    reference on copies taken just before; returns (kernel results, reference results)."""
    ps, an, red, out, ms, s = args
    r = ([p.clone() for p in ps], [a.clone() for a in an], red, out.clone(),
         None if ms is None else [m.clone() for m in ms], None if s is None else s.clone())
    ops.round_step(ps, an, red, out, momentum_buffers=ms, sent=s, **kwargs)
    ref.round_step(r[0], r[1], r[2], r[3], momentum_buffers=r[4], sent=r[5], **kwargs)
    return args, r


def _refill(args, seed):
    g = torch.Generator().manual_seed(seed)
    ps, an, red, out, ms, s = args
    for t in ps + an + (ms or []) + [red]:
        t.copy_(torch.randn(t.shape, generator=g).to(t.dtype))


@pytest.mark.parametrize("device", DEVICES)
def test_cached_plan_gives_the_uncached_result(device, cache_on):
    """The same buffers called again (a cache hit) with new values and new scalars: the
    result equals the reference each time, and a run with the cache off bit for bit."""
    args = _fresh(device)
    for i, (lr, mu, nest, div) in enumerate([(0.5, 0.5, False, 1), (1.5, 0.9, True, 3),
                                             (0.25, 0.0, False, 2), (0.5, 0.5, False, 1)]):
        _refill(args, 100 + i)
        kw = dict(lr=lr, momentum=mu, nesterov=nest, divisor=div)
        before = [None if x is None else ([t.clone() for t in x] if isinstance(x, list) else x.clone())
                  for x in args]
        k, r = run_in_place(args, kw)
        check_all(k, r)
        old = _C._set_plan_cache_enabled(False)
        try:
            k2, _ = run_both(before, kw)
        finally:
            _C._set_plan_cache_enabled(old)
        for xs, ys in zip(k, k2):
            for x, y in zip(xs if isinstance(xs, list) else [xs], ys if isinstance(ys, list) else [ys]):
                assert bitwise_equal(x, y)


@pytest.mark.parametrize("device", DEVICES)
def test_cache_hit_still_checks_scalars(device, cache_on):
    ps, an, red, out, ms, s = _fresh(device)
    ops.round_step(ps, an, red, out, momentum_buffers=ms, momentum=0.5, sent=s)
    with pytest.raises(ValueError, match="lr is nan"):
        ops.round_step(ps, an, red, out, lr=float("nan"), momentum_buffers=ms, momentum=0.5, sent=s)
    with pytest.raises(ValueError, match="divisor is 0"):
        ops.round_step(ps, an, red, out, momentum_buffers=ms, momentum=0.5, sent=s, divisor=0)
    with pytest.raises(ValueError, match="momentum is -1"):
        ops.round_step(ps, an, red, out, momentum_buffers=ms, momentum=-1.0, sent=s)


@pytest.mark.parametrize("device", DEVICES)
def test_cache_misses_on_any_change(device, cache_on):
    """A plan is reused only for the very same buffers: a new tensor in place of an
    old one, a view of other memory, an aliasing output or another dtype is checked
    (and computed) afresh."""
    ps, an, red, out, ms, s = _fresh(device)
    ops.round_step(ps, an, red, out, sent=s)
    # a replaced tensor of the same shape
    ps2 = list(ps)
    ps2[1] = ps[1].clone()
    args = (ps2, an, red, out, None, s)
    k, r = run_both(args, dict(lr=0.5))
    check_all(k, r)
    # the same storage, now aliased with an output: must raise, not hit the cache
    with pytest.raises(ValueError, match="overlaps"):
        ops.round_step(ps, an, red, out, sent=out)
    # another dtype for out: must raise
    with pytest.raises(TypeError, match="share one dtype"):
        ops.round_step(ps, an, red, out.to(torch.bfloat16), sent=s)
    # the same data pointers with other shapes: checked afresh
    an_bad = list(an)
    an_bad[0] = an[0].view(-1)[:299]
    with pytest.raises(ValueError, match="has shape"):
        ops.round_step(ps, an_bad, red, out, sent=s)


@pytest.mark.parametrize("device", DEVICES)
def test_verdict_value_is_read_every_call(device, cache_on):
    """The verdict tensor is part of the plan, its value is not: the kernel reads it."""
    ps, an, red, out, ms, s = _fresh(device)
    v = torch.tensor([1.0], device=device)
    ops.round_step(ps, an, red, out, momentum_buffers=ms, momentum=0.5, sent=s, verdict=v)
    v.fill_(0.0)
    a0 = [a.clone() for a in an]
    ops.round_step(ps, an, red, out, momentum_buffers=ms, momentum=0.5, sent=s, verdict=v)
    for a, b in zip(an, a0):
        assert bitwise_equal(a, b)
    assert bitwise_equal(out[:sizes_numel([300, 7, 4096])],
                         torch.zeros(sizes_numel([300, 7, 4096]), device=device))


@pytest.mark.parametrize("device", DEVICES)
def test_many_buffer_sets_evict_and_stay_correct(device, cache_on):
    """More distinct buffer sets than the cache holds, revisited: every call correct."""
    sets = [_fresh(device, sizes=(50 + i, 9), seed=i) for i in range(70)]  # the cache holds 64
    for _ in range(2):
        for args in sets:
            k, r = run_in_place(args, dict(lr=0.5, momentum=0.5))
            check_all(k, r)


def test_preload_kernels_without_a_device_is_a_no_op():
    if torch.cuda.is_available():
        pytest.skip("a CUDA device is present (see the GPU test)")
    assert ops.preload_kernels() == []


# ---------------------------------------------------------------- CUDA only
@pytest.mark.gpu
def test_preload_kernels_loads_every_kernel():
    if not _C.built_with_cuda():
        pytest.skip("built without CUDA")
    ks = ops.preload_kernels()
    # flatten/unflatten: 9 dtype pairs each; delta_flatten, merge and 6 round_step
    # variants: 15 dtype combinations each; the verdict's 3 (csrc/cuda/verdict_cuda.cu);
    # the 8-bit reduction's 3 (csrc/cuda/quant_sum_cuda.cu)
    assert len(ks) == 2 * 9 + 8 * 15 + 3 + 3
    assert len({k["name"] for k in ks}) == len(ks)
    for k in ks:
        assert k["registers"] > 0 and k["max_threads"] >= 256 and k["blocks_per_sm"] >= 1
        assert k["local_bytes"] == 0, k  # no spills


@pytest.mark.gpu
@pytest.mark.parametrize("warm", [True, False], ids=["warm", "cold"])
def test_round_step_in_a_cuda_graph(warm, cache_on):
    """Captured after a warm-up (the plan is cached) or cold (planned during the
    capture): every replay computes the rule on the buffers' current values."""
    device = "cuda"
    ps, an, red, out, ms, s = _fresh(device, sizes=(10, 40000, 7, 8192))
    kw = dict(lr=0.7, momentum=0.5)
    stream = torch.cuda.Stream()
    stream.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(stream):
        if warm:
            for _ in range(2):
                ops.round_step(ps, an, red, out, momentum_buffers=ms, sent=s, **kw)
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph, stream=stream):
            ops.round_step(ps, an, red, out, momentum_buffers=ms, sent=s, **kw)
    torch.cuda.current_stream().wait_stream(stream)
    _C._clear_plan_cache()  # a captured plan must survive this
    for i in range(3):
        g = torch.Generator().manual_seed(200 + i)
        for t in ps + an + ms:
            t.copy_(torch.randn(t.shape, generator=g).to(t.dtype))
        exp = ([p.clone() for p in ps], [a.clone() for a in an], red, out.clone(),
               [m.clone() for m in ms], s.clone())
        ref.round_step(exp[0], exp[1], exp[2], exp[3], momentum_buffers=exp[4], sent=exp[5], **kw)
        graph.replay()
        torch.cuda.synchronize()
        for xs, ys in zip((ps, an, out, ms, s), (exp[0], exp[1], exp[3], exp[4], exp[5])):
            for x, y in zip(xs if isinstance(xs, list) else [xs], ys if isinstance(ys, list) else [ys]):
                assert_same(x, y)


@pytest.mark.gpu
def test_same_buffers_on_two_streams(cache_on):
    """A plan's device metadata belongs to one stream: the same buffers on another
    stream get their own, and both streams compute correctly."""
    device = "cuda"
    args = _fresh(device)
    k, r = run_in_place(args, dict(lr=0.5, momentum=0.5))
    check_all(k, r)
    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):
        k2, r2 = run_in_place(args, dict(lr=0.25, momentum=0.5))
    torch.cuda.current_stream().wait_stream(side)
    torch.cuda.synchronize()
    check_all(k2, r2)
