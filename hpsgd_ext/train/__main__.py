"""hpsgd-train: HPSGD against DDP and periodic model averaging, side by side, in the
same wall time, with the same data, model, optimizer, seed and link.

Locally (default): launches --workers processes per algorithm through torch's elastic
launcher. Under torchrun (RANK/WORLD_SIZE set): runs each algorithm in the processes
torchrun started, on as many machines as it spans; rank 0 writes the report.

    hpsgd-train                                   # the demo: 2 CPU workers, slow emulated link
    hpsgd-train --algo hpsgd,ddp --seconds 120 --model transformer
    hpsgd-train --nodes 2 --workers-per-node 2 --algo ddp,ddp+avg,ddp+hpsgd,fsdp+hpsgd \
        --network netns --bandwidth-mbit 20      # DDP/FSDP2 inside, slow link across
    torchrun --nnodes 2 --nproc-per-node 8 ... -m hpsgd_ext.train --device cuda
"""

from __future__ import annotations

import argparse
import os
import sys

from . import topology
from .algorithms import ALGORITHMS, HIERARCHICAL, split_wire
from .data import DATASETS


def under_torchrun() -> bool:
    return "TORCHELASTIC_RUN_ID" in os.environ or ("RANK" in os.environ and "WORLD_SIZE" in os.environ)


def parse(argv=None) -> dict:
    ap = argparse.ArgumentParser(prog="hpsgd-train", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--algo", default="none,hpsgd,hpsgd-reset,ddp,localsgd",
                    help=f"comma-separated, from {', '.join(ALGORITHMS)}; NAME@WIRE runs NAME with "
                         "--comm-dtype WIRE (hpsgd,hpsgd@bf16,hpsgd@int8,hpsgd@fp8 compares wires)")
    ap.add_argument("--workers", type=int, default=None,
                    help="local worker processes, each a node of its own (default 2, or --nodes x "
                         "--workers-per-node; ignored under torchrun)")
    ap.add_argument("--nodes", type=int, default=None,
                    help="nodes joined by the slow link; rank r is on node r // --workers-per-node")
    ap.add_argument("--workers-per-node", type=int, default=None,
                    help="ranks per node, joined by fast links (default 1: every worker its own node)")
    ap.add_argument("--device", choices=["cpu", "cuda"], default="cpu")
    ap.add_argument("--seconds", type=float, default=40.0, help="training wall time per algorithm")
    ap.add_argument("--bandwidth-mbit", type=float, default=20.0,
                    help="the link between nodes (without --workers-per-node: each worker's own link) in "
                         "Mbit/s, the same for every algorithm; emulated, or the tbf rate of --network netns "
                         "(0: no emulation)")
    ap.add_argument("--latency-ms", type=float, default=2.0,
                    help="emulated link latency (--network emulated only: tbf shapes the rate alone)")
    ap.add_argument("--network", choices=["emulated", "netns", "loopback"], default="emulated",
                    help="emulated: the link model on loopback, holding only traffic between nodes (a "
                         "node's ranks share its link); netns: one network namespace per node, joined by "
                         "veth links shaped by tc tbf at --bandwidth-mbit (Linux, root; inside a node: "
                         "loopback); loopback: no limit")
    ap.add_argument("--dataset", choices=list(DATASETS), default="digits-shifted",
                    help="digits-shifted: scikit-learn's digits at every shift of up to 2 pixels (the demo)")
    ap.add_argument("--model", choices=["mlp", "cnn", "transformer"], default="mlp")
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--lr", type=float, default=0.02)
    ap.add_argument("--momentum", type=float, default=0.9)
    ap.add_argument("--sync-every", default="auto",
                    help="HPSGD window: 'auto' or a number of steps (ddp+hpsgd, fsdp+hpsgd: 'auto' means "
                         "--period; their windows are fixed)")
    ap.add_argument("--comm-dtype", choices=["none", "bf16", "fp16", "int8", "fp8"], default="none")
    ap.add_argument("--period", type=int, default=16,
                    help="local SGD and ddp+avg averaging period (steps)")
    ap.add_argument("--evals", type=int, default=5, help="evaluations per run (each synchronises first)")
    ap.add_argument("--check-every", type=int, default=50, help="steps between the ranks' clock agreement")
    ap.add_argument("--threads", type=int, default=1, help="torch threads per worker")
    ap.add_argument("--timeout", type=float, default=120.0)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", default="runs/demo")
    ap.add_argument("--quiet", action="store_true")
    a = ap.parse_args(argv)
    algos = [s.strip() for s in a.algo.split(",") if s.strip()]
    def known(s):
        try:
            return split_wire(s)[0] in ALGORITHMS
        except ValueError:
            return False

    bad = [s for s in algos if not known(s)]
    if bad:
        ap.error(f"unknown algorithm(s) {bad}; expected from {', '.join(ALGORITHMS)}")
    if a.sync_every != "auto" and not a.sync_every.isdigit():
        ap.error("--sync-every must be 'auto' or a positive integer")
    try:
        launched = int(os.environ["WORLD_SIZE"]) if under_torchrun() else None
        workers, nodes, per_node = topology.resolve(a.workers, a.nodes, a.workers_per_node, launched)
    except ValueError as e:
        ap.error(str(e))
    hier = [s for s in algos if split_wire(s)[0] in HIERARCHICAL]
    if hier and (nodes < 2 or per_node < 2):
        ap.error(f"{', '.join(hier)} need(s) --nodes >= 2 and --workers-per-node >= 2 (DDP or FSDP2 inside "
                 f"a node, the slow link across); got {nodes} node(s) x {per_node} worker(s)")
    cfg = vars(a)
    cfg.update(algo=algos, workers=workers, nodes=nodes, workers_per_node=per_node)
    cfg["backend"] = "nccl" if a.device == "cuda" else "gloo"
    if a.network == "netns":
        from .netns import available

        why = available()
        if why:
            ap.error(f"--network netns {why}")
        if not a.bandwidth_mbit:
            ap.error("--network netns needs --bandwidth-mbit > 0 (the shaped rate)")
    return cfg


def main(argv=None) -> int:
    cfg = parse(argv)
    from . import report
    from .loop import run_algorithm

    launched = under_torchrun()
    runs = []
    if not launched:
        print(f"hpsgd-train: {len(cfg['algo'])} algorithm(s) x {cfg['seconds']:g} s, {report.setting(cfg)}",
              flush=True)
    if cfg["network"] == "netns" and not launched:
        from .netns_launch import run_in_namespaces

        runs = run_in_namespaces(cfg)
    elif launched:
        for algo in cfg["algo"]:
            res = run_algorithm(cfg, algo)
            if res["rank"] == 0:
                runs.append(res)
        if int(os.environ["RANK"]) != 0:
            return 0
    else:
        from ..launch import run_local

        for algo in cfg["algo"]:
            results = run_local(run_algorithm, cfg["workers"], cfg, algo)
            runs.append(results[0])
    out = report.write(runs, cfg, cfg["out"])
    print(out["table"])
    print(f"wrote {out['dir']}/results.json, summary.txt, accuracy_vs_time.png")
    return 0


if __name__ == "__main__":
    sys.exit(main())
