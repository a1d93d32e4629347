"""Hierarchical training with HPSGD: DDP or FSDP2 inside each node (fast links),
HPSGD across nodes (the slow network). Two nodes of 8 GPUs:

    torchrun --nnodes 2 --nproc-per-node 8 --rdzv-backend c10d --rdzv-endpoint HOST:29500 \\
        examples/torchrun_hierarchical.py --inside fsdp --backend nccl --device cuda

Two "nodes" of 2 CPU processes on one machine (Gloo; what CI runs):

    torchrun --standalone --nproc-per-node 4 examples/torchrun_hierarchical.py --per-node 2

The ranks form a DeviceMesh of shape (nodes, ranks per node): dim "intra" holds
the ranks of one node, dim "cross" the ranks at the same position on every node.
(torch's HSDP calls these "shard" and "replicate".) With FSDP2 each rank holds a
shard of every parameter and HPSGD averages it with the same shard on the other
nodes, so HPSGD's extra memory is per local shard too.
"""

from __future__ import annotations

import argparse
import json
import os

import torch
import torch.distributed as dist
from torch import nn
from torch.distributed.device_mesh import init_device_mesh
from torch.distributed.fsdp import fully_shard
from torch.distributed.tensor import DTensor
from torch.nn.parallel import DistributedDataParallel as DDP

import hpsgd_ext


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--inside", choices=("ddp", "fsdp"), default="ddp", help="data parallelism inside a node")
    ap.add_argument("--per-node", type=int, default=int(os.environ.get("LOCAL_WORLD_SIZE", 1)),
                    help="ranks per node (default: torchrun's --nproc-per-node)")
    ap.add_argument("--steps", type=int, default=50)
    ap.add_argument("--backend", default="gloo")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--out", default=None, help="folder for each rank's result (JSON) and HPSGD state")
    args = ap.parse_args()

    dist.init_process_group(args.backend)  # torchrun sets RANK, WORLD_SIZE, MASTER_ADDR
    rank, world = dist.get_rank(), dist.get_world_size()
    device = torch.device("cpu")
    if args.device == "cuda":
        device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", 0)))
        torch.cuda.set_device(device)
    # Every rank builds the whole mesh (all its groups, in the same order): torch's rule.
    mesh = init_device_mesh(device.type, (world // args.per_node, args.per_node), mesh_dim_names=("cross", "intra"))

    # The same start on every rank: FSDP2 shards each rank's own copy without a broadcast
    # (DDP broadcasts inside a node, HPSGD across nodes).
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(16, 64), nn.ReLU(), nn.Linear(64, 4)).to(device)
    if args.inside == "fsdp":
        for layer in model:
            if any(True for _ in layer.parameters()):
                fully_shard(layer, mesh=mesh["intra"])
        fully_shard(model, mesh=mesh["intra"])
        net = model
    else:
        net = DDP(model, process_group=mesh.get_group("intra"),
                  device_ids=[device.index] if device.type == "cuda" else None)
    opt = torch.optim.AdamW(net.parameters(), lr=1e-2)
    # After fully_shard / DDP. A fixed window: every cross group then closes its rounds at
    # the same steps, so a node's replicas stay bit-identical (README, "Many nodes").
    hp = hpsgd_ext.HPSGD(net, opt, mesh=mesh, dim="cross", sync_every=4)

    gen = torch.Generator().manual_seed(1000 + rank)  # each rank its own data
    for step in range(args.steps):
        x = torch.randn(32, 16, generator=gen).to(device)
        y = x[:, :4].argmax(1)
        loss = nn.functional.cross_entropy(net(x), y)
        opt.zero_grad()
        loss.backward()
        opt.step()
        if rank == 0 and step % 10 == 0:
            print(f"step {step}: loss {loss.item():.4f}", flush=True)

    hp.synchronize()  # every replica == the global model, on every node
    # The whole model (FSDP2's shards gathered inside each node) is the same on every rank.
    flat = torch.cat([(p.full_tensor() if isinstance(p, DTensor) else p).detach().reshape(-1)
                      for p in net.parameters()])
    everyone = [torch.empty_like(flat) for _ in range(world)]
    dist.all_gather(everyone, flat)
    agree = all(torch.equal(everyone[0], f) for f in everyone)
    stats = hp.stats()
    if rank == 0:
        print(f"replicas agree: {agree}; HPSGD adds {stats['extra_bytes_per_param']:.1f} bytes per local "
              "parameter element", flush=True)
    if args.out:
        os.makedirs(args.out, exist_ok=True)
        # HPSGD's state holds this rank's shard: each rank saves its own (save the
        # FSDP2 model and optimizer with torch.distributed.checkpoint).
        torch.save(hp.state_dict(), os.path.join(args.out, f"hpsgd-rank{rank}.pt"))
        with open(os.path.join(args.out, f"rank{rank}.json"), "w") as f:
            json.dump({"rank": rank, "replicas_agree": agree,
                       "stats": {k: v for k, v in stats.items() if isinstance(v, (int, float))}}, f)
    hp.close()
    dist.destroy_process_group()
    return 0 if agree else 1


if __name__ == "__main__":
    raise SystemExit(main())
