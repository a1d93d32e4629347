"""The comparison over real shaped links: every algorithm of the main job, each in
its own set of network namespaces joined by veth pairs shaped with tc tbf (Linux,
root; set up and removed by the main job's own netns launcher), for each worker
count. Beside every algorithm's steps/s stands the ceiling measured in the same run:
the same compute while the transport streams back-to-back all-reduces over the
same links (on CPU, Gloo's own CPU cost sets it)."""

from __future__ import annotations

from ..train.__main__ import parse
from ..train.netns_launch import run_in_namespaces

ALGOS = "none,ceiling,hpsgd,hpsgd-ref,ddp,localsgd"


def run(workers=(2, 4), bandwidth_mbit: float = 200.0, seconds: float = 10.0, model: str = "mlp",
        dataset: str = "digits-shifted") -> dict:
    sets = []
    for w in workers:
        cfg = parse(["--network", "netns", "--bandwidth-mbit", str(bandwidth_mbit), "--workers", str(w),
                     "--seconds", str(seconds), "--algo", ALGOS, "--model", model, "--dataset", dataset,
                     "--evals", "2", "--quiet"])
        runs = run_in_namespaces(cfg)
        by = {r["algo"]: r for r in runs}
        rows = []
        for r in runs:
            rows.append({"algo": r["algo"], "steps_per_s": r["steps_per_s"],
                         "fraction_of_none": r["steps_per_s"] / by["none"]["steps_per_s"],
                         "fraction_of_ceiling": r["steps_per_s"] / by["ceiling"]["steps_per_s"],
                         "final_acc": r["final_acc"], "best_acc": r["best_acc"], "stats": r["stats"]})
        sets.append({"workers": w, "config": {k: v for k, v in cfg.items() if k != "algo"}, "rows": rows,
                     "runs": runs})
    return {"benchmark": "netns", "bandwidth_mbit": bandwidth_mbit, "seconds": seconds, "sets": sets}


def table(res: dict) -> str:
    lines = [f"real links shaped to {res['bandwidth_mbit']:g} Mbit/s (tc tbf), {res['seconds']:g} s per algorithm",
             f"{'workers':>7} {'algorithm':10} {'steps/s':>8} {'% none':>7} {'% ceiling':>9} {'final acc':>9}",
             "-" * 56]
    for s in res["sets"]:
        for r in s["rows"]:
            lines.append(f"{s['workers']:7d} {r['algo']:10} {r['steps_per_s']:8.1f} {100 * r['fraction_of_none']:6.0f}% "
                         f"{100 * r['fraction_of_ceiling']:8.0f}% {r['final_acc']:9.4f}")
    return "\n".join(lines)


def plot(res: dict, path: str) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(res["sets"]), figsize=(5.5 * len(res["sets"]), 4), squeeze=False)
    for ax, s in zip(axes[0], res["sets"]):
        rows = [r for r in s["rows"] if r["algo"] not in ("none", "ceiling")]
        by = {r["algo"]: r for r in s["rows"]}
        ax.bar([r["algo"] for r in rows], [r["steps_per_s"] for r in rows], color="tab:blue")
        ax.axhline(by["none"]["steps_per_s"], color="k", lw=1, label="no communication")
        ax.axhline(by["ceiling"]["steps_per_s"], color="tab:red", ls="--", lw=1,
                   label="ceiling: compute while Gloo streams")
        ax.set_title(f"{s['workers']} workers, {res['bandwidth_mbit']:g} Mbit/s shaped links")
        ax.set_ylabel("steps/s per worker")
        ax.legend(fontsize=8)
        ax.grid(alpha=0.3, axis="y")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
