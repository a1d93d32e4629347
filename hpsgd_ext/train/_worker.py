"""One worker of the main job started by a launcher other than torch's (e.g. inside a
network namespace): RANK/WORLD_SIZE/MASTER_* in the environment, the config as JSON;
rank 0 writes its result as JSON."""

from __future__ import annotations

import json
import sys

from .loop import run_algorithm


def main(cfg_path: str, algo: str, out_path: str) -> int:
    with open(cfg_path) as f:
        cfg = json.load(f)
    res = run_algorithm(cfg, algo)
    if res["rank"] == 0:
        with open(out_path, "w") as f:
            json.dump(res, f)
    return 0


if __name__ == "__main__":
    sys.exit(main(*sys.argv[1:4]))
