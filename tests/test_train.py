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


def test_cli_wire_suffix(capsys):
    assert parse(["--algo", "hpsgd,hpsgd@bf16,hpsgd@int8,hpsgd-ref@fp8"])["algo"][2] == "hpsgd@int8"
    for bad in ("ddp@int8", "hpsgd@int4"):  # DDP sends no rounds; no such wire
        with pytest.raises(SystemExit):
            parse(["--algo", bad])
        assert "unknown algorithm" in capsys.readouterr().err


def test_wires_side_by_side(tmp_path):
    """One run compares wires: HPSGD with float32, int8 and fp8 rounds; the 8-bit ones
    put about a quarter of the bytes on the wire per round and still learn."""
    out = tmp_path / "wires"
    rc = main(["--algo", "hpsgd,hpsgd@int8,hpsgd@fp8", "--sync-every", "4", "--seconds", "2",
               "--evals", "1", "--dataset", "digits", "--bandwidth-mbit", "50", "--out", str(out),
               "--quiet"])
    assert rc == 0
    runs = {r["algo"]: r for r in json.loads((out / "results.json").read_text())["runs"]}
    per_round = {a: r["stats"]["bytes_reduced"] / r["stats"]["rounds"] for a, r in runs.items()}
    for wire in ("hpsgd@int8", "hpsgd@fp8"):
        assert per_round[wire] < per_round["hpsgd"] / 3, per_round
        assert runs[wire]["final_acc"] > 0.3, runs[wire]


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


def test_topology_flags_build_the_world():
    flat = parse([])
    # without the flags every worker is a node of its own, as the main job always modelled
    assert (flat["workers"], flat["nodes"], flat["workers_per_node"]) == (2, 2, 1)
    cfg = parse(["--nodes", "2", "--workers-per-node", "2", "--algo", "ddp,ddp+avg,ddp+hpsgd,fsdp+hpsgd"])
    assert (cfg["workers"], cfg["nodes"], cfg["workers_per_node"]) == (4, 2, 2)
    cfg = parse(["--workers", "6", "--workers-per-node", "3", "--algo", "ddp+hpsgd"])
    assert (cfg["workers"], cfg["nodes"], cfg["workers_per_node"]) == (6, 2, 3)


@pytest.mark.parametrize("argv,expected", [
    (["--nodes", "2", "--workers-per-node", "2", "--workers", "3"], "--workers 3 disagrees with --nodes 2"),
    (["--workers", "3", "--workers-per-node", "2"], "not a multiple of --workers-per-node 2"),
    (["--nodes", "0"], "--nodes is 0; expected a positive"),
    (["--workers-per-node", "0"], "--workers-per-node is 0"),
    (["--algo", "ddp+hpsgd"], "need(s) --nodes >= 2 and --workers-per-node >= 2"),
    (["--nodes", "1", "--workers-per-node", "4", "--algo", "fsdp+hpsgd"], "got 1 node(s) x 4 worker(s)"),
])
def test_topology_flags_that_cannot_work_are_errors(argv, expected, capsys):
    with pytest.raises(SystemExit):
        parse(argv)
    assert expected in capsys.readouterr().err


def test_emulated_link_holds_only_traffic_between_nodes():
    from hpsgd_ext.train.topology import inter_node_link

    assert inter_node_link(parse(["--bandwidth-mbit", "80"])).bandwidth == pytest.approx(10e6)
    # a node's two ranks share its link
    assert inter_node_link(parse(["--bandwidth-mbit", "80", "--nodes", "2", "--workers-per-node", "2"])
                           ).bandwidth == pytest.approx(5e6)
    assert inter_node_link(parse(["--nodes", "1", "--workers-per-node", "2"])) is None  # nothing leaves the node
    assert inter_node_link(parse(["--network", "loopback", "--nodes", "2", "--workers-per-node", "2"])) is None


def test_main_job_on_two_nodes_of_two(tmp_path):
    """2 nodes x 2 ranks, every hierarchical algorithm and DDP over all ranks, run as
    torchrun runs it: one set of processes for every algorithm (a fresh launch per
    algorithm would cost 20-30 s of start-up each on 2 cores)."""
    from hpsgd_ext.launch import run_local

    out = tmp_path / "topo"
    algos = ["ddp", "ddp+avg", "ddp+hpsgd", "fsdp+hpsgd"]
    run_local(main, 4, ["--nodes", "2", "--workers-per-node", "2", "--algo", ",".join(algos), "--seconds", "1",
                        "--evals", "1", "--dataset", "digits", "--bandwidth-mbit", "200", "--period", "8",
                        "--check-every", "10",
                        "--out", str(out), "--quiet"])
    res = json.loads((out / "results.json").read_text())
    assert res["config"]["nodes"] == 2 and res["config"]["workers_per_node"] == 2
    assert [r["algo"] for r in res["runs"]] == algos
    for r in res["runs"]:
        assert r["world"] == 4 and r["steps"] > 0 and r["final_acc"] > 0.2, r["algo"]
        if r["algo"] != "ddp":  # rank 0 is on node 0 with rank 1; rank 2 holds its place on node 1
            assert (r["stats"]["node"], r["stats"]["intra_ranks"], r["stats"]["cross_ranks"]) == (0, [0, 1], [0, 2])
    for r in res["runs"][2:]:
        assert r["stats"]["rounds"] >= 1 and r["stats"]["local_steps"] == r["steps"], r["algo"]
    # FSDP2 ranks hold and send half the model: about half the extra memory of DDP inside
    ddp_hp, fsdp_hp = res["runs"][2]["stats"], res["runs"][3]["stats"]
    assert 0.45 < fsdp_hp["extra_bytes"] / ddp_hp["extra_bytes"] < 0.55, (fsdp_hp, ddp_hp)
    assert "2 nodes x 2 workers" in (out / "summary.txt").read_text()
    assert (out / "accuracy_vs_time.png").stat().st_size > 10_000


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
