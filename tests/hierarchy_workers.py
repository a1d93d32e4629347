"""Rank bodies of tests/test_hierarchy_multiprocess.py: HPSGD over subgroups."""

from __future__ import annotations

import copy
import io
import time

import torch
import torch.distributed as dist
from torch.nn.parallel import DistributedDataParallel as DDP

from hook_workers import flat_params, make_model, same_on_every_rank, train
from hpsgd_ext import HPSGD
from hpsgd_ext.reference import ReferenceHPSGD


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


def _try_build(**kw):
    """(error type, message, seconds) of building an HPSGD over a fresh model;
    type None when it was built (and is closed again)."""
    model = make_model(seed=0)
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    t0 = time.monotonic()
    try:
        HPSGD(model, opt, sync_every=2, **kw).close()
        return None, "", time.monotonic() - t0
    except Exception as e:  # noqa: BLE001 - the test inspects it
        return type(e).__name__, str(e), time.monotonic() - t0


def mesh_arguments(rank, world):
    """Every way of naming the ranks wrongly, on one rank (a 1x1 mesh)."""
    from torch.distributed.device_mesh import init_device_mesh

    mesh = init_device_mesh("cpu", (1, 1), mesh_dim_names=("cross", "intra"))
    cases = {"both": dict(process_group=dist.group.WORLD, mesh=mesh, dim="cross"),
             "unknown_name": dict(mesh=mesh, dim="replicate"), "out_of_range": dict(mesh=mesh, dim=2),
             "no_dim_2d": dict(mesh=mesh), "dim_alone": dict(dim="cross"), "not_a_mesh": dict(mesh="cross", dim=0),
             "bad_dim_type": dict(mesh=mesh, dim=1.0),
             "by_name": dict(mesh=mesh, dim="cross"), "by_index": dict(mesh=mesh, dim=1),
             "one_dim": dict(mesh=mesh["intra"])}
    return {name: _try_build(timeout=10, **kw)[:2] for name, kw in cases.items()}


def not_a_member(rank, world):
    """Rank 2 passes the group {0, 1}, which new_group handed it as NON_GROUP_MEMBER."""
    group = dist.new_group([0, 1])
    return _try_build(process_group=group, timeout=5)


def disagreeing_groups(rank, world, case, timeout):
    """``cycle`` (3 ranks): rank r passes {r, r+1 mod 3}; nobody's group can form.
    ``wrong_dim`` (4 ranks, a 2x2 mesh): rank 1 passes its intra group {0, 1}
    instead of its cross group {1, 3}; ranks 0 and 2 agree and build."""
    if case == "cycle":
        groups = [dist.new_group(sorted([r, (r + 1) % world])) for r in range(world)]
        out = _try_build(process_group=groups[rank], timeout=timeout)
    else:
        from torch.distributed.device_mesh import init_device_mesh

        mesh = init_device_mesh("cpu", (2, 2), mesh_dim_names=("cross", "intra"))
        out = _try_build(mesh=mesh, dim="intra" if rank == 1 else "cross", timeout=timeout)
    dist.barrier()  # rank 0 holds the store the others still read from
    return out


def mesh_2x2():
    """4 ranks as 2 "nodes" of 2: dim "intra" = the ranks of one node ({0,1},
    {2,3}: DDP or FSDP2), dim "cross" = the same position on every node ({0,2},
    {1,3}: HPSGD)."""
    from torch.distributed.device_mesh import init_device_mesh

    return init_device_mesh("cpu", (2, 2), mesh_dim_names=("cross", "intra"))


def node_data(rank):
    """Each rank its own batches; DDP or FSDP2 averages them inside the node."""
    return rank // 2 * 7 + rank % 2


def ddp_inside_equals_reference(rank, world, replica, H, steps, fragments=1):
    """DDP inside each node, then across nodes: HPSGD over the mesh dim, HPSGD over
    the same ranks' process group, and ReferenceHPSGD (plain torch.distributed)
    over that group, each from the same start on the same data."""
    mesh = mesh_2x2()
    intra, cross = mesh.get_group("intra"), mesh.get_group("cross")
    out = {}
    for impl in ("mesh", "group", "reference"):
        model = DDP(make_model(seed=rank), process_group=intra)
        opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
        kw = dict(sync_every=H, replica=replica, outer_lr=0.8, fragments=fragments)
        if impl == "mesh":
            hp = HPSGD(model, opt, mesh=mesh, dim="cross", timeout=30, **kw)
        elif impl == "group":
            hp = HPSGD(model, opt, process_group=cross, timeout=30, **kw)
        else:
            hp = ReferenceHPSGD(model.parameters(), opt, group=cross, **kw)
        train(model, opt, node_data(rank), steps)  # steps % H != 0: a partial final window
        hp.synchronize()
        out[impl] = flat_params(model.module)
        hp.close()
    return {"mesh_vs_group": (out["mesh"] - out["group"]).abs().max().item(),
            "vs_reference": (out["mesh"] - out["reference"]).abs().max().item(),
            "identical": same_on_every_rank(out["mesh"], world),
            "moved": (out["mesh"] - flat_params(make_model(seed=0))).abs().max().item()}


def _gathered(model) -> torch.Tensor:
    """Every parameter in full (FSDP2's shards all-gathered), flat, in order."""
    from torch.distributed.tensor import DTensor

    return torch.cat([(p.full_tensor() if isinstance(p, DTensor) else p).detach().reshape(-1)
                      for p in model.parameters()])


def _round_trip(state):
    buf = io.BytesIO()
    torch.save(state, buf)
    buf.seek(0)
    return torch.load(buf, weights_only=True)


def sharded_inside(rank, world, inside, replica, H, steps):
    """DDP or FSDP2 (``inside``) over dim "intra" of a 2x2 mesh, HPSGD over dim
    "cross", and a checkpoint mid-window: ``steps`` steps, HPSGD's and the
    optimizer's state saved, ``steps`` more, synchronize() -> ``first``; then
    HPSGD closed, a new one built over the same model, both states loaded, the
    same ``steps`` again -> ``resumed``. Same start (seed 0) and data either way."""
    from torch.distributed.fsdp import fully_shard

    mesh = mesh_2x2()
    model = make_model(seed=0)
    if inside == "fsdp":
        fully_shard(model[0], mesh=mesh["intra"])
        fully_shard(model, mesh=mesh["intra"])
        net = model
    else:
        net = DDP(model, process_group=mesh.get_group("intra"))
    opt = torch.optim.SGD(net.parameters(), lr=0.05, momentum=0.9)
    kw = dict(mesh=mesh, dim="cross", sync_every=H, replica=replica, timeout=30)
    hp = HPSGD(net, opt, **kw)
    train(net, opt, node_data(rank), steps)
    state, opt_state = _round_trip(hp.state_dict()), copy.deepcopy(opt.state_dict())
    train(net, opt, node_data(rank), steps, start=steps)
    hp.synchronize()
    first = _gathered(model)
    hp.close()
    opt.load_state_dict(opt_state)
    hp = HPSGD(net, opt, **kw)  # broadcasts rank 0's replica; the state restores this rank's
    hp.load_state_dict(state)
    train(net, opt, node_data(rank), steps, start=steps)
    hp.synchronize()
    resumed = _gathered(model)
    shards = [(type(p).__name__, tuple(t.shape)) for p, t in zip(net.parameters(), hp._engine.live(0))]
    hp.close()
    return {"first": first.tolist(), "resumed": resumed.tolist(), "identical": same_on_every_rank(first, world),
            "shards": shards}


def dtensor_local_swapped(rank, world):
    """FSDP2 may give a DTensor parameter another local tensor (its
    reset_sharded_param assigns ``_local_tensor`` after ``model.to()`` or a
    ``load_state_dict`` before the first forward); done here by hand: HPSGD must
    follow the new local tensor."""
    from torch import nn
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.tensor import DTensor, Shard

    mesh = init_device_mesh("cpu", (1,), mesh_dim_names=("intra",))
    model = nn.Module()
    model.w = nn.Parameter(DTensor.from_local(torch.randn(4, 3), mesh, [Shard(0)]))
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    hp = HPSGD(model, opt, sync_every=1, timeout=10)

    def step():
        opt.zero_grad()
        (model.w * model.w).sum().backward()
        opt.step()

    step()
    model.w._local_tensor = model.w._local_tensor.clone()
    step()
    return {"followed": hp._engine.live(0)[0].data_ptr() == model.w.to_local().data_ptr()}
