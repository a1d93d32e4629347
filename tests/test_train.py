"""The main job end to end, small: every algorithm runs on 2 local workers through
torch's elastic launcher and the report (table, JSON, PNG) is written."""

from __future__ import annotations

import json

import pytest

from hpsgd_ext.train.__main__ import main, parse

pytestmark = [pytest.mark.multiprocess, pytest.mark.timeout(300)]


def test_cli_rejects_unknown_algorithm(capsys):
    with pytest.raises(SystemExit):
        parse(["--algo", "hpsgd,allgather"])
    assert "unknown algorithm" in capsys.readouterr().err


def test_main_job_runs_every_algorithm(tmp_path):
    out = tmp_path / "demo"
    # plain digits: learnable within 2 s even by DDP's few steps (the shifted default is not)
    rc = main(["--algo", "none,hpsgd,hpsgd-reset,ddp,localsgd", "--seconds", "2", "--evals", "2",
               "--dataset", "digits", "--bandwidth-mbit", "50", "--out", str(out), "--quiet"])
    assert rc == 0
    res = json.loads((out / "results.json").read_text())
    algos = [r["algo"] for r in res["runs"]]
    assert algos == ["none", "hpsgd", "hpsgd-reset", "ddp", "localsgd"]
    for r in res["runs"]:
        assert r["steps"] > 0 and 2 <= len(r["curve"]) <= 3  # a slow chunk may pass both marks
        assert r["final_acc"] > 0.3  # well above chance (0.1) on digits
    hp = res["runs"][1]
    assert hp["stats"]["rounds"] >= 1 and hp["stats"]["local_steps"] == hp["steps"]
    assert (out / "accuracy_vs_time.png").stat().st_size > 10_000
    assert "hpsgd-reset" in (out / "summary.txt").read_text()


def test_shifted_digits_hold_every_shift_of_every_image():
    from hpsgd_ext.train import data

    x, y, n_test = data._load_digits(0)
    xs, ys = data._shifted(x[:5], y[:5], reach=2)
    assert xs.shape == (25 * 5, 64) and ys.tolist() == y[:5].tolist() * 25
    assert (xs[12 * 5:13 * 5] == x[:5]).all()          # the middle copy is unmoved
    moved = xs[13 * 5:14 * 5].view(-1, 8, 8)             # dy=0, dx=+1: one column left
    assert (moved[:, :, :7] == x[:5].view(-1, 8, 8)[:, :, 1:]).all() and (moved[:, :, 7] == 0).all()
    d = data.digits_shifted(seed=0)
    assert len(d.x_test) == 25 * n_test and len(d.x_train) == 25 * (len(x) - n_test)
    assert abs(d.x_train.mean().item()) < 1e-3             # standardised on the training split
