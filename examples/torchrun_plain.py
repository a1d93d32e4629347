"""A plain training script with HPSGD, as a user writes it: run it with

    torchrun --standalone --nproc-per-node 2 examples/torchrun_plain.py --steps 50

(Gloo on CPU; pass --backend nccl --device cuda on GPUs). The loop is ordinary
PyTorch, with a per-step logging all-reduce beside HPSGD's rounds; HPSGD adds
four lines: build, synchronize, state_dict, close.
"""

from __future__ import annotations

import argparse
import json
import os

import torch
import torch.distributed as dist
from torch import nn

import hpsgd_ext


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--steps", type=int, default=50)
    ap.add_argument("--backend", default="gloo")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--out", default=None, help="folder for each rank's result (JSON) and the checkpoint")
    args = ap.parse_args()

    dist.init_process_group(args.backend)  # torchrun sets RANK, WORLD_SIZE, MASTER_ADDR
    rank, world = dist.get_rank(), dist.get_world_size()
    device = torch.device(args.device, int(os.environ.get("LOCAL_RANK", 0))) if args.device == "cuda" \
        else torch.device("cpu")
    torch.manual_seed(rank)  # different on purpose: HPSGD starts every rank from rank 0's model
    model = nn.Sequential(nn.Linear(16, 64), nn.ReLU(), nn.Linear(64, 4)).to(device)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-2)
    hp = hpsgd_ext.HPSGD(model, opt)  # sync_every="auto", replica="keep"

    gen = torch.Generator().manual_seed(1000 + rank)
    for step in range(args.steps):
        x = torch.randn(32, 16, generator=gen).to(device)
        y = (x[:, :4].argmax(1)).to(device)
        loss = nn.functional.cross_entropy(model(x), y)
        opt.zero_grad()
        loss.backward()
        opt.step()
        logged = loss.detach().clone()
        dist.all_reduce(logged)  # the user's own collective, beside HPSGD's rounds
        if rank == 0 and step % 10 == 0:
            print(f"step {step}: mean loss {logged.item() / world:.4f}", flush=True)

    hp.synchronize()  # every replica == the global model
    flat = torch.cat([p.detach().reshape(-1) for p in model.parameters()])
    everyone = [torch.empty_like(flat) for _ in range(world)]
    dist.all_gather(everyone, flat)
    agree = all(torch.equal(everyone[0], f) for f in everyone)
    if args.out:
        os.makedirs(args.out, exist_ok=True)
        if rank == 0:  # right after synchronize(): the same state on every rank
            torch.save({"model": model.state_dict(), "opt": opt.state_dict(), "hpsgd": hp.state_dict()},
                       os.path.join(args.out, "checkpoint.pt"))
        with open(os.path.join(args.out, f"rank{rank}.json"), "w") as f:
            json.dump({"rank": rank, "replicas_agree": agree, "stats": {
                k: v for k, v in hp.stats().items() if isinstance(v, (int, float))}}, f)
    hp.close()
    dist.destroy_process_group()
    return 0 if agree else 1


if __name__ == "__main__":
    raise SystemExit(main())
