"""CUDA-only properties: int64 indexing past 2^31 bytes, the current stream."""

import pytest
import torch

from hpsgd_ext import ops, reference as ref

from helpers import assert_same

pytestmark = pytest.mark.gpu


def test_flat_buffer_larger_than_2_pow_31_bytes():
    torch.manual_seed(0)
    big = 2**29 + 5  # float32: 2 GiB + 20 bytes in one tensor, so byte offsets pass 2^31
    sizes = [3, big, 7]
    ps = [torch.randn(s, device="cuda") for s in sizes]
    an = [torch.randn(s, device="cuda") for s in sizes]
    n = sum(sizes)
    assert n * 4 > 2**31
    red = torch.randn(n, device="cuda")
    out = torch.full((n,), float("nan"), device="cuda")
    sent = torch.randn(n, device="cuda") * 0.01
    exp_out = torch.full((n,), float("nan"), device="cuda")
    rp, ra, rs = [p.clone() for p in ps], [a.clone() for a in an], sent.clone()
    ref.round_step(rp, ra, red, exp_out, lr=0.5, sent=rs)
    ops.round_step(ps, an, red, out, lr=0.5, sent=sent)
    torch.cuda.synchronize()
    assert_same(out, exp_out)
    assert_same(sent, rs)
    for x, y in zip(ps + an, rp + ra):
        assert_same(x, y)


def test_runs_on_the_current_stream():
    """The inputs become ready only on the side stream, after a long sleep there: an
    op that ran on any other stream would read the old (zero) inputs."""
    torch.manual_seed(1)
    side = torch.cuda.Stream()
    src_p, src_a = torch.randn(1 << 20, device="cuda"), torch.randn(1 << 20, device="cuda")
    ps, an = [torch.zeros(1 << 20, device="cuda")], [torch.zeros(1 << 20, device="cuda")]
    out = torch.full((1 << 20,), float("nan"), device="cuda")
    torch.cuda.synchronize()
    with torch.cuda.stream(side):
        torch.cuda._sleep(10_000_000)
        ps[0].copy_(src_p)
        an[0].copy_(src_a)
        ops.delta_flatten(ps, an, out)
        done = torch.cuda.Event()
        done.record()
    assert not done.query()
    done.synchronize()
    torch.testing.assert_close(out, src_p - src_a)
