"""One markdown page from a folder of benchmark results: for every JSON file the
benchmark writes (and the main job's results.json), where and when it was measured,
its table rebuilt from the JSON, and its plots."""

from __future__ import annotations

import glob
import json
import os


def _tables():
    from ..train import report as train_report
    from . import comm, hook_overhead, kernels, netns, overlap, step_overlap, wires

    return {
        "kernels": ("Fused kernels against eager PyTorch and a plain copy", lambda d: kernels.table(d["rows"])),
        "comm": ("Communicator against torch.distributed", lambda d: comm.table(d["per_rank"][0])),
        "hook_overhead": ("HPSGD's per-step overhead", hook_overhead.table),
        "step_overlap": ("One rank: training steps against one slow all-reduce", step_overlap.table),
        "overlap": ("Overlap sweep under link emulation", overlap.table),
        "netns": ("Over real shaped links", netns.table),
        "wires": ("HPSGD's rounds in float32, bf16, int8 and fp8 over shaped links",
                  lambda d: wires.table(d["rows"])),
        "train": ("Main job: accuracy in the same wall time", lambda d: train_report.table(d["runs"])),
    }


def _where(m: dict) -> str:
    dev = m.get("gpu") or f"{m.get('cpu', '?')} x{m.get('cpu_count', '?')} CPUs"
    extra = f", CUDA {m['cuda_build']}" if m.get("cuda_build") else ""
    extra += f", NCCL {m['nccl']}" if m.get("nccl") else ""
    return (f"{dev}; torch {m.get('torch', '?')}{extra}; hpsgd_ext {m.get('hpsgd_ext', '?')} "
            f"at {m.get('commit', '?')}; {m.get('date', '?')}")


def build(folder: str) -> str:
    tables = _tables()
    sections = []
    for path in sorted(glob.glob(os.path.join(folder, "**", "*.json"), recursive=True)):
        with open(path) as f:
            data = json.load(f)
        kind = data.get("benchmark") or ("train" if "runs" in data else None)
        if kind not in tables:
            continue
        title, make = tables[kind]
        rel = os.path.relpath(path, folder)
        stem = os.path.splitext(path)[0]
        pngs = sorted(glob.glob(stem + ".png")) if os.path.basename(path) != "results.json" \
            else sorted(glob.glob(os.path.join(os.path.dirname(path), "*.png")))
        body = [f"## {title}: `{rel}`", "", f"Measured on {_where(data.get('machine', {}))}.", "",
                "```", make(data), "```", ""]
        body += [f"![{os.path.basename(p)}]({os.path.relpath(p, folder)})\n" for p in pngs]
        sections.append("\n".join(body))
    if not sections:
        raise FileNotFoundError(f"hpsgd-bench report: no benchmark JSON in {folder!r}")
    head = ["# hpsgd_ext benchmark report", "",
            f"Built by `hpsgd-bench report {folder}` from {len(sections)} result file(s); every table is "
            "rebuilt from its JSON, so the numbers are the measured ones.", ""]
    return "\n".join(head) + "\n" + "\n".join(sections)


def write(folder: str, out: str | None = None) -> str:
    text = build(folder)
    out = out or os.path.join(folder, "REPORT.md")
    with open(out, "w") as f:
        f.write(text)
    return out
