"""The examples under examples/ run as a user runs them: from another folder,
under torchrun, 2 Gloo processes on CPU; afterwards the replicas agree."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from hpsgd_ext.launch import free_port

ROOT = Path(__file__).resolve().parents[1]
pytestmark = [pytest.mark.multiprocess, pytest.mark.timeout(180)]


def test_plain_torchrun_script(tmp_path):
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}  # the installed package
    out = tmp_path / "out"
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nnodes", "1", "--nproc-per-node", "2",
           "--rdzv-backend", "c10d", "--rdzv-endpoint", f"127.0.0.1:{free_port()}",
           str(ROOT / "examples" / "torchrun_plain.py"), "--steps", "30", "--out", str(out)]
    res = subprocess.run(cmd, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=150)
    assert res.returncode == 0, res.stdout + res.stderr
    for rank in (0, 1):
        r = json.loads((out / f"rank{rank}.json").read_text())
        assert r["replicas_agree"], r
        assert r["stats"]["local_steps"] == 30 and r["stats"]["rounds"] >= 1, r
    assert (out / "checkpoint.pt").exists()
