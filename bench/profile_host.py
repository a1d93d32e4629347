"""Where the host's time goes, on CUDA: in a boundary of the hook (H=1, one rank,
NCCL) and in one cached round_step call over 200 tiny tensors. Prints
torch.profiler's host-side tables (CUDA runtime calls included, through CUPTI),
sorted by self time, so that a host cost the benchmarks report as one number
(`hpsgd-bench hook`, `hpsgd-bench kernels`) can be taken apart on a lent GPU.

    python bench/profile_host.py [--steps 50] [--calls 500] [--out DIR]
"""

from __future__ import annotations

import argparse
import os
import sys

import torch
from torch import nn
from torch.profiler import ProfilerActivity, profile

from hpsgd_ext import HPSGD, ops
from hpsgd_ext.launch import init_world_of_one


def _table(prof, title: str, out: str | None, rows: int = 25) -> None:
    text = prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=rows)
    print(f"== {title}\n{text}", flush=True)
    if out:
        with open(os.path.join(out, f"profile-{title}.txt"), "w") as f:
            f.write(text)


def boundary(steps: int, out: str | None) -> None:
    model = nn.Sequential(nn.Linear(256, 1024), nn.ReLU(), nn.Linear(1024, 1024), nn.ReLU(),
                          nn.Linear(1024, 10)).cuda()
    opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
    x, y = torch.randn(64, 256, device="cuda"), torch.randint(0, 10, (64,), device="cuda")
    hp = HPSGD(model, opt, sync_every=1)

    def step():
        opt.zero_grad(set_to_none=True)
        nn.functional.cross_entropy(model(x), y).backward()
        opt.step()

    for _ in range(20):
        step()
    torch.cuda.synchronize()
    before = hp.stats()
    with profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA]) as prof:
        for _ in range(steps):
            step()
        torch.cuda.current_stream().synchronize()
    after = hp.stats()
    rounds = after["rounds"] - before["rounds"]
    own = (after["boundary_seconds"] - before["boundary_seconds"]
           - (after["exposed_seconds"] - before["exposed_seconds"])) / max(rounds, 1)
    print(f"boundary: {rounds} rounds, {own * 1e6:.1f} us of host time per round (under the profiler)")
    _table(prof, "boundary", out)
    hp.close()


def round_step(calls: int, out: str | None) -> None:
    g = torch.Generator(device="cuda").manual_seed(1)
    ps = [torch.randn(8, device="cuda", generator=g) for _ in range(200)]
    an = [torch.randn(8, device="cuda", generator=g) for _ in range(200)]
    red = torch.randn(1600, device="cuda", generator=g).bfloat16()
    o, sent = torch.empty_like(red), red.clone()

    def call():
        ops.round_step(ps, an, red, o, lr=0.5, sent=sent)

    for _ in range(10):
        call()
    torch.cuda.synchronize()
    with profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA]) as prof:
        for _ in range(calls):
            call()
        torch.cuda.synchronize()
    _table(prof, "round_step", out)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--steps", type=int, default=50)
    ap.add_argument("--calls", type=int, default=500)
    ap.add_argument("--out", default=None)
    a = ap.parse_args(argv)
    if not torch.cuda.is_available():
        print("profile_host: no CUDA device", file=sys.stderr)
        return 2
    init_world_of_one()
    boundary(a.steps, a.out)
    round_step(a.calls, a.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
