"""hpsgd-bench: benchmarks that write JSON (with machine, versions, commit, date)
and a readable table into a results folder.

    hpsgd-bench kernels [--device cpu|cuda] [--numel 50000000] [--out bench/results]
"""

from __future__ import annotations

import argparse
import os
import sys

import torch


def _kernels(args) -> int:
    from . import kernels
    from .meta import write_json

    device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    dtypes = [(torch.float32, torch.float32), (torch.float32, torch.bfloat16),
              (torch.bfloat16, torch.bfloat16)]
    res = kernels.run(args.numel, device, dtypes=dtypes, reps=args.reps)
    text = kernels.table(res["rows"])
    print(text)
    path = write_json(os.path.join(args.out, f"kernels-{device}.json"), res)
    with open(os.path.join(args.out, f"kernels-{device}.txt"), "w") as f:
        f.write(text + "\n")
    print(f"wrote {path}")
    return 0


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="hpsgd-bench", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = ap.add_subparsers(dest="cmd", required=True)
    k = sub.add_parser("kernels", help="fused round_step vs eager PyTorch vs a plain copy")
    k.add_argument("--device", choices=["cpu", "cuda"], default=None)
    k.add_argument("--numel", type=int, default=50_000_000)
    k.add_argument("--reps", type=int, default=7)
    k.add_argument("--out", default="bench/results")
    k.set_defaults(fn=_kernels)
    args = ap.parse_args(argv)
    return args.fn(args)


if __name__ == "__main__":
    sys.exit(main())
