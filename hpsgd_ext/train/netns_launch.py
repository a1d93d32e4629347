"""Runs the main job's workers inside shaped network namespaces (see netns.py): one
namespace per node, holding that node's ranks (rank r on node r // workers per node;
by default every worker is a node of its own), rendezvous at rank 0's address,
exactly the environment torchrun would give them. Every rank binds Gloo to its
namespace's shaped interface; traffic between two ranks of one node goes to an
address of their own namespace, which the kernel routes over loopback, so only
traffic between nodes crosses a shaped link. A worker that outlives its time limit
is killed: the launch can fail, never hang."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile

from ..launch import free_port
from .netns import ShapedNetwork


def run_in_namespaces(cfg: dict) -> list[dict]:
    runs = []
    root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    per_node = cfg["workers_per_node"]
    with ShapedNetwork(cfg["nodes"], cfg["bandwidth_mbit"]) as net, tempfile.TemporaryDirectory() as tmp:
        cfg_path = os.path.join(tmp, "cfg.json")
        with open(cfg_path, "w") as f:
            json.dump(cfg, f)
        for algo in cfg["algo"]:
            out_path = os.path.join(tmp, f"{algo}.json")
            port = free_port()
            procs = []
            sent_before = net.sent_bytes()
            for r in range(cfg["workers"]):
                env = dict(os.environ, MASTER_ADDR=net.address(0), MASTER_PORT=str(port), RANK=str(r),
                           WORLD_SIZE=str(cfg["workers"]), LOCAL_RANK=str(r % per_node),
                           LOCAL_WORLD_SIZE=str(per_node), GLOO_SOCKET_IFNAME="eth0",
                           PYTHONPATH=root + os.pathsep + os.environ.get("PYTHONPATH", ""))
                cmd = net.exec_prefix(r // per_node) + [sys.executable, "-m", "hpsgd_ext.train._worker", cfg_path, algo, out_path]
                procs.append(subprocess.Popen(cmd, env=env))
            limit = 3 * cfg["seconds"] + 120
            try:
                codes = [p.wait(timeout=limit) for p in procs]
            except subprocess.TimeoutExpired:
                codes = None
            finally:
                for p in procs:
                    if p.poll() is None:
                        p.kill()
                        p.wait()
            if codes is None or any(codes):
                raise RuntimeError(f"hpsgd-train: {algo} over shaped links failed (exit codes {codes})")
            with open(out_path) as f:
                run = json.load(f)
            # what crossed the shaped links: only traffic between nodes (or, one
            # worker per node, all of it), the rendezvous and the stop votes included
            run["stats"]["inter_node_bytes"] = net.sent_bytes() - sent_before
            runs.append(run)
    return runs
