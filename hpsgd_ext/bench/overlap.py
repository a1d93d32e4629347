"""The overlap sweep: steps/s, exposed communication and loss after a fixed wall time,
over the ratio of one round's communication time to one step's compute time.

The ratio is set with the link emulation: one compute-only run measures a step; for
ratio r the emulated bandwidth makes one all-reduce of the model's bytes take r steps.
Each algorithm's ideal is ``1 / max(step, communication per step)``: DDP communicates
once a step, periodic averaging once every H steps, HPSGD once a round (its measured
steps per round); with ``auto`` windows the round adapts, so its ideal is the compute
speed itself.
"""

from __future__ import annotations

from ..launch import run_local
from ..train.__main__ import parse
from ..train.loop import run_algorithm

CONFIGS = [("hpsgd", {"sync_every": "auto"}, "hpsgd auto"),
           ("hpsgd", {"sync_every": "8"}, "hpsgd H=8"),
           ("ddp", {}, "ddp"),
           ("localsgd", {"period": 4}, "localsgd H=4"),
           ("localsgd", {"period": 16}, "localsgd H=16")]


def _param_bytes(cfg: dict) -> int:
    from ..train.data import DATASETS
    from ..train.models import MODELS

    d = DATASETS[cfg["dataset"]](seed=cfg["seed"])
    m = MODELS[cfg["model"]](d.x_train.shape[1], d.classes)
    return sum(p.numel() * p.element_size() for p in m.parameters())


def run(ratios=(0.5, 2.0, 8.0, 32.0), seconds: float = 4.0, workers: int = 2,
        model: str = "mlp", dataset: str = "synthetic") -> dict:
    base = parse(["--dataset", dataset, "--model", model, "--seconds", str(seconds), "--evals", "1",
                  "--quiet", "--network", "loopback", "--workers", str(workers)])
    none = run_local(run_algorithm, workers, base, "none")[0]
    step_s = 1.0 / none["steps_per_s"]
    nbytes = _param_bytes(base)
    points = []
    for r in ratios:
        comm_s = r * step_s
        cfg = dict(base, network="emulated", bandwidth_mbit=nbytes * 8 / comm_s / 1e6, latency_ms=0.0)
        for algo, extra, label in CONFIGS:
            res = run_local(run_algorithm, workers, dict(cfg, **extra), algo)[0]
            if algo == "ddp":
                per_step = comm_s
            elif algo == "localsgd":
                per_step = comm_s / int(extra["period"])
            elif extra["sync_every"] == "auto":
                per_step = 0.0
            else:
                per_step = comm_s / int(extra["sync_every"])
            ideal = 1.0 / max(step_s, per_step)
            points.append({"ratio": r, "label": label, "bandwidth_mbit": cfg["bandwidth_mbit"],
                           "steps_per_s": res["steps_per_s"], "ideal_steps_per_s": ideal,
                           "fraction_of_ideal": res["steps_per_s"] / ideal,
                           "fraction_of_none": res["steps_per_s"] / none["steps_per_s"],
                           "final_loss": res["final_loss"], "final_acc": res["final_acc"],
                           "stats": res["stats"]})
    return {"benchmark": "overlap", "config": {k: v for k, v in base.items() if k != "algo"},
            "none": {"steps_per_s": none["steps_per_s"], "final_loss": none["final_loss"],
                     "final_acc": none["final_acc"]},
            "model_bytes": nbytes, "points": points}


def table(res: dict) -> str:
    lines = [f"no communication: {res['none']['steps_per_s']:.0f} steps/s, loss {res['none']['final_loss']:.3f} "
             f"(model {res['model_bytes'] / 1e6:.2f} MB)",
             f"{'comm/step':>9} {'algorithm':14} {'steps/s':>8} {'% none':>7} {'% ideal':>8} {'loss':>7} {'acc':>6}",
             "-" * 64]
    for p in res["points"]:
        lines.append(f"{p['ratio']:9g} {p['label']:14} {p['steps_per_s']:8.1f} {100 * p['fraction_of_none']:6.0f}% "
                     f"{100 * p['fraction_of_ideal']:7.0f}% {p['final_loss']:7.3f} {p['final_acc']:6.3f}")
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
                 f"{res['config']['workers']} workers, emulated link")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
