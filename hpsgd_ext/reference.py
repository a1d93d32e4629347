"""Pure-PyTorch oracle of the fused ops: the same rule, one tensor at a time, in
float32, each output cast to its own dtype on store. Slow and obvious on purpose;
tests compare every kernel against it.
"""

from __future__ import annotations

from typing import Optional, Sequence

import torch

__all__ = ["flatten", "unflatten", "delta_flatten", "merge", "round_step", "ReferenceHPSGD",
           "quantize_blocks", "dequantize_blocks", "quantized_all_reduce", "quantized_all_reduce_codes",
           "quantized_shard_sum", "shard_bounds"]


def _segments(tensors: Sequence[torch.Tensor], flat: Optional[torch.Tensor]):
    """Yield (index, tensor, segment view of ``flat`` or None)."""
    off = 0
    for i, t in enumerate(tensors):
        n = t.numel()
        yield i, t, None if flat is None else flat.view(-1)[off:off + n]
        off += n


@torch.no_grad()
def round_step(params, anchors, reduced, out, lr=1.0, momentum_buffers=None,
               momentum=0.0, nesterov=False, sent=None, divisor=1, verdict=None,
               out_scales=None, reduced_scales=None, *, write_params=True, has_anchor=True):
    """The full rule; the other ops are special cases of it (see below).

    The float32 operations are the kernels' (csrc/rule.h), in the same order:
    ``d = p - a - D*s``, ``w = d / D`` (a true division by a tensor: torch turns a
    division by a scalar into a multiplication by its reciprocal on CUDA).

    ``out`` of an 8-bit dtype: the rule in float32 (``reduced`` dequantised with
    ``reduced_scales``), then :func:`quantize_blocks` of the outgoing change into
    ``out`` and ``out_scales``, and ``sent`` = what the codes carry.
    """
    if out is not None and out.dtype in _QMAX:
        n = sum(p.numel() for p in params)
        nb = (n + QUANT_BLOCK - 1) // QUANT_BLOCK
        red = None if reduced is None else dequantize_blocks(reduced[:n], reduced_scales[:nb])
        w = torch.empty(n, dtype=torch.float32, device=out.device)
        round_step(params, anchors, red, w, lr, momentum_buffers, momentum, nesterov, sent,
                   divisor, verdict)
        codes, scale = quantize_blocks(w, out.dtype)
        out[:n].copy_(codes)
        out_scales[:nb].copy_(scale)
        if sent is not None:
            sent[:n].copy_(dequantize_blocks(codes, scale))
        return out
    if nesterov and momentum_buffers is None:
        raise ValueError("nesterov needs momentum_buffers")
    if int(divisor) < 1:
        raise ValueError(f"divisor is {divisor}; expected an integer >= 1")
    if verdict is not None and reduced is None:
        raise ValueError("verdict is given but reduced is None")
    # The oracle may read the verdict on the host; the kernels never do.
    discard = False
    if verdict is not None:
        v = float(verdict.reshape(-1)[0].item())
        discard = not (v != 0.0 and v == v)
    red = list(_segments(params, reduced))
    outs = list(_segments(params, out))
    sents = list(_segments(params, sent))
    for i, p, _ in _segments(params, None):
        shape = p.shape
        p32 = p.reshape(-1).float()
        a32 = anchors[i].reshape(-1).float() if has_anchor else torch.zeros_like(p32)
        if discard:
            # Not merged, window discarded: a and m untouched, p = a, out = sent = 0.
            if out is not None:
                outs[i][2].zero_()
            if write_params:
                p.copy_(a32.view(shape))
            if sent is not None:
                sents[i][2].zero_()
            continue
        D = torch.full_like(p32, float(divisor))
        s32 = sents[i][2].float() if sent is not None else torch.zeros_like(p32)
        d = p32 - a32 - D * s32
        w = d / D
        if out is not None:
            outs[i][2].copy_(w)
        step = torch.zeros_like(p32)
        if reduced is not None:
            r = red[i][2].float()
            if momentum_buffers is not None:
                m = momentum * momentum_buffers[i].reshape(-1).float() + r
                momentum_buffers[i].copy_(m.view(shape))
                step = lr * (r + momentum * m) if nesterov else lr * m
            else:
                step = lr * r
        a_new = a32 + step if has_anchor else step
        if has_anchor and reduced is not None:
            anchors[i].copy_(a_new.view(shape))
        if write_params:
            p.copy_((a_new + d if sent is not None else a_new).view(shape))
        if sent is not None:
            sents[i][2].copy_(w)
    return out


def flatten(tensors, out):
    return round_step(tensors, None, None, out, write_params=False, has_anchor=False)


def unflatten(flat, tensors):
    round_step(tensors, None, flat, None, has_anchor=False)


def delta_flatten(params, anchors, out):
    return round_step(params, anchors, None, out, write_params=False)


def merge(params, anchors, reduced, lr=1.0):
    round_step(params, anchors, reduced, None, lr=lr)


class ReferenceHPSGD:
    """HPSGD with a fixed window, written with plain ``torch.distributed`` and the
    pure-torch rule above: ``torch.cat`` of the deltas, ``dist.all_reduce(SUM,
    async_op=True)``, a division by the world size, per-tensor arithmetic. No fused
    op, no communicator. Tests prove :class:`hpsgd_ext.HPSGD` equals it.

    ``fragments`` > 1: streaming rounds (docs/round-protocol.md, "Fragments"), each
    boundary sends one fragment's change and merges the previous boundary's round
    (the fragment before it), written out call by call.

    ``comm_dtype`` torch.int8 or torch.float8_e4m3fn: 8-bit wires (docs/round-protocol.md,
    "8-bit wires"): the change is computed in float32, quantised per block,
    ``sent`` holds what the wire carried (dequantised), and the reduction is
    :func:`quantized_all_reduce` (done when issued; merged at the next boundary as
    any round). ``sent_total`` sums, in float64, everything this rank put on the
    wire: error feedback's ledger (with "keep", ``sent_total + (p - a - sent)`` is
    the sum of this rank's own optimizer steps).
    """

    def __init__(self, params, optimizer, sync_every: int, replica: str = "keep",
                 outer_lr: float = 1.0, outer_momentum: float = 0.0, nesterov: bool = False,
                 comm_dtype=None, group=None, fragments: int = 1):
        import torch.distributed as dist

        from .tracking import split_fragments  # the layout only: which tensors a round carries

        self.dist, self.group = dist, group
        self.params = [p for p in params if p.requires_grad]
        self.H, self.replica = sync_every, replica
        self.lr, self.mu, self.nesterov = outer_lr, outer_momentum, nesterov
        src = dist.get_global_rank(group, 0) if group is not None else 0
        with torch.no_grad():
            for p in self.params:
                dist.broadcast(p.data, src=src, group=group)
        adt = lambda p: torch.float32 if p.dtype != torch.float32 else p.dtype  # noqa: E731
        self.anchors = [p.detach().to(adt(p), copy=True) for p in self.params]
        self.wire = comm_dtype if comm_dtype in _QMAX else None  # 8-bit: quantised on the wire
        self.cdt = torch.float32 if self.wire is not None else (comm_dtype or self.params[0].dtype)
        self.moms = [torch.zeros_like(a) for a in self.anchors] if outer_momentum > 0 else None
        of = split_fragments([p.numel() for p in self.params], fragments)
        self.fragments = [[i for i, f in enumerate(of) if f == k] for k in range(fragments)]
        dev = self.params[0].device
        # What each fragment last sent, flat over its tensors ("keep" only).
        self.sent = [torch.zeros(sum(self.params[i].numel() for i in idx), dtype=self.cdt, device=dev)
                     if replica == "keep" else None for idx in self.fragments]
        self.pending = None  # (work or None when done at issue, buffer)
        self.steps = self.rounds = 0
        self.sent_total = torch.zeros(sum(p.numel() for p in self.params), dtype=torch.float64, device=dev)
        self.handle = optimizer.register_step_post_hook(lambda *_: self._step())

    def _step(self):
        self.steps += 1
        if self.steps % self.H == 0:
            self._boundary()

    def _reduced(self):
        if self.pending is None:
            return None
        work, buf = self.pending
        if work is not None:
            work.wait()
        return buf.div_(self.dist.get_world_size(self.group))

    def _of(self, k):
        """Fragment k's params, anchors, outer momenta and ``sent``."""
        idx = self.fragments[k]
        moms = [self.moms[i] for i in idx] if self.moms is not None else None
        return [self.params[i] for i in idx], [self.anchors[i] for i in idx], moms, self.sent[k]

    @torch.no_grad()
    def _boundary(self, final: bool = False):
        reduced = self._reduced()
        F, k = len(self.fragments), self.rounds
        issue, merged = k % F, (k - 1) % F
        if F > 1 and reduced is not None:
            # Merge only: the replica keeps what it has not sent ("keep"; or equals the
            # global model: "reset", or a final merge); then nothing of it is in flight.
            ps, an, moms, sent = self._of(merged)
            round_step(ps, an, reduced, torch.empty_like(reduced), lr=self.lr, momentum_buffers=moms,
                       momentum=self.mu, nesterov=self.nesterov, sent=None if final else sent)
            if sent is not None:
                sent.zero_()
            reduced = None
        ps, an, moms, sent = self._of(issue)
        out = torch.empty(sum(p.numel() for p in ps), dtype=self.cdt, device=self.params[0].device)
        round_step(ps, an, reduced, out, lr=self.lr, momentum_buffers=moms,
                   momentum=self.mu, nesterov=self.nesterov, sent=sent)
        if self.wire is None:
            self.pending = (self.dist.all_reduce(out, op=self.dist.ReduceOp.SUM, group=self.group,
                                                 async_op=True), out)
            carried = out
        else:
            carried = dequantize_blocks(*quantize_blocks(out, self.wire))
            if sent is not None:
                sent.copy_(carried)  # what the wire carries; the rest is sent next round
            self.pending = (None, quantized_all_reduce(out, self.wire, self.group)[0])
        first = sum(self.params[i].numel() for i in range(self.fragments[issue][0]))
        self.sent_total[first:first + out.numel()] += carried.double()
        self.rounds += 1

    @torch.no_grad()
    def synchronize(self):
        for j in range(len(self.fragments)):  # every fragment sends what it has not sent
            self._boundary(final=j > 0)
        reduced = self._reduced()
        ps, an, moms, sent = self._of((self.rounds - 1) % len(self.fragments))
        round_step(ps, an, reduced, torch.empty_like(reduced), lr=self.lr, momentum_buffers=moms,
                   momentum=self.mu, nesterov=self.nesterov)
        if sent is not None:
            sent.zero_()
        self.pending = None
        self.steps = 0

    def close(self):
        self.handle.remove()


# --------------------------------------------------------------------------- 8-bit wires (issue 14)
# The rule the fused kernels and the communicator will follow (docs/round-protocol.md,
# "8-bit wires"); here written with plain torch ops, one step at a time.
QUANT_BLOCK = 512  # elements per scale
_QMAX = {torch.int8: 127.0, torch.float8_e4m3fn: 448.0}


def quantize_blocks(x: torch.Tensor, dtype: torch.dtype, block: int = QUANT_BLOCK):
    """``x`` (1-D, any float dtype) as ``dtype`` codes and one float32 scale per block
    of ``block`` elements: scale = absmax / qmax (qmax 127 for int8, 448 for
    float8_e4m3fn), code = x / scale rounded to nearest even (int8: clamped to
    +-127, so 0 is exact and the range is symmetric). An all-zero block has scale 0
    and codes 0; a non-finite element makes its block's scale non-finite and its
    codes 0, so the dequantised block is NaN and the verdict refuses the round
    (csrc/quant.h, NOTE: [8-bit codec])."""
    if dtype not in _QMAX:
        raise TypeError(f"quantize_blocks: dtype is {dtype}; expected torch.int8 or torch.float8_e4m3fn")
    x32 = x.reshape(-1).float()
    n = x32.numel()
    nb = (n + block - 1) // block
    padded = torch.zeros(nb * block, dtype=torch.float32, device=x.device)
    padded[:n] = x32
    blocks = padded.view(nb, block)
    amax = blocks.abs().amax(dim=1)
    scale = amax / torch.full_like(amax, _QMAX[dtype])  # a true division, as in the kernels
    safe = torch.where(scale == 0, torch.ones_like(scale), scale)
    v = blocks / safe[:, None]
    v = torch.where(torch.isfinite(scale)[:, None], v, torch.zeros_like(v))  # never a NaN code
    if dtype == torch.int8:
        codes = v.round().clamp(-127, 127).to(torch.int8)
    else:  # clamped: a subnormal scale rounds, and |v| may pass 448 (csrc/quant.h)
        codes = v.clamp(-448.0, 448.0).to(torch.float8_e4m3fn)
    return codes.reshape(-1)[:n].contiguous(), scale


def dequantize_blocks(codes: torch.Tensor, scale: torch.Tensor, block: int = QUANT_BLOCK) -> torch.Tensor:
    """float32 ``codes * scale`` of their block (the inverse of :func:`quantize_blocks`)."""
    n = codes.numel()
    per = scale.repeat_interleave(block)[:n]
    return codes.float() * per


def quantized_all_reduce(x: torch.Tensor, dtype: torch.dtype, group=None, block: int = QUANT_BLOCK):
    """The sum over the ranks of ``x`` (1-D float32, the same length everywhere) with
    8-bit codes on the wire and never a sum in 8 bits:

    1. every rank quantises ``x`` (blocks of ``block`` with a float32 scale each);
    2. the blocks are cut into one contiguous shard per rank and exchanged by
       all-to-all (rank j receives every rank's shard j): a reduce-scatter;
    3. rank j dequantises what it received and sums it in float32, in rank order;
    4. rank j quantises its summed shard again (the owner knows this second
       quantisation's error exactly) and the shards are all-gathered.

    Steps 2-4 are :func:`quantized_all_reduce_codes`. Returns (the dequantised sum on
    every rank, this rank's re-quantisation error over the whole buffer: non-zero on
    its own shard only, float32). Bytes on the wire per rank: about 2 (N-1)/N (n + 4
    n/block), against 8 (N-1)/N n for a ring all-reduce in float32."""
    codes, scale = quantize_blocks(x, dtype, block)
    out_codes, out_scales, (lo, hi), mine = _reduce_codes(codes, scale, group, block)
    out = dequantize_blocks(out_codes, out_scales, block)
    error = torch.zeros(x.numel(), dtype=torch.float32, device=x.device)
    error[lo:hi] = mine - out[lo:hi]
    return out, error


def quantized_all_reduce_codes(codes: torch.Tensor, scale: torch.Tensor, group=None,
                               block: int = QUANT_BLOCK):
    """Steps 2-4 of :func:`quantized_all_reduce` from codes and scales already made
    (what ``Communicator.quantized_all_reduce_async`` does): returns the
    re-quantised sum's (codes, scales), the same on every rank. Quantising a
    dequantised block does not always give back its scale (``(s * 127) / 127`` is
    not ``s`` for about 1% of floats), so the communicator is tested against this."""
    out_codes, out_scales, _, _ = _reduce_codes(codes, scale, group, block)
    return out_codes, out_scales


def quantized_shard_sum(codes: torch.Tensor, scale: torch.Tensor, sources: int,
                        block: int = QUANT_BLOCK):
    """The owner's step (``hpsgd.quantized_shard_sum``): ``codes`` holds ``sources``
    shards of equal length one after the other (rank order), ``scale`` their scales
    likewise; dequantise each, sum in float32 from 0 in source order, re-quantise.
    Returns (codes, scales, the float32 sum)."""
    m, k = codes.numel() // sources, scale.numel() // sources
    mine = torch.zeros(m, dtype=torch.float32, device=codes.device)
    for s in range(sources):  # rank order
        mine += dequantize_blocks(codes[s * m:(s + 1) * m], scale[s * k:(s + 1) * k], block)
    q, sc = quantize_blocks(mine, codes.dtype, block)
    return q, sc, mine


def shard_bounds(n: int, world: int, block: int = QUANT_BLOCK):
    """Each rank's shard of an ``n``-element buffer: [(first block, end block),
    ...], [(first element, end element), ...]; ceil(blocks / world) blocks each, the
    last shards short or empty."""
    nb = (n + block - 1) // block
    per = (nb + world - 1) // world
    blocks = [(min(r * per, nb), min((r + 1) * per, nb)) for r in range(world)]
    return blocks, [(min(lo * block, n), min(hi * block, n)) for lo, hi in blocks]


def _reduce_codes(codes, scale, group, block):
    import torch.distributed as dist

    world, me = dist.get_world_size(group), dist.get_rank(group)
    dtype = codes.dtype
    blocks, bounds = shard_bounds(codes.numel(), world, block)
    sizes = [b - a for a, b in bounds]  # elements of each shard
    nblk = [hi - lo for lo, hi in blocks]  # its scales
    # Reduce-scatter: rank j receives every rank's shard j, codes as bytes (Gloo has
    # no 8-bit float type) and their scales.
    got = _exchange(codes.view(torch.uint8), sizes, [sizes[me]] * world, group)
    got_scales = _exchange(scale, nblk, [nblk[me]] * world, group)
    q2, s2, mine = quantized_shard_sum(got.view(dtype), got_scales, world, block)
    # All-gather: every rank's re-quantised shard to every rank.
    shards = _exchange(q2.view(torch.uint8).repeat(world), [sizes[me]] * world, sizes, group)
    scales = _exchange(s2.repeat(world), [nblk[me]] * world, nblk, group)
    return shards.view(dtype), scales, bounds[me], mine


def _exchange(send: torch.Tensor, send_sizes: list[int], recv_sizes: list[int], group) -> torch.Tensor:
    """One all-to-all with per-rank sizes (Gloo's list all_to_all wants equal sizes)."""
    import torch.distributed as dist

    recv = torch.empty(sum(recv_sizes), dtype=send.dtype, device=send.device)
    dist.all_to_all_single(recv, send.contiguous(), output_split_sizes=recv_sizes,
                           input_split_sizes=send_sizes, group=group)
    return recv
