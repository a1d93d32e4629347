"""A worker killed under torch's elastic agent (max_restarts=1) resumes from its last
checkpoint and ends with exactly the model of an uninterrupted run (fixed H, CPU)."""

import os

import pytest

from hpsgd_ext.launch import run_local

import restart_worker as RW

pytestmark = [pytest.mark.multiprocess, pytest.mark.timeout(300)]


def test_killed_worker_resumes_bitwise(tmp_path):
    clean, crashed = tmp_path / "clean", tmp_path / "crashed"
    clean.mkdir()
    crashed.mkdir()
    expected = run_local(RW.run, 2, str(clean), False)
    got = run_local(RW.run, 2, str(crashed), True, max_restarts=1)
    assert os.path.exists(crashed / "killed"), "the worker was never killed"
    assert got[0] == expected[0] and got[1] == expected[1]
    assert got[0] == got[1]  # and every replica equals the global model
