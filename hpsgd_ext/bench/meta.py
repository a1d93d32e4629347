"""What every result file records about where and when it was measured."""

from __future__ import annotations

import datetime as _dt
import json
import os
import platform
import subprocess
from typing import Any

import torch


def _commit() -> str:
    # A copy of the tree without .git (the GPU machine gets one) is told its commit.
    if os.environ.get("HPSGD_COMMIT"):
        return os.environ["HPSGD_COMMIT"]
    try:
        root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
        return subprocess.check_output(["git", "rev-parse", "--short", "HEAD"], cwd=root,
                                       stderr=subprocess.DEVNULL, text=True).strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


def machine() -> dict[str, Any]:
    import hpsgd_ext

    info: dict[str, Any] = {
        "date": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "commit": _commit(),
        "hpsgd_ext": hpsgd_ext.__version__,
        "torch": torch.__version__,
        "cuda_build": torch.version.cuda,
        "built_with_cuda": hpsgd_ext.built_with_cuda(),
        "built_with_nccl": hpsgd_ext.built_with_nccl(),
        "python": platform.python_version(),
        "cpu": platform.processor() or platform.machine(),
        "cpu_count": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
    }
    if torch.cuda.is_available():
        info["gpu"] = torch.cuda.get_device_name()
        try:
            v = torch.cuda.nccl.version()
            info["nccl"] = ".".join(map(str, v)) if isinstance(v, tuple) else str(v)
        except Exception:  # noqa: BLE001 - informational only
            pass
    return info


def write_json(path: str, payload: dict[str, Any]) -> str:
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    with open(path, "w") as f:
        json.dump({"machine": machine(), **payload}, f, indent=2)
    return path
