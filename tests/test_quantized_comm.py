"""Communicator.quantized_all_reduce_async in one process (a world of one): bad
arguments raise an error naming the argument and write nothing; one rank's
reduction is the oracle's. Several ranks: tests/test_quantized_comm_multiprocess.py."""

from __future__ import annotations

import pytest
import torch

from hpsgd_ext import Communicator
from hpsgd_ext.reference import quantize_blocks, quantized_all_reduce_codes


def _pair(n=1000, extra=2, dtype=torch.int8):
    codes, scale = quantize_blocks(torch.randn(n, generator=torch.Generator().manual_seed(0)), dtype)
    return codes, torch.cat([scale, torch.arange(extra, dtype=torch.float32)])


def _bad_calls():
    codes, scales = _pair()
    yield "codes has dtype Float", TypeError, (codes.float(), scales, 2)
    yield "codes has dtype Byte", TypeError, (codes.view(torch.uint8), scales, 2)
    yield "scales has dtype Double", TypeError, (codes, scales.double(), 2)
    yield r"scales has 4 elements; expected .* \(2 for 1000 codes\) plus extra \(3\): 5", ValueError, \
        (codes, scales, 3)
    yield "extra is -1", ValueError, (codes, scales, -1)
    yield "codes is not a contiguous dense 1-D", ValueError, (codes.view(10, 100).t()[0], scales[:3], 2)
    yield "codes is not a contiguous dense 1-D", ValueError, (codes.view(10, 100), scales, 2)
    yield "scales is not a contiguous dense 1-D", ValueError, (codes, torch.zeros(8)[::2], 2)
    yield "scales is on meta but codes is on cpu", ValueError, (codes, scales.to("meta"), 2)
    yield "codes is on meta", ValueError, (codes.to("meta"), scales.to("meta"), 2)


@pytest.mark.parametrize("match,exc,args", list(_bad_calls()))
def test_bad_arguments_name_the_argument_and_write_nothing(world_of_one, match, exc, args):
    comm = Communicator(timeout=10)
    before = [a.clone() if isinstance(a, torch.Tensor) and a.device.type != "meta" else None for a in args]
    with pytest.raises(exc, match=match):
        comm.quantized_all_reduce_async(*args)
    for a, b in zip(args, before):
        if b is not None:
            assert torch.equal(a.view(torch.uint8) if a.dtype != torch.float32 else a,
                               b.view(torch.uint8) if b.dtype != torch.float32 else b)
    assert comm.stats()["issued"] == 0 and comm.error is None  # a refused call aborts nothing
    comm.close()


@pytest.mark.parametrize("dtype", [torch.int8, torch.float8_e4m3fn])
@pytest.mark.parametrize("n", [0, 1, 513, 4103])
def test_world_of_one_is_the_oracle(world_of_one, dtype, n):
    codes, scales = _pair(n, 2, dtype)
    nb = scales.numel() - 2
    want_codes, want_scales = quantized_all_reduce_codes(codes, scales[:nb].clone())
    want_extra = scales[nb:].clone()
    with Communicator(timeout=10) as comm:
        work = comm.quantized_all_reduce_async(codes, scales, extra=2)
        work.wait()
        assert work.is_completed() and "quantized_all_reduce #0" in repr(work)
        assert comm.stats()["bytes"] == 0  # nothing leaves a world of one
    assert torch.equal(codes.view(torch.uint8), want_codes.view(torch.uint8))
    assert torch.equal(scales[:nb], want_scales) and torch.equal(scales[nb:], want_extra)
