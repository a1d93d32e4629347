"""Single-rank NCCL on a GPU: the dedicated stream overlaps compute, synchronize_stream
orders consumers, the result is right, link emulation delays completion."""

from __future__ import annotations

import time

import pytest
import torch
import torch.distributed as dist

import hpsgd_ext
from hpsgd_ext import Communicator, LinkModel

pytestmark = [pytest.mark.gpu, pytest.mark.skipif(not hpsgd_ext.built_with_nccl(), reason="no NCCL in this build")]


def test_nccl_result_and_telemetry(world_of_one):
    comm = Communicator(device="cuda", timeout=30)
    assert comm.transport == "nccl"
    for dt in (torch.float32, torch.bfloat16, torch.float16):
        x = torch.randn(1_000_003, device="cuda").to(dt)
        ref = x.clone()
        w = comm.all_reduce_async(x)
        w.wait()
        assert torch.equal(x, ref)  # the mean over one rank is the buffer itself
        assert w.device_seconds >= 0


def test_compute_stream_not_blocked_by_long_collective(world_of_one):
    # 0.2 GB/s emulated: 256 MB holds the comm stream ~1.3 s; a 4-byte warm-up first,
    # so that the first collective's own set-up is not inside the hold. The compute is
    # elementwise: in run 9, five 2048x2048 matmuls ended only with the hold (suspected:
    # cuBLAS's persistent Hopper GEMMs need every SM, and the spinning hold kernel holds a
    # slot on one; bench/results/gpu-h200/README.md), which is not what this test asks.
    comm = Communicator(device="cuda", timeout=30, link=LinkModel(bandwidth=2e8, latency=0.0))
    comm.all_reduce_async(torch.ones(1, device="cuda")).wait()
    x = torch.ones(64 * 2**20, device="cuda")
    z = torch.ones(16 * 2**20, device="cuda")
    z.mul_(1.0001)
    torch.cuda.synchronize()
    t0 = time.monotonic()
    work = comm.all_reduce_async(x)
    issued = time.monotonic() - t0
    done = torch.cuda.Event()
    for _ in range(50):
        z.mul_(1.0001)
    done.record()
    done.synchronize()
    elapsed = time.monotonic() - t0
    assert elapsed < 0.6, f"compute ended {elapsed:.3f} s after the issue ({issued:.3f} s to issue)"
    assert not work.is_completed(), f"{elapsed:.3f} s after the issue ({issued:.3f} s to issue)"
    work.wait()
    assert work.device_seconds >= 1.25


def test_synchronize_stream_orders_consumer(world_of_one):
    """A one-rank reduction leaves the values alone, so the order is observed in
    time: after synchronize_stream() the current stream must not pass an event
    until the held collective ends (it would at once if the wait were missing)."""
    comm = Communicator(device="cuda", timeout=30, link=LinkModel(bandwidth=2e9, latency=0.2))
    x = torch.full((8 * 2**20,), 3.0, device="cuda")
    torch.cuda.synchronize()
    work = comm.all_reduce_async(x)
    work.synchronize_stream()  # no CPU block
    y = x * 2  # queued behind the reduction on the current stream
    consumer = torch.cuda.Event()
    consumer.record()
    time.sleep(0.05)
    assert not consumer.query() and not work.is_completed()
    consumer.synchronize()
    assert work.is_completed()
    assert torch.equal(y, torch.full_like(x, 6.0))


def test_link_emulation_delays_completion(world_of_one):
    link = LinkModel(bandwidth=1e9, latency=0.02)
    comm = Communicator(device="cuda", timeout=30, link=link)
    x = torch.ones(25 * 2**20, device="cuda")  # 100 MB: 0.12 s modelled
    torch.cuda.synchronize()
    t0 = time.monotonic()
    w = comm.all_reduce_async(x)
    w.wait()
    elapsed = time.monotonic() - t0
    assert elapsed >= link.duration(x.numel() * 4) * 0.95
    assert w.device_seconds >= link.duration(x.numel() * 4) * 0.95


@pytest.mark.parametrize("how", ["close", "abort"])
def test_teardown_cancels_a_held_link(world_of_one, how):
    # An hour of emulated link: a hold that outlived its communicator would make
    # every later device-wide synchronize wait for it.
    comm = Communicator(device="cuda", timeout=30, link=LinkModel(bandwidth=1.0, latency=3600.0))
    x = torch.ones(1024, device="cuda")
    w = comm.all_reduce_async(x)
    time.sleep(0.05)
    assert not w.is_completed()
    t0 = time.monotonic()
    if how == "abort":
        comm.abort("test")
        with pytest.raises(hpsgd_ext.CommError):
            w.wait()
    comm.close()
    del w
    torch.cuda.synchronize()
    assert time.monotonic() - t0 < 5.0


def test_wrong_device_buffer_rejected(world_of_one):
    comm = Communicator(device="cuda", timeout=30)
    with pytest.raises(ValueError, match="flat is on cpu"):
        comm.all_reduce_async(torch.ones(3))


def test_buffer_freed_while_in_flight_on_gpu(world_of_one):
    comm = Communicator(device="cuda", timeout=30, link=LinkModel(bandwidth=1e9, latency=0.0))
    w = comm.all_reduce_async(torch.ones(32 * 2**20, device="cuda"))
    z = torch.zeros(32 * 2**20, device="cuda")  # must not reuse the in-flight memory
    w.wait()
    assert torch.count_nonzero(z) == 0


def test_step_overlap_benchmark_on_cuda(world_of_one):
    """The GPU path of `hpsgd-bench step-overlap` (CUDA events, device_seconds) at a small size."""
    from hpsgd_ext.bench import step_overlap

    res = step_overlap.run(device="cuda", steps=3, repeats=2, size=(64, 2, 16, 16))
    m = res["median"]
    assert res["transport"] == "nccl" and res["dtype"] == "torch.bfloat16"
    assert m["compute_events_s"] > 0 and m["compute_in_both_events_s"] > 0
    assert m["comm_device_s"] > 0.5 * m["compute_s"]  # the hold kernel ran on the comm stream
    assert -1.0 < res["hidden_fraction"] < 1.5


def test_valid_flag_cleared_by_abort(world_of_one):
    comm = Communicator(device="cuda", timeout=30)
    x = torch.ones(1024, device="cuda")
    w = comm.all_reduce_async(x)
    flag = w.valid_flag
    assert flag is not None and flag.is_cuda and flag.dtype == torch.float32 and flag.numel() == 1
    w.wait()
    assert flag.item() == 1.0  # a kernel reads it through the mapping
    comm.abort("test")
    assert flag.item() == 0.0  # cleared before the NCCL communicator was aborted
    comm.close()
    del w
    assert flag.item() == 0.0  # the view keeps the mapped memory alive


def test_sum_mode_and_cta_limits_on_nccl(world_of_one):
    comm = Communicator(device="cuda", timeout=30, min_ctas=1, max_ctas=2)
    x = torch.arange(1000, device="cuda", dtype=torch.float32)
    comm.all_reduce_async(x, average=False).wait()
    assert torch.equal(x, torch.arange(1000, device="cuda", dtype=torch.float32))
    assert comm.error is None
    comm.close()
    assert comm.error is None  # a clean close finalizes, records nothing


def test_c10d_transport_reduces_cuda_buffers_over_gloo(world_of_one):
    """transport='c10d': the user's Gloo group reduces CUDA buffers (staged through
    host memory); once the Work is done, any stream reads the result."""
    comm = Communicator(device="cuda", transport="c10d", timeout=30)
    assert comm.transport.startswith("c10d") and comm.device.type == "cuda"
    for dt in (torch.float32, torch.bfloat16):
        x = torch.randn(1_000_003, device="cuda").to(dt)
        ref = x.clone()
        w = comm.all_reduce_async(x, average=False)
        w.synchronize_stream()
        assert w.is_completed()
        assert torch.equal(x, ref)
    comm.close()


@pytest.mark.parametrize("transport", ["nccl", "c10d"])
@pytest.mark.parametrize("dtype", [torch.int8, torch.float8_e4m3fn])
def test_quantized_all_reduce_world_of_one(world_of_one, transport, dtype):
    """The 8-bit reduction on the comm stream (NCCL: self send/recv, the shard-sum and
    extra-sum kernels) or staged through Gloo: one rank's result is the oracle's."""
    from hpsgd_ext.reference import quantize_blocks, quantized_all_reduce_codes

    comm = Communicator(device="cuda", transport=transport, timeout=30)
    for n, extra in [(0, 2), (1, 0), (513, 3), (100_003, 1)]:
        g = torch.Generator().manual_seed(n)
        x = torch.randn(n, generator=g) * torch.logspace(-3, 3, n)
        if n > 1000:
            x[700] = float("inf")  # block 1: scale inf in, NaN out (0 * inf)
        codes, scale = quantize_blocks(x, dtype)
        want_codes, want_scales = quantized_all_reduce_codes(codes, scale)
        extras = torch.randn(extra, generator=g)
        c, s = codes.cuda(), torch.cat([scale, extras]).cuda()
        work = comm.quantized_all_reduce_async(c, s, extra)
        work.synchronize_stream()
        work.wait()
        assert torch.equal(c.cpu().view(torch.uint8), want_codes.view(torch.uint8)), n
        got = s.cpu()
        nb = scale.numel()
        assert torch.equal(torch.isnan(got[:nb]), torch.isnan(want_scales)), n
        ok = ~torch.isnan(want_scales)
        assert torch.equal(got[:nb][ok], want_scales[ok]) and torch.equal(got[nb:], extras), n
        if n > 1000:
            assert torch.isnan(got[1]), n
    assert comm.stats()["bytes"] == 0
    comm.close()
