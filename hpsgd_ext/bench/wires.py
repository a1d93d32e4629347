"""The wire study (issue 14): HPSGD's rounds in float32, bfloat16, int8 and float8 over
the same shaped link, from runs of the main job (``hpsgd-train --algo
hpsgd,hpsgd@bf16,hpsgd@int8,hpsgd@fp8 --network netns --bandwidth-mbit B``), one folder
per link rate. Per rate and wire: steps per round (with the auto window a round that
takes longer makes the window longer: staler merges), steps/s, the payload per round,
the final accuracy, all in the same wall time."""

from __future__ import annotations

import json
import os

WIRES = ("fp32", "bf16", "fp16", "int8", "fp8")


def collect(folders: list[str]) -> list[dict]:
    rows = []
    for folder in folders:
        with open(os.path.join(folder, "results.json")) as f:
            res = json.load(f)
        cfg = res["config"]
        for r in res["runs"]:
            base, _, wire = r["algo"].partition("@")
            if not base.endswith("hpsgd"):
                continue
            st = r["stats"]
            wire = wire or {"none": "fp32"}.get(cfg["comm_dtype"], cfg["comm_dtype"])
            rows.append({"folder": folder, "mbit": cfg["bandwidth_mbit"], "network": cfg["network"],
                         "algo": r["algo"], "wire": wire, "steps_per_s": r["steps_per_s"],
                         "steps_per_round": st["steps_per_round"], "rounds": st["rounds"],
                         "kb_per_round": st["bytes_reduced"] / st["rounds"] / 1e3 if st["rounds"] else 0.0,
                         "final_acc": r["final_acc"], "seconds": cfg["seconds"],
                         "order": [x["algo"] for x in res["runs"]].index(r["algo"])})
    rows.sort(key=lambda r: (r["mbit"], r["folder"], WIRES.index(r["wire"]) if r["wire"] in WIRES else 99))
    return rows


def table(rows: list[dict]) -> str:
    head = (f"{'Mbit/s':>6} {'wire':>5} {'run':>4} {'steps/s':>8} {'vs fp32':>7} {'steps/round':>11} "
            f"{'KB/round':>8} {'final acc':>9}  folder")
    lines = [head, "-" * len(head)]
    for r in rows:
        fp32 = next((x for x in rows if x["folder"] == r["folder"] and x["wire"] == "fp32"), None)
        rel = f"{100 * r['steps_per_s'] / fp32['steps_per_s']:6.0f}%" if fp32 else "      -"
        lines.append(f"{r['mbit']:6g} {r['wire']:>5} {r['order'] + 1:4d} {r['steps_per_s']:8.1f} {rel:>7} "
                     f"{r['steps_per_round']:11.1f} {r['kb_per_round']:8.1f} {r['final_acc']:9.4f}  "
                     f"{os.path.basename(r['folder'])}")
    lines.append("run: the position of the wire in its folder's sequence (the first run of a folder "
                 "meets a cold machine)")
    return "\n".join(lines)


def plot(rows: list[dict], path: str) -> None:
    from .plots import grouped_bars

    groups = sorted({(r["mbit"], os.path.basename(r["folder"])) for r in rows})
    wires = [w for w in WIRES if any(r["wire"] == w for r in rows)]

    def value(g, w):
        return next((r["steps_per_round"] for r in rows
                     if (r["mbit"], os.path.basename(r["folder"])) == g and r["wire"] == w), 0.0)

    grouped_bars(path, "HPSGD steps per round (auto window) by wire, same wall time",
                 [f"{m:g} Mbit/s\n{name}" for m, name in groups],
                 {w: [value(g, w) for g in groups] for w in wires}, "steps per round")
