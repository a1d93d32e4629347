"""Rank bodies of tests/test_hierarchy_multiprocess.py: HPSGD over subgroups."""

from __future__ import annotations

import torch
import torch.distributed as dist
from torch.nn.parallel import DistributedDataParallel as DDP

from hpsgd_ext import HPSGD
from hook_workers import flat_params, make_model, same_on_every_rank, train


def ddp_inside_hpsgd_across(rank, world, sync_every, steps):
    """4 ranks as 2 "nodes" of 2: DDP over {0,1} and {2,3}, HPSGD over {0,2} and
    {1,3}. Every rank creates every group in the same order (torch's rule); HPSGD's
    own groups are made by each cross group's members only."""
    nodes = [dist.new_group([0, 1]), dist.new_group([2, 3])]
    crosses = [dist.new_group([0, 2]), dist.new_group([1, 3])]
    intra, cross = nodes[rank // 2], crosses[rank % 2]
    model = DDP(make_model(seed=rank), process_group=intra)
    opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    hp = HPSGD(model, opt, process_group=cross, sync_every=sync_every, timeout=30)
    # each node trains on its own data; DDP averages inside the node
    train(model, opt, rank // 2 * 7 + rank % 2, steps)
    hp.synchronize()
    out = flat_params(model.module)
    st = hp.stats()
    hp.close()
    everyone = [torch.empty_like(out) for _ in range(world)]
    dist.all_gather(everyone, out)
    return {"identical": same_on_every_rank(out, world), "rounds": st["rounds"],
            "max_diff": max((e - everyone[0]).abs().max().item() for e in everyone),
            "moved": (out - flat_params(make_model(seed=0))).abs().max().item()}
