"""Where the main job's ranks sit: ``nodes`` nodes of ``workers_per_node`` ranks each,
rank r on node r // workers_per_node (torchrun's numbering). Links inside a node are
fast; the link between nodes is the slow one (emulated, or shaped by tc between
network namespaces).

Without ``--nodes`` / ``--workers-per-node`` every worker is a node of its own behind
its own link, which is what the main job always modelled: the flat algorithms then
run exactly as before.
"""

from __future__ import annotations

from typing import Optional

import torch.distributed as dist

from ..emulation import LinkModel

# Mesh dim names, as in the README's "Many nodes" set-up and
# examples/torchrun_hierarchical.py (torch's HSDP calls them "replicate" and "shard").
CROSS, INTRA = "cross", "intra"


def resolve(workers: Optional[int], nodes: Optional[int], workers_per_node: Optional[int],
            world: Optional[int] = None) -> tuple[int, int, int]:
    """(world size, nodes, workers per node) from the command line; ``world`` is the
    launcher's world size when one started the processes (torchrun), which then
    overrides ``workers``. Raises ValueError naming the flags that disagree."""
    per_node = 1 if workers_per_node is None else workers_per_node
    if per_node < 1:
        raise ValueError(f"--workers-per-node is {per_node}; expected a positive number of ranks per node")
    if nodes is not None and nodes < 1:
        raise ValueError(f"--nodes is {nodes}; expected a positive number of nodes")
    if world is None:
        if nodes is not None:
            if workers is not None and workers != nodes * per_node:
                raise ValueError(f"--workers {workers} disagrees with --nodes {nodes} x --workers-per-node "
                                 f"{per_node} = {nodes * per_node}; expected one or the other")
            return nodes * per_node, nodes, per_node
        world = 2 if workers is None else workers
        where = f"--workers {world}"
    else:
        where = f"the launcher's world size {world}"
    if nodes is not None and nodes * per_node != world:
        raise ValueError(f"--nodes {nodes} x --workers-per-node {per_node} = {nodes * per_node} disagrees "
                         f"with {where}; expected equal")
    if world % per_node:
        raise ValueError(f"{where} is not a multiple of --workers-per-node {per_node}; expected whole nodes")
    return world, world // per_node, per_node


def describe(cfg: dict) -> str:
    """'2 nodes x 2 workers' or, one worker per node, '4 workers'."""
    if cfg.get("workers_per_node", 1) == 1:
        return f"{cfg['workers']} workers"
    return f"{cfg['nodes']} node{'s' if cfg['nodes'] != 1 else ''} x {cfg['workers_per_node']} workers"


def inter_node_link(cfg: dict) -> Optional[LinkModel]:
    """The emulated link as one rank sees it, or None when nothing is emulated.

    Only traffic between nodes is held (inside a node the links are fast). A node's
    ranks share its link, and the algorithms here have every rank of a node send at
    the same steps, so each rank is modelled with its share of the bandwidth. With
    one worker per node that is the whole link, as before; with a single node of
    several workers no collective leaves the node."""
    if cfg["network"] != "emulated" or not cfg["bandwidth_mbit"]:
        return None
    per_node = cfg.get("workers_per_node", 1)
    if cfg.get("nodes", cfg["workers"]) == 1 and per_node > 1:
        return None
    return LinkModel(cfg["bandwidth_mbit"] * 1e6 / 8 / per_node, cfg["latency_ms"] / 1e3)


def make_mesh(cfg: dict, device_type: str):
    """The (nodes, workers per node) DeviceMesh with dims (cross, intra). Collective:
    every rank builds it, with every group, in the same order (torch's rule)."""
    from torch.distributed.device_mesh import init_device_mesh

    if cfg["nodes"] * cfg["workers_per_node"] != dist.get_world_size():
        raise ValueError(f"topology {cfg['nodes']} nodes x {cfg['workers_per_node']} workers does not match "
                         f"the world of {dist.get_world_size()} ranks")
    return init_device_mesh(device_type, (cfg["nodes"], cfg["workers_per_node"]), mesh_dim_names=(CROSS, INTRA))


def group_ranks(mesh) -> dict:
    """This rank's node and the ranks of its intra and cross groups (for the report)."""
    return {"node": int(mesh.get_coordinate()[0]),
            "intra_ranks": dist.get_process_group_ranks(mesh.get_group(INTRA)),
            "cross_ranks": dist.get_process_group_ranks(mesh.get_group(CROSS))}
