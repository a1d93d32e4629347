"""The examples under examples/ run as a user runs them: from another folder,
under torchrun, Gloo processes on CPU; afterwards the replicas agree."""

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


def torchrun(tmp_path, procs: int, script: str, *args: str) -> Path:
    """Run examples/``script`` under torchrun from ``tmp_path``; its --out folder."""
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}  # the installed package
    out = tmp_path / "out"
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nnodes", "1", "--nproc-per-node", str(procs),
           "--rdzv-backend", "c10d", "--rdzv-endpoint", f"127.0.0.1:{free_port()}",
           str(ROOT / "examples" / script), *args, "--out", str(out)]
    res = subprocess.run(cmd, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=150)
    assert res.returncode == 0, res.stdout + res.stderr
    return out


def test_plain_torchrun_script(tmp_path):
    out = torchrun(tmp_path, 2, "torchrun_plain.py", "--steps", "30")
    for rank in (0, 1):
        r = json.loads((out / f"rank{rank}.json").read_text())
        assert r["replicas_agree"], r
        assert r["stats"]["local_steps"] == 30 and r["stats"]["rounds"] >= 1, r
    assert (out / "checkpoint.pt").exists()


@pytest.mark.parametrize("inside", ["ddp", "fsdp"])
def test_hierarchical_torchrun_script(tmp_path, inside):
    """Two "nodes" of two processes: DDP or FSDP2 inside, HPSGD across (mesh dim "cross")."""
    out = torchrun(tmp_path, 4, "torchrun_hierarchical.py", "--per-node", "2", "--inside", inside,
                   "--steps", "20")
    for rank in range(4):
        r = json.loads((out / f"rank{rank}.json").read_text())
        assert r["replicas_agree"], r
        assert r["stats"]["local_steps"] == 20 and r["stats"]["rounds"] >= 1, r
        assert (out / f"hpsgd-rank{rank}.pt").exists()
