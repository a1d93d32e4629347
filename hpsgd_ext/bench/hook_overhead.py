"""HPSGD's cost on non-boundary steps: a training step with no hook, with HPSGD and a
window that never ends (a counter), and with HPSGD in auto mode while a reduction is
held in flight (a counter and one completion query per step). Same model, same data,
interleaved repeats, medians; one rank (the hook's per-step path has no communication).
Whole steps differ by about +-2% run to run here, so the auto window's own bookkeeping
is also timed alone, per step, with a reduction in flight and without."""

from __future__ import annotations

import statistics
import time

import torch
from torch import nn

from ..comm import LinkModel
from ..hook import HPSGD
from ..launch import init_world_of_one


def _setup(width: int, device: str):
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(256, width), nn.ReLU(), nn.Linear(width, width), nn.ReLU(),
                          nn.Linear(width, 10)).to(device)
    opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
    x = torch.randn(64, 256, device=device)
    y = torch.randint(0, 10, (64,), device=device)
    return model, opt, x, y


def _steps(model, opt, x, y, n: int, device: str) -> float:
    if device == "cuda":
        torch.cuda.synchronize()
    t0 = time.perf_counter()
    for _ in range(n):
        opt.zero_grad(set_to_none=True)
        nn.functional.cross_entropy(model(x), y).backward()
        opt.step()
    if device == "cuda":
        torch.cuda.synchronize()
    return (time.perf_counter() - t0) / n


def run(widths=(256, 1024), steps: int = 200, repeats: int = 7, device: str = "cpu") -> dict:
    init_world_of_one()
    rows = []
    for width in widths:
        cases = {}
        model, opt, x, y = _setup(width, device)
        cases["plain"] = (model, opt, x, y, None)
        m2, o2, x2, y2 = _setup(width, device)
        cases["hpsgd fixed (no boundary)"] = (m2, o2, x2, y2, HPSGD(m2, o2, sync_every=10**9))
        m3, o3, x3, y3 = _setup(width, device)
        hp3 = HPSGD(m3, o3, sync_every="auto", link=LinkModel(bandwidth=1.0, latency=0.0), timeout=3600)
        cases["hpsgd auto (polling)"] = (m3, o3, x3, y3, hp3)
        while hp3.stats()["rounds"] == 0:  # to the first boundary: a reduction now held for hours
            _steps(m3, o3, x3, y3, 1, device)
        samples = {k: [] for k in cases}
        for _ in range(repeats):  # interleaved, so drift hits every case alike
            for k, (m, o, xx, yy, _) in cases.items():
                samples[k].append(_steps(m, o, xx, yy, steps, device))
        med = {k: statistics.median(v) for k, v in samples.items()}
        params = sum(p.numel() for p in model.parameters())
        for k in cases:
            rows.append({"width": width, "params": params, "case": k, "step_s": med[k],
                         "overhead": med[k] / med["plain"] - 1.0})
        rounds = hp3.stats()["rounds"]
        assert rounds == 1, "the auto case must stay inside one window"
        for *_, hp in cases.values():
            if hp is not None:
                hp.close()
    return {"benchmark": "hook_overhead", "device": device, "rows": rows,
            "window_bookkeeping_us": window_bookkeeping(device)}


def window_bookkeeping(device: str, calls: int = 200_000) -> dict:
    """Microseconds the auto window adds to one step's hook (CPU ranks also read two
    CPU clocks on steps with nothing in flight)."""
    from ..window import AutoWindow

    w = AutoWindow(count_background_cpu=device == "cpu", probe_steps=0)
    w.min_window = 10**9  # never ends a window: only the bookkeeping is timed
    out = {}
    for name, reduced in (("reduction_in_flight", False), ("nothing_in_flight", True)):
        t0 = time.perf_counter()
        for _ in range(calls):
            w.should_end(time.perf_counter(), 1, reduced)
            w.step_done(time.perf_counter())
        out[name] = (time.perf_counter() - t0) / calls * 1e6
    return out


def table(res: dict) -> str:
    lines = [f"{'params':>9} {'case':28} {'step us':>9} {'overhead':>9}", "-" * 58]
    for r in res["rows"]:
        lines.append(f"{r['params']:9d} {r['case']:28} {r['step_s'] * 1e6:9.1f} {100 * r['overhead']:8.2f}%")
    wb = res.get("window_bookkeeping_us")
    if wb:
        lines.append(f"auto window bookkeeping alone: {wb['reduction_in_flight']:.2f} us per step with a "
                     f"reduction in flight, {wb['nothing_in_flight']:.2f} us without")
    return "\n".join(lines)


def plot(res: dict, path: str) -> None:
    from .plots import grouped_bars

    params = list(dict.fromkeys(r["params"] for r in res["rows"]))
    cases = [c for c in dict.fromkeys(r["case"] for r in res["rows"]) if c != "plain"]
    by = {(r["params"], r["case"]): r for r in res["rows"]}
    grouped_bars(path, f"HPSGD on non-boundary steps ({res.get('device', 'cpu')})",
                 [f"{p:,} params" for p in params],
                 {c: [100 * by[(p, c)]["overhead"] for p in params] for c in cases},
                 "% of a plain step", hline=2.0, hline_label="2% target")
