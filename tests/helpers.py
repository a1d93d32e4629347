"""Shared test helpers: random layouts, poisoned buffers, dtype-aware comparison."""

from __future__ import annotations

import torch

FLOATS = [torch.float32, torch.bfloat16, torch.float16]
# (param dtype, anchor dtype): anchors share the params' dtype or are float32.
PARAM_ANCHOR = [(p, a) for p in FLOATS for a in dict.fromkeys([p, torch.float32])]


def rand_list(sizes, dtype, device, gen, scale=1.0):
    return [(torch.randn(s, generator=gen, dtype=torch.float32) * scale).to(dtype).to(device)
            for s in sizes]


def poisoned(n, dtype, device, tail=0):
    """A flat buffer of n + tail NaNs: any element a kernel forgets stays NaN."""
    return torch.full((n + tail,), float("nan"), dtype=dtype, device=device)


def clone_all(xs):
    return [None if x is None else x.clone() for x in xs]


def tolerance(dtype):
    """Kernel and reference both compute in float32 and differ only by FMA
    contraction, i.e. at most one float32 rounding before the final cast:
    one ulp of the stored dtype, plus a small absolute floor for cancellations."""
    if dtype == torch.float32:
        return dict(rtol=2e-6, atol=2e-6)
    eps = torch.finfo(dtype).eps
    return dict(rtol=eps, atol=eps * 1e-2)


def assert_same(actual, expected):
    """Equal within one ulp of the stored dtype. NaN must match NaN: inputs are
    finite, so a NaN can only be a poisoned element the kernel failed to write
    (or a tail both left alone, which callers check separately)."""
    assert actual.dtype == expected.dtype and actual.shape == expected.shape
    # Compared where they are: a 2 GiB CUDA pair copied to the host and compared
    # there ran past a 45 s test limit on an H200 machine beside other tests.
    torch.testing.assert_close(actual.float(), expected.float(),
                               equal_nan=True, **tolerance(actual.dtype))


def snapshot_tensors(kw):
    """Clones of every tensor in a call's keyword arguments (lists flattened, in order)."""
    return [t.clone() for v in kw.values() for t in (v if isinstance(v, list) else [v])
            if isinstance(t, torch.Tensor)]


def bitwise_equal(a, b):
    """Same dtype, shape and bytes. torch.equal calls NaN unequal to itself, and an output
    from torch.empty may hold NaN garbage, so "left untouched" has to compare bits."""
    if a.dtype != b.dtype or a.shape != b.shape:
        return False
    return torch.equal(a.detach().reshape(-1).view(torch.uint8),
                       b.detach().reshape(-1).view(torch.uint8))


def assert_untouched(kw, snap):
    now = snapshot_tensors(kw)
    assert len(now) == len(snap)
    for a, b in zip(now, snap):
        assert bitwise_equal(a, b), "a failed call modified its arguments"
