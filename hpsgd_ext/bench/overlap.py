"""The overlap sweep: steps/s, exposed communication and loss after a fixed wall time,
over the ratio of one round's communication time to one step's compute time.

The ratio is set with the link emulation: one compute-only run measures a step; for
ratio r the emulated bandwidth makes one all-reduce of the model's bytes take r steps.
Each algorithm's ideal is ``1 / max(step, communication per step)``: DDP communicates
once a step, periodic averaging once every H steps, HPSGD once a round (its measured
steps per round); with ``auto`` windows the round adapts, so its ideal is the compute
speed itself.

Two ranks on shared cores make single runs noisy here (the same run varies by 10-30%
back to back, drifting with the host's load), so "no communication" runs again at
every ratio, just before that ratio's algorithms, and every fraction is taken
against it; ``repeats`` runs of every configuration reduce to the median steps/s.

With a topology (``workers_per_node`` > 1) the sweep compares the hierarchical set-ups
instead: DDP over all ranks, and DDP or FSDP2 inside each node with a blocking
average or HPSGD across nodes. Only traffic between nodes is emulated, each rank
with its share of its node's link; the ratio is then one rank's all-reduce of the
whole model over that share against one step (FSDP2's ranks send their shards only:
1 / workers per node of it).
"""

from __future__ import annotations

from ..launch import run_local
from ..train.__main__ import parse
from ..train import topology
from ..train.loop import run_algorithm

CONFIGS = [("hpsgd", {"sync_every": "auto"}, "hpsgd auto"),
           ("hpsgd", {"sync_every": "8"}, "hpsgd H=8"),
           ("ddp", {}, "ddp"),
           ("localsgd", {"period": 4}, "localsgd H=4"),
           ("localsgd", {"period": 16}, "localsgd H=16")]
TOPOLOGY_CONFIGS = [("ddp", {}, "ddp (all ranks)"),
                    ("ddp+avg", {"period": 16}, "ddp+avg H=16"),
                    ("ddp+hpsgd", {"sync_every": "16"}, "ddp+hpsgd H=16"),
                    ("fsdp+hpsgd", {"sync_every": "16"}, "fsdp+hpsgd H=16")]


def _comm_per_step(algo: str, extra: dict, comm_s: float, per_node: int) -> float:
    """Seconds of one rank's link time per step that the algorithm needs: DDP once a
    step, averaging once every period, HPSGD once a window (0: auto adapts)."""
    if algo == "ddp":
        return comm_s
    if algo in ("localsgd", "ddp+avg"):
        return comm_s / int(extra["period"])
    if extra["sync_every"] == "auto":
        return 0.0
    share = 1.0 / per_node if algo == "fsdp+hpsgd" else 1.0  # FSDP2 ranks send their shards only
    return comm_s * share / int(extra["sync_every"])


def _param_bytes(cfg: dict) -> int:
    from ..train.data import DATASETS
    from ..train.models import MODELS

    d = DATASETS[cfg["dataset"]](seed=cfg["seed"])
    m = MODELS[cfg["model"]](d.x_train.shape[1], d.classes)
    return sum(p.numel() * p.element_size() for p in m.parameters())


def _median_run(repeats: int, workers: int, cfg: dict, algo: str) -> dict:
    """Rank 0's result of the run with the median steps/s of ``repeats`` runs."""
    runs = sorted((run_local(run_algorithm, workers, cfg, algo)[0] for _ in range(repeats)),
                  key=lambda r: r["steps_per_s"])
    return dict(runs[len(runs) // 2], repeats=[r["steps_per_s"] for r in runs])


def run(ratios=(0.5, 2.0, 8.0, 32.0), seconds: float = 4.0, workers: int = 2,
        model: str = "mlp", dataset: str = "synthetic", repeats: int = 1,
        workers_per_node: int = 1) -> dict:
    """``workers`` ranks in all; ``workers_per_node`` > 1 groups them into nodes."""
    base = parse(["--dataset", dataset, "--model", model, "--seconds", str(seconds), "--evals", "1",
                  "--quiet", "--network", "loopback", "--workers", str(workers),
                  "--workers-per-node", str(workers_per_node)])
    per_node = base["workers_per_node"]
    configs = TOPOLOGY_CONFIGS if per_node > 1 else CONFIGS
    nones = [_median_run(repeats, workers, base, "none")]
    step_s = 1.0 / nones[0]["steps_per_s"]   # sets the link speeds
    nbytes = _param_bytes(base)
    points = []
    for i, r in enumerate(ratios):
        if i:
            nones.append(_median_run(repeats, workers, base, "none"))
        here = nones[-1]["steps_per_s"]
        comm_s = r * step_s
        # the node's link, which its ranks share (topology.inter_node_link)
        cfg = dict(base, network="emulated", bandwidth_mbit=per_node * nbytes * 8 / comm_s / 1e6, latency_ms=0.0)
        for algo, extra, label in configs:
            res = _median_run(repeats, workers, dict(cfg, **extra), algo)
            per_step = _comm_per_step(algo, extra, comm_s, per_node)
            points.append({"ratio": r, "label": label, "bandwidth_mbit": cfg["bandwidth_mbit"],
                           "steps_per_s": res["steps_per_s"], "repeats_steps_per_s": res["repeats"],
                           "comm_seconds_per_step": per_step, "none_steps_per_s": here, "final_loss": res["final_loss"],
                           "final_acc": res["final_acc"], "stats": res["stats"]})
    none = sorted(nones, key=lambda n: n["steps_per_s"])[len(nones) // 2]
    for p in points:
        per_step = p["comm_seconds_per_step"]
        p["ideal_steps_per_s"] = min(p["none_steps_per_s"], 1.0 / per_step if per_step else float("inf"))
        p["fraction_of_ideal"] = p["steps_per_s"] / p["ideal_steps_per_s"]
        p["fraction_of_none"] = p["steps_per_s"] / p["none_steps_per_s"]
    return {"benchmark": "overlap", "config": {k: v for k, v in base.items() if k != "algo"},
            "repeats": repeats,
            "none": {"steps_per_s": none["steps_per_s"], "final_loss": none["final_loss"],
                     "final_acc": none["final_acc"], "all_steps_per_s": [n["steps_per_s"] for n in nones]},
            "model_bytes": nbytes, "points": points}


def table(res: dict) -> str:
    spread = ", ".join(f"{x:.0f}" for x in res["none"].get("all_steps_per_s", []))
    lines = [f"no communication, measured again at every ratio: {spread} steps/s; loss "
             f"{res['none']['final_loss']:.3f} (model {res['model_bytes'] / 1e6:.2f} MB); "
             f"median of {res.get('repeats', 1)} run(s) per point; % none is against that ratio's own run",
             f"{'comm/step':>9} {'algorithm':14} {'steps/s':>8} {'% none':>7} {'% ideal':>8} {'loss':>7} {'acc':>6}"
             f" {'window':>6}",
             "-" * 71]
    for p in res["points"]:
        window = p["stats"].get("steps_per_round") if p["stats"] else None
        lines.append(f"{p['ratio']:9g} {p['label']:14} {p['steps_per_s']:8.1f} {100 * p['fraction_of_none']:6.0f}% "
                     f"{100 * p['fraction_of_ideal']:7.0f}% {p['final_loss']:7.3f} {p['final_acc']:6.3f}"
                     f" {'' if window is None else f'{window:6.1f}'}")
    return "\n".join(lines)


def plot(res: dict, path: str) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    labels = list(dict.fromkeys(p["label"] for p in res["points"]))
    fig, (a1, a2) = plt.subplots(1, 2, figsize=(11, 4.2))
    for i, lab in enumerate(labels):
        pts = [p for p in res["points"] if p["label"] == lab]
        xs = [p["ratio"] for p in pts]
        line, = a1.plot(xs, [p["steps_per_s"] for p in pts], "o-", label=lab)
        a1.plot(xs, [p["ideal_steps_per_s"] for p in pts], ":", color=line.get_color())
        a2.plot(xs, [p["final_loss"] for p in pts], "o-", color=line.get_color(), label=lab)
    a1.axhline(res["none"]["steps_per_s"], color="k", lw=0.8, label="no communication")
    a2.axhline(res["none"]["final_loss"], color="k", lw=0.8, label="no communication (1 worker's model)")
    for ax in (a1, a2):
        ax.set_xscale("log", base=2)
        ax.set_xlabel("one all-reduce / one step of compute")
        ax.grid(alpha=0.3)
    a1.set_yscale("log")
    a1.set_ylabel("steps/s (dotted: each algorithm's ideal)")
    a2.set_ylabel(f"test loss after {res['config']['seconds']:g} s")
    a1.legend(fontsize=8)
    fig.suptitle(f"overlap sweep: {res['config']['dataset']}/{res['config']['model']}, "
                 f"{topology.describe(res['config'])}, emulated link"
                 f"{' between nodes' if res['config'].get('workers_per_node', 1) > 1 else ''}")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
