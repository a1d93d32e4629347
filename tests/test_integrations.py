"""The framework integrations (hpsgd_ext/integrations) run their examples as a
user runs them: under torchrun, 2 Gloo processes on CPU, from another folder.
Each example checks that every replica holds the same weights (bit for bit) at
every validation and at the end; here we also check that the checkpoints hold
HPSGD's state, and that a run resumed from the first epoch's checkpoint ends
bit for bit where the uninterrupted run ended."""

from __future__ import annotations

import importlib
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from hpsgd_ext.launch import free_port

ROOT = Path(__file__).resolve().parents[1]
EPOCHS, STEPS_PER_EPOCH = 3, 8  # the examples' data: 256 samples, batches of 16, 2 ranks


def torchrun(script: str, cwd: Path, *args: str, nproc: int = 2, timeout: float = 200) -> None:
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nnodes", "1", "--nproc-per-node", str(nproc),
           "--rdzv-backend", "c10d", "--rdzv-endpoint", f"127.0.0.1:{free_port()}",
           str(ROOT / "examples" / script), *args]
    res = subprocess.run(cmd, cwd=cwd, capture_output=True, text=True, timeout=timeout)
    assert res.returncode == 0, res.stdout[-6000:] + res.stderr[-6000:]


def results(out: Path) -> list[dict]:
    return [json.loads((out / f"rank{r}.json").read_text()) for r in (0, 1)]


def check_run(rs: list[dict], checks_key: str, checks: int) -> None:
    for r in rs:
        assert r[checks_key] == [True] * checks, r  # replicas equal after every synchronize()
        assert r["agree_at_end"], r
        assert r["stats"]["local_steps"] == EPOCHS * STEPS_PER_EPOCH, r
        assert r["stats"]["rounds"] >= EPOCHS * 2, r  # sync_every=3 ends 2 windows an epoch
    assert rs[0]["digest"] == rs[1]["digest"]


def check_resumed(rr: list[dict], uninterrupted: list[dict], checks_key: str) -> None:
    """A run resumed after the first epoch: the replicas agree at each of the
    remaining checks, HPSGD's counters were restored (they count the first epoch),
    and it ends bit for bit where the uninterrupted run ended."""
    for r in rr:
        assert r[checks_key] == [True] * (EPOCHS - 1) and r["agree_at_end"], r
        assert r["stats"]["local_steps"] == EPOCHS * STEPS_PER_EPOCH, r
    assert rr[0]["digest"] == rr[1]["digest"] == uninterrupted[0]["digest"]


def check_saved(state: dict) -> None:
    """An integration's saved state: HPSGD's, taken right after synchronize() (so
    any rank may load it), and each of the 2 ranks' own optimizer state."""
    assert state["hpsgd"]["rank_independent"] is True
    assert state["hpsgd"]["counters"]["local_steps"] == STEPS_PER_EPOCH
    opt = state["optimizer_states"]
    assert len(opt) == 2 and all(o["state"] for o in opt)
    # The ranks' Adam moments differ: local optimizer state, as HPSGD keeps it.
    assert not torch.equal(opt[0]["state"][0]["exp_avg"], opt[1]["state"][0]["exp_avg"])


def run_and_resume(tmp_path: Path, script: str, checks_key: str, first_checkpoint: str) -> Path:
    """Run ``script`` for EPOCHS epochs, then again resumed from ``first_checkpoint``
    (saved by the first run after its first epoch); check both. The first run's folder."""
    full, resumed = tmp_path / "full", tmp_path / "resumed"
    torchrun(script, tmp_path, "--epochs", str(EPOCHS), "--out", str(full))
    rs = results(full)
    check_run(rs, checks_key, EPOCHS)
    torchrun(script, tmp_path, "--epochs", str(EPOCHS), "--out", str(resumed),
             "--resume", str(full / first_checkpoint))
    check_resumed(results(resumed), rs, checks_key)
    return full


@pytest.mark.multiprocess
@pytest.mark.timeout(480)
def test_lightning_fit_validate_checkpoint_resume(tmp_path):
    full = run_and_resume(tmp_path, "lightning_hpsgd.py", "agree_at_validation", "ckpt/epoch=0.ckpt")
    saved = torch.load(full / "ckpt" / "epoch=0.ckpt", map_location="cpu", weights_only=False)
    check_saved(saved["callbacks"]["HPSGDCallback"])
    # The checkpoint's weights are the global model (HPSGD's anchors), not a replica.
    anchors = saved["callbacks"]["HPSGDCallback"]["hpsgd"]["groups"][0]["anchors"]
    weights = [v for k, v in saved["state_dict"].items() if "running" not in k and "num_batches" not in k]
    assert len(anchors) == len(weights) and all(torch.equal(a, w) for a, w in zip(anchors, weights))


@pytest.mark.multiprocess
@pytest.mark.timeout(480)
def test_accelerate_evaluate_save_load_resume(tmp_path):
    full = run_and_resume(tmp_path, "accelerate_hpsgd.py", "agree_at_eval", "state_epoch0")
    check_saved(torch.load(full / "state_epoch0" / "custom_checkpoint_0.pkl", map_location="cpu",
                           weights_only=False))


def test_import_hpsgd_ext_needs_no_framework():
    code = ("import sys, hpsgd_ext, hpsgd_ext.integrations; "
            "assert not {'lightning', 'accelerate', 'pytorch_lightning'} & set(sys.modules), sorted(sys.modules)")
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120,
                         env={**os.environ, "PYTHONPATH": str(ROOT)})
    assert res.returncode == 0, res.stderr


@pytest.mark.parametrize("module,framework,extra", [
    ("hpsgd_ext.integrations.lightning", "lightning", "lightning"),
    ("hpsgd_ext.integrations.accelerate", "accelerate", "accelerate"),
])
def test_missing_framework_says_what_to_install(monkeypatch, module, framework, extra):
    for name in list(sys.modules):
        if name == module or name == framework or name.startswith(framework + "."):
            monkeypatch.delitem(sys.modules, name)
    monkeypatch.setitem(sys.modules, framework, None)  # "not installed"
    with pytest.raises(ImportError, match=rf"pip install 'hpsgd_ext\[{extra}\]'"):
        importlib.import_module(module)
