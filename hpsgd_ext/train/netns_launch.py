"""Runs the main job's workers inside shaped network namespaces (see netns.py): one
process per namespace, rendezvous over the shaped links at rank 0's address, exactly
the environment torchrun would give them. A worker that outlives its time limit is
killed: the launch can fail, never hang."""

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
    with ShapedNetwork(cfg["workers"], cfg["bandwidth_mbit"]) as net, tempfile.TemporaryDirectory() as tmp:
        cfg_path = os.path.join(tmp, "cfg.json")
        with open(cfg_path, "w") as f:
            json.dump(cfg, f)
        for algo in cfg["algo"]:
            out_path = os.path.join(tmp, f"{algo}.json")
            port = free_port()
            procs = []
            for r in range(cfg["workers"]):
                env = dict(os.environ, MASTER_ADDR=net.address(0), MASTER_PORT=str(port), RANK=str(r),
                           WORLD_SIZE=str(cfg["workers"]), LOCAL_RANK="0", LOCAL_WORLD_SIZE="1",
                           GLOO_SOCKET_IFNAME="eth0", PYTHONPATH=root + os.pathsep + os.environ.get("PYTHONPATH", ""))
                cmd = net.exec_prefix(r) + [sys.executable, "-m", "hpsgd_ext.train._worker", cfg_path, algo, out_path]
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
                runs.append(json.load(f))
    return runs
