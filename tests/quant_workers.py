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
