"""hpsgd-bench: benchmarks that write JSON (with machine, versions, commit, date)
and a readable table into a results folder.

    hpsgd-bench kernels [--device cpu|cuda] [--scale 1.0] [--cases gpt2,llama] [--out bench/results]
                        [--dtypes [momentum]]   (every dtype combination instead of the models)
    hpsgd-bench comm    [--device cpu|cuda] [--ranks 2] [--max-bytes 1G] [--out bench/results]
    hpsgd-bench hook    [--device cpu|cuda] [--steps 1] [--repeats 1000]   (per-step overhead)
    hpsgd-bench overlap [--ratios 0.5,2,8,32] [--seconds 4] [--repeats 1] [--out bench/results]
                        [--nodes 2 --workers-per-node 2]   (DDP/FSDP2 inside, the link between nodes)
    hpsgd-bench step-overlap [--device cpu|cuda] [--steps 10]   (one rank: step vs slow all-reduce)
    hpsgd-bench netns   [--workers 2,4] [--bandwidth-mbit 200] [--seconds 10] [--out bench/results]
    hpsgd-bench wires   FOLDER...        (the wire study from main-job runs, one folder per link rate)
    hpsgd-bench report  [folder]        (one markdown page from the JSON in a results folder)
"""

from __future__ import annotations

import argparse
import os
import sys

import torch


def _emit(out_dir: str, tag: str, payload: dict, text: str, plot=None) -> int:
    """Print the table; write <tag>.json (with machine facts), <tag>.txt and, given a
    plotting function, <tag>.png into the results folder."""
    from .meta import write_json

    print(text)
    path = write_json(os.path.join(out_dir, f"{tag}.json"), payload)
    with open(os.path.join(out_dir, f"{tag}.txt"), "w") as f:
        f.write(text + "\n")
    if plot is not None:
        plot(os.path.join(out_dir, f"{tag}.png"))
    print(f"wrote {path}")
    return 0


def _kernels(args) -> int:
    from . import kernels
    device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    sweep = kernels.sweep_configs(momentum=args.dtypes == "momentum") if args.dtypes else None
    res = kernels.run(device, scale=args.scale, calls=args.calls, reps=args.reps,
                      names=args.cases.split(",") if args.cases else None, cases=sweep)
    return _emit(args.out, f"kernels-{device}" + ("-dtypes" if sweep else ""), res,
                 kernels.table(res["rows"], res["host"], res["resources"]),
                 lambda path: (kernels.plot_dtypes if sweep else kernels.plot)(res["rows"], path))


def _comm(args) -> int:
    from ..launch import run_local
    from . import comm
    device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    ranks = args.ranks or (torch.cuda.device_count() if device == "cuda" else 2)
    results = run_local(comm.worker, ranks, args.min_bytes, args.max_bytes, device)
    return _emit(args.out, f"comm-{device}-{ranks}ranks", {"benchmark": "comm", "per_rank": results},
                 comm.table(results[0]), lambda path: comm.plot(results[0], path))


def _hook(args) -> int:
    from . import hook_overhead
    device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    res = hook_overhead.run(device=device, steps=args.steps, repeats=args.repeats)
    return _emit(args.out, f"hook-overhead-{device}", res, hook_overhead.table(res),
                 lambda path: hook_overhead.plot(res, path))


def _step_overlap(args) -> int:
    from . import step_overlap
    device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    res = step_overlap.run(device=device, steps=args.steps)
    return _emit(args.out, f"step-overlap-{device}", res, step_overlap.table(res))


def _overlap(args) -> int:
    from . import overlap
    ratios = [float(x) for x in args.ratios.split(",")]
    per_node = args.workers_per_node or 1
    workers = args.nodes * per_node if args.nodes else args.workers
    if workers % per_node:
        print(f"hpsgd-bench overlap: --workers {workers} is not a multiple of --workers-per-node {per_node}",
              file=sys.stderr)
        return 2
    res = overlap.run(ratios=ratios, seconds=args.seconds, workers=workers, model=args.model,
                      repeats=args.repeats, workers_per_node=per_node)
    tag = "overlap" if per_node == 1 else f"overlap-{workers // per_node}x{per_node}"
    return _emit(args.out, tag, res, overlap.table(res), lambda path: overlap.plot(res, path))


def _netns(args) -> int:
    from ..train.netns import available
    from . import netns
    why = available()
    if why:
        print(f"hpsgd-bench netns: shaped namespaces {why}", file=sys.stderr)
        return 2
    workers = [int(x) for x in args.workers.split(",")]
    res = netns.run(workers=workers, bandwidth_mbit=args.bandwidth_mbit, seconds=args.seconds, model=args.model)
    return _emit(args.out, f"netns-{args.bandwidth_mbit:g}mbit", res, netns.table(res),
                 lambda path: netns.plot(res, path))


def _wires(args) -> int:
    from . import wires
    rows = wires.collect(args.folders)
    return _emit(args.out, "wires", {"benchmark": "wires", "rows": rows}, wires.table(rows),
                 lambda path: wires.plot(rows, path))


def _report(args) -> int:
    from . import report
    try:
        path = report.write(args.folder, args.out)
    except FileNotFoundError as e:
        print(e, file=sys.stderr)
        return 2
    print(f"wrote {path}")
    return 0


def _bytes(s: str) -> int:
    mult = {"K": 2**10, "M": 2**20, "G": 2**30}
    return int(float(s[:-1]) * mult[s[-1].upper()]) if s[-1].upper() in mult else int(s)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="hpsgd-bench", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = ap.add_subparsers(dest="cmd", required=True)
    k = sub.add_parser("kernels", help="fused round_step vs eager PyTorch vs a plain copy")
    k.add_argument("--device", choices=["cpu", "cuda"], default=None)
    k.add_argument("--scale", type=float, default=None,
                   help="model size (1.0: full GPT-2 small, ResNet-50, Llama stack; default 1.0 on CUDA, 0.1 on CPU)")
    k.add_argument("--calls", type=int, default=None, help="back-to-back calls per timing")
    k.add_argument("--reps", type=int, default=5)
    k.add_argument("--cases", default=None, help="comma-separated substrings of the case names to run")
    k.add_argument("--dtypes", nargs="?", const="plain", choices=["plain", "momentum"], default=None,
                   help="instead of the real models: every dtype combination on GPT-2 "
                        "(--dtypes momentum: with and without outer momentum); writes kernels-DEVICE-dtypes")
    k.add_argument("--out", default="bench/results")
    k.set_defaults(fn=_kernels)
    c = sub.add_parser("comm", help="all-reduce algbw/busbw vs torch.distributed, issue cost, overlap")
    c.add_argument("--device", choices=["cpu", "cuda"], default=None)
    c.add_argument("--ranks", type=int, default=None)
    c.add_argument("--min-bytes", type=_bytes, default=_bytes("1K"))
    c.add_argument("--max-bytes", type=_bytes, default=_bytes("1G"))
    c.add_argument("--out", default="bench/results")
    c.set_defaults(fn=_comm)
    h = sub.add_parser("hook", help="HPSGD's per-step overhead on non-boundary steps")
    h.add_argument("--device", choices=["cpu", "cuda"], default=None)
    h.add_argument("--steps", type=int, default=1, help="steps per timed block")
    h.add_argument("--repeats", type=int, default=1000, help="interleaved blocks per case")
    h.add_argument("--out", default="bench/results")
    h.set_defaults(fn=_hook)
    o = sub.add_parser("overlap", help="steps/s and loss over the comm/compute ratio, all algorithms")
    o.add_argument("--ratios", default="0.5,2,8,32")
    o.add_argument("--seconds", type=float, default=4.0)
    o.add_argument("--workers", type=int, default=2)
    o.add_argument("--nodes", type=int, default=None,
                   help="with --workers-per-node: compare the hierarchical set-ups, the link between nodes")
    o.add_argument("--workers-per-node", type=int, default=None)
    o.add_argument("--model", choices=["mlp", "cnn", "transformer"], default="mlp")
    o.add_argument("--repeats", type=int, default=1, help="runs per point; the median is reported")
    o.add_argument("--out", default="bench/results")
    o.set_defaults(fn=_overlap)
    so = sub.add_parser("step-overlap", help="one rank: a transformer's steps against one slow all-reduce, "
                                            "CUDA events and wall clock")
    so.add_argument("--device", choices=["cpu", "cuda"], default=None)
    so.add_argument("--steps", type=int, default=10)
    so.add_argument("--out", default="bench/results")
    so.set_defaults(fn=_step_overlap)
    n = sub.add_parser("netns", help="all algorithms over real tc-shaped links between namespaces (root)")
    n.add_argument("--workers", default="2,4", help="comma-separated worker counts")
    n.add_argument("--bandwidth-mbit", type=float, default=200.0)
    n.add_argument("--seconds", type=float, default=10.0)
    n.add_argument("--model", choices=["mlp", "cnn", "transformer"], default="mlp")
    n.add_argument("--out", default="bench/results")
    n.set_defaults(fn=_netns)
    w = sub.add_parser("wires", help="float32 vs bf16 vs int8 vs fp8 rounds from main-job runs")
    w.add_argument("folders", nargs="+", help="hpsgd-train --out folders (results.json)")
    w.add_argument("--out", default="bench/results")
    w.set_defaults(fn=_wires)
    r = sub.add_parser("report", help="one markdown page (tables and plots) from a results folder")
    r.add_argument("folder", nargs="?", default="bench/results")
    r.add_argument("--out", default=None, help="default: <folder>/REPORT.md")
    r.set_defaults(fn=_report)
    args = ap.parse_args(argv)
    return args.fn(args)


if __name__ == "__main__":
    sys.exit(main())
