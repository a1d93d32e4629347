"""The main job's summary: a table, a JSON file and a PNG of test accuracy against
wall time for every algorithm."""

from __future__ import annotations

import json
import os

from ..bench.meta import machine
from . import topology


def exposed_percent(run: dict, baseline: dict | None) -> float | None:
    """Share of the training time not spent computing: 1 - speed / no-comm speed."""
    if baseline is None or run["algo"] == "none":
        return None
    return max(0.0, 100.0 * (1.0 - run["steps_per_s"] / baseline["steps_per_s"]))


def table(runs: list[dict]) -> str:
    base = next((r for r in runs if r["algo"] == "none"), None)
    ceiling = next((r for r in runs if r["algo"] == "ceiling"), None)
    w = max([12] + [len(r["algo"]) for r in runs])
    head = (f"{'algorithm':{w}} {'final acc':>9} {'best acc':>8} {'steps':>7} {'steps/s':>8} {'vs none':>7} "
            f"{'exposed':>8} {'rounds':>7} {'steps/rnd':>9} {'KB/round':>8}")
    lines = [head, "-" * len(head)]
    for r in runs:
        ex = exposed_percent(r, base)
        rel = f"{100 * r['steps_per_s'] / base['steps_per_s']:6.0f}%" if base else "      -"
        st = r["stats"]
        rounds = st.get("rounds", "-")
        # HPSGD's rounds: steps per round and the payload each put on the wire
        per = f"{st['steps_per_round']:9.1f}" if st.get("steps_per_round") else f"{'-':>9}"
        kb = f"{st['bytes_reduced'] / st['rounds'] / 1e3:8.1f}" if st.get("rounds") else f"{'-':>8}"
        lines.append(f"{r['algo']:{w}} {r['final_acc']:9.4f} {r['best_acc']:8.4f} {r['steps']:7d} "
                     f"{r['steps_per_s']:8.1f} {rel:>7} {('-' if ex is None else f'{ex:6.1f}%'):>8} {rounds!s:>7} "
                     f"{per} {kb}")
    if ceiling is not None:
        lines.append(f"ceiling: compute alone while the transport streams all-reduces keeps "
                     f"{ceiling['steps_per_s']:.1f} steps/s")
    return "\n".join(lines)


def setting(cfg: dict) -> str:
    """Data, model, topology and link in one line (the plot's title, the summary's head)."""
    topo = topology.describe(cfg)
    between = "between nodes" if cfg.get("workers_per_node", 1) > 1 else ""
    if cfg["network"] == "netns":
        link = f"{cfg['bandwidth_mbit']:g} Mbit/s tbf-shaped links {between}".rstrip()
    elif cfg["network"] == "emulated" and topology.inter_node_link(cfg) is not None:
        link = f"{cfg['bandwidth_mbit']:g} Mbit/s, {cfg['latency_ms']:g} ms emulated link {between}".rstrip()
    else:
        link = "loopback"
    if between:
        link += ", loopback inside"
    return f"{cfg['dataset']} / {cfg['model']}, {topo}, {link}"


def write(runs: list[dict], cfg: dict, out_dir: str) -> dict:
    os.makedirs(out_dir, exist_ok=True)
    text = table(runs)
    with open(os.path.join(out_dir, "summary.txt"), "w") as f:
        f.write(setting(cfg) + "\n" + text + "\n")
    with open(os.path.join(out_dir, "results.json"), "w") as f:
        json.dump({"machine": machine(), "config": cfg, "runs": runs}, f, indent=2)
    plot(runs, cfg, os.path.join(out_dir, "accuracy_vs_time.png"))
    return {"table": text, "dir": out_dir}


def plot(runs: list[dict], cfg: dict, path: str) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.5))
    for r in runs:
        xs = [c["seconds"] for c in r["curve"]]
        ys = [c["acc"] for c in r["curve"]]
        ax.plot(xs, ys, marker="o", ms=3, label=f"{r['algo']} ({r['steps_per_s']:.0f} steps/s)")
    ax.set_title(setting(cfg), fontsize=9 if cfg.get("workers_per_node", 1) > 1 else None)
    ax.set_xlabel("training wall time (s)")
    ax.set_ylabel("test accuracy")
    lo = min(min(c["acc"] for c in r["curve"][1:]) for r in runs)
    ax.set_ylim(max(0.0, lo - 0.05), 1.0)
    ax.grid(alpha=0.3)
    ax.legend(loc="lower right")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
