"""Rank bodies of tests/test_quantized_reduce_multiprocess.py."""

from __future__ import annotations

import torch
import torch.distributed as dist

from hpsgd_ext.reference import QUANT_BLOCK, dequantize_blocks, quantize_blocks, quantized_all_reduce


def _gather(t: torch.Tensor, world: int) -> list[torch.Tensor]:
    out = [torch.empty_like(t) for _ in range(world)]
    dist.all_gather(out, t)
    return out


def reduce_against_float64_all(rank, world, cases):
    """Each (dtype name, n) of ``cases`` in one launch of the ranks."""
    return [dict(reduce_against_float64(rank, world, d, n), case=(d, n)) for d, n in cases]


def reduce_against_float64(rank, world, dtype_name, n):
    dtype = getattr(torch, dtype_name)
    g = torch.Generator().manual_seed(100 + rank)
    # Magnitudes that differ by block and by rank (the scale is per block and per rank).
    x = torch.randn(n, generator=g) * torch.logspace(-3, 2, n).flip(0) * (1 + rank)
    if n > 3:
        x[3] = 0.0
    out, error = quantized_all_reduce(x, dtype)
    xs = _gather(x, world)
    exact = torch.stack([t.double() for t in xs]).sum(0)
    scales = [quantize_blocks(t, dtype)[1] for t in xs]
    per = lambda s: s.double().repeat_interleave(QUANT_BLOCK)[:n]  # noqa: E731
    s2 = per(quantize_blocks(exact.float(), dtype)[1]) * 1.01  # the re-quantised sum's scale, a bit of slack
    if dtype == torch.int8:  # half a step of each quantisation
        bound = sum(per(s) / 2 for s in scales) + s2 / 2
    else:  # e4m3: 3 mantissa bits (half an ulp: 2^-4 relative), subnormal steps of 2^-9 scale
        bound = sum(t.double().abs() * 2 ** -4 + per(s) * 2 ** -10 for t, s in zip(xs, scales)) \
            + exact.abs() * 2 ** -4 + s2 * 2 ** -10
    bound = bound * (1 + 1e-5) + 1e-30
    # What the owners re-quantised away, summed back: the float32 sum of the dequantised inputs.
    deq_sum = torch.stack([dequantize_blocks(*quantize_blocks(t, dtype)) for t in xs]).sum(0)
    err_all = error.clone()
    dist.all_reduce(err_all)
    return {"within": bool(((out.double() - exact).abs() <= bound).all()),
            "worst": ((out.double() - exact).abs() / bound).max().item() if n else 0.0,
            "same_everywhere": all(torch.equal(out, o) for o in _gather(out, world)),
            "feedback_gap": ((out + err_all) - deq_sum).abs().max().item() if n else 0.0,
            "scale": max(s.max().item() for s in scales) if n else 0.0}


def reference_error_feedback(rank, world, dtype_name, steps):
    """ReferenceHPSGD with an 8-bit wire and the keep rule: what this rank put on the
    wire (sent_total) plus what it still holds (p - a - sent) equals the sum of its
    own optimizer steps, whatever the quantisation rounded away; the run stays close
    to the float32 wire's and differs from it (the wire is not ignored)."""
    from hook_workers import flat_params, make_model, train
    from hpsgd_ext.reference import ReferenceHPSGD
    from oracle_workers import StepRecorder

    out = {}
    for wire in (getattr(torch, dtype_name), None):
        model = make_model(seed=rank)
        opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
        rec = StepRecorder(model.parameters(), opt)  # before the reference: optimizer steps only
        ref = ReferenceHPSGD(model.parameters(), opt, sync_every=2, replica="keep", comm_dtype=wire)
        train(model, opt, rank, steps)  # an odd count: a window in progress at the end
        p = flat_params(model).double()
        a = torch.cat([t.reshape(-1) for t in ref.anchors]).double()
        held = p - a - torch.cat(ref.sent).double()
        gap = (ref.sent_total + held - rec.flat()).abs().max().item()
        out[wire] = (gap, rec.flat().abs().max().item(), flat_params(model))
        ref.close()
        rec.remove()
    gap, scale, q = out[getattr(torch, dtype_name)]
    return {"ledger_gap": gap, "moved": scale, "vs_fp32_wire": (q - out[None][2]).abs().max().item()}


# --------------------------------------------------------------------------- the communicator's 8-bit reduction
def _bits_equal(a: torch.Tensor, b: torch.Tensor) -> bool:
    """The same bytes; NaN matches any NaN (the oracle's NaN payload is torch's)."""
    if a.shape != b.shape or a.dtype != b.dtype:
        return False
    if a.dtype == torch.float32:
        na, nb = torch.isnan(a), torch.isnan(b)
        return torch.equal(na, nb) and torch.equal(a[~na].view(torch.int32), b[~nb].view(torch.int32))
    return torch.equal(a.view(torch.uint8), b.view(torch.uint8))


def _inputs(rank, dtype, n, extra, bad_block, case):
    g = torch.Generator().manual_seed(1000 * case + rank)
    x = torch.randn(n, generator=g) * torch.logspace(-2, 2, n, dtype=torch.float32) * (1 + rank)
    if n > 600:
        x[512:1024] = 0.0  # an all-zero block: scale 0 on every rank
    if bad_block is not None and rank == 1 % max(1, dist.get_world_size()):
        x[bad_block * QUANT_BLOCK] = float("inf")  # scale inf, codes 0
    codes, scale = quantize_blocks(x, dtype)
    extras = torch.randn(extra, generator=g) * 10 ** rank
    return codes, torch.cat([scale, extras])


def _expected(codes, scales, nb, extra, world):
    from hpsgd_ext.reference import quantized_all_reduce_codes

    want_codes, want_scales = quantized_all_reduce_codes(codes, scales[:nb].contiguous())
    total = torch.zeros(extra)
    for t in _gather(scales[nb:].contiguous(), world):  # rank order, float32, from 0
        total = total + t
    return want_codes, torch.cat([want_scales, total])


def comm_quantized_cases(rank, world, cases, device="cpu"):
    """Each (dtype name, n, extra, non-finite block or None) through
    Communicator.quantized_all_reduce_async against the oracle started from the
    same codes: the same bytes, on every rank; bytes counted as sent. ``device``
    "cuda": the buffers on the GPU, reduced by the c10d transport over Gloo."""
    from hpsgd_ext import Communicator
    from hpsgd_ext.reference import shard_bounds

    if device == "cuda":
        torch.cuda.set_device(0)
        comm = Communicator(device="cuda", transport="c10d", timeout=30)
    else:
        comm = Communicator(timeout=30)
    out = []
    for i, (dtype_name, n, extra, bad) in enumerate(cases):
        dtype = getattr(torch, dtype_name)
        codes, scales = _inputs(rank, dtype, n, extra, bad, i)
        nb = (n + QUANT_BLOCK - 1) // QUANT_BLOCK
        want_codes, want_scales = _expected(codes, scales, nb, extra, world)
        before = comm.stats()["bytes"]
        dev_codes, dev_scales = codes.to(device), scales.to(device)
        work = comm.quantized_all_reduce_async(dev_codes, dev_scales, extra)
        work.wait()
        codes, scales = dev_codes.cpu(), dev_scales.cpu()
        blocks, bounds = shard_bounds(n, world)
        sizes = [b - a for a, b in bounds]
        nblk = [b - a for a, b in blocks]
        sent = sum(sizes[d] + 4 * (nblk[d] + extra) for d in range(world) if d != rank)
        if nb:
            sent += (world - 1) * (sizes[rank] + 4 * nblk[rank])
        everyone = _gather(torch.cat([codes.view(torch.uint8), scales.view(torch.uint8)]), world)
        out.append({
            "case": (dtype_name, n, extra, bad),
            "codes": _bits_equal(codes, want_codes),
            "scales": _bits_equal(scales, want_scales),
            "same_everywhere": all(torch.equal(everyone[0], e) for e in everyone),
            "bytes": (comm.stats()["bytes"] - before, work.bytes, sent),
            "nan_scale": bool(torch.isnan(scales[bad]).item()) if bad is not None else None,
            "finite_elsewhere": bool(torch.isfinite(torch.cat([scales[:bad], scales[bad + 1:nb]])).all())
            if bad is not None else None,
        })
    comm.close()
    return out


def comm_quantized_order(rank, world):
    """Two 8-bit reductions and an all_reduce issued back to back, nobody waiting in
    between: each lands what it would alone, in issue order."""
    from hpsgd_ext import Communicator

    comm = Communicator(timeout=30)
    a = _inputs(rank, torch.int8, 5000, 3, None, 1)
    b = _inputs(rank, torch.float8_e4m3fn, 1030, 0, None, 2)
    flat = torch.full((777,), float(rank + 1))
    want_a = _expected(*a, 10, 3, world)
    want_b = _expected(*b, 3, 0, world)
    works = [comm.quantized_all_reduce_async(*a, 3), comm.quantized_all_reduce_async(*b),
             comm.all_reduce_async(flat, average=False)]
    works[-1].wait()
    done = [w.is_completed() for w in works]
    return {"done": done, "seq": [w.seq for w in works],
            "a": _bits_equal(a[0], want_a[0]) and _bits_equal(a[1], want_a[1]),
            "b": _bits_equal(b[0], want_b[0]) and _bits_equal(b[1], want_b[1]),
            "flat": bool((flat == world * (world + 1) / 2).all())}


def comm_quantized_silent_rank(rank, world, timeout):
    """The last rank never calls: the others' Work fails with CommTimeoutError
    within the deadline, naming the collective."""
    import time

    import hpsgd_ext
    from hpsgd_ext import Communicator

    comm = Communicator(timeout=timeout)
    if rank == world - 1:
        time.sleep(timeout + 3)
        return "silent"
    codes, scales = _inputs(rank, torch.int8, 3000, 2, None, 0)
    t0 = time.monotonic()
    work = comm.quantized_all_reduce_async(codes, scales, 2)
    # Issued before the first one's all-gather could be: it waits for it, within its
    # own deadline, and never reaches the group out of order.
    try:
        comm.all_reduce_async(torch.ones(3))
        issue = None
    except hpsgd_ext.CommTimeoutError:
        issue = time.monotonic() - t0
    try:
        work.wait()
    except hpsgd_ext.CommTimeoutError as e:
        return {"raised": "CommTimeoutError", "after": time.monotonic() - t0, "message": str(e),
                "next_issue_raised_after": issue}
    return {"raised": None}


def eight_bit_wire_equals_reference(rank, world, dtype_name, H, steps):
    """HPSGD with an 8-bit wire (the fused quantising step, the communicator's
    8-bit reduction) against ReferenceHPSGD with the same wire, against HPSGD with
    a float32 wire (which must differ: the wire is not ignored), and the bytes."""
    from hook_workers import same_on_every_rank
    from oracle_workers import train_with_wires

    wire = getattr(torch, dtype_name)
    out = train_with_wires(rank, H, steps, wire)
    (q, s8), (ref, _), (fp, s32) = (out[k] for k in (("hpsgd", wire), ("reference", wire),
                                                     ("hpsgd", torch.float32)))
    return {"max_diff_ref": (q - ref).abs().max().item(),
            "max_diff_fp32_wire": (q - fp).abs().max().item(),
            "identical": same_on_every_rank(q, world),
            "numel": q.numel(), "rounds": s8["rounds"],
            "bytes_8bit": s8["bytes_reduced"], "bytes_fp32": s32["bytes_reduced"],
            "comm_bytes_8bit": s8["comm"]["bytes"], "comm_bytes_fp32": s32["comm"]["bytes"],
            "extra_flats": s8["extra_bytes_by_buffer"]["flats"],
            "extra_sent": s8["extra_bytes_by_buffer"]["sent"]}
