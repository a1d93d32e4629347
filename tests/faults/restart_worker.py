"""A training job run by torch's elastic agent: checkpoints every CK steps (model,
optimizer, HPSGD state; atomic writes), resumes from the last one after a restart.
With KILL set, rank 1 SIGKILLs itself once, mid-window, after a checkpoint."""

from __future__ import annotations

import os
import signal

import torch
import torch.distributed as dist
from torch import nn

from hpsgd_ext import HPSGD
from hpsgd_ext.launch import init_from_env

STEPS, H, CK, KILL_AT = 30, 4, 12, 19


def _batch(rank, step):
    g = torch.Generator().manual_seed(10_000 * rank + step)
    return torch.randn(16, 8, generator=g), torch.randint(0, 3, (16,), generator=g)


def run(ck_dir: str, kill: bool) -> list[float]:
    rank, world = init_from_env("gloo", timeout_s=30)
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(8, 16), nn.Tanh(), nn.Linear(16, 3))
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    hp = HPSGD(model, opt, sync_every=H, replica="keep", outer_momentum=0.5, timeout=30)
    path = os.path.join(ck_dir, f"rank{rank}.pt")
    start = 0
    if os.path.exists(path):
        ck = torch.load(path, weights_only=True)
        model.load_state_dict(ck["model"])
        opt.load_state_dict(ck["opt"])
        hp.load_state_dict(ck["hpsgd"])
        start = ck["step"]
    for step in range(start, STEPS):
        x, y = _batch(rank, step)
        opt.zero_grad()
        nn.functional.cross_entropy(model(x), y).backward()
        opt.step()
        done = step + 1
        if done % CK == 0:
            dist.barrier()  # every rank checkpoints the same step
            tmp = path + ".tmp"
            torch.save({"step": done, "model": model.state_dict(), "opt": opt.state_dict(),
                        "hpsgd": hp.state_dict()}, tmp)
            os.replace(tmp, path)
        marker = os.path.join(ck_dir, "killed")
        if kill and rank == 1 and done == KILL_AT and not os.path.exists(marker):
            open(marker, "w").close()
            os.kill(os.getpid(), signal.SIGKILL)
    hp.synchronize()
    out = torch.cat([p.detach().reshape(-1) for p in model.parameters()])
    hp.close()
    return out.tolist()
