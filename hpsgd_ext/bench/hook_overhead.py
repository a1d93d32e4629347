"""HPSGD's per-step cost. On non-boundary steps: a training step with no hook, with
HPSGD and a window that never ends (a counter), and with HPSGD in auto mode while a
reduction is held in flight (a counter and one completion query per step), all on one
model and optimizer with one hook switched on at a time. At a boundary: HPSGD with a
window of one step, so every step pays the fused round_step and the issue of a
reduction; its own seconds per round (the boundary less any wait for the previous
round) are reported as a fraction of a plain step, which is what a window of H steps
pays 1/H of. One rank (the transport's cost of a real all-reduce is the comm
benchmark's). Whole steps vary with the host's load, so the hook's own call and the
auto window's bookkeeping are also timed alone."""

from __future__ import annotations

import random
import statistics
import time

import torch
from torch import nn

from ..emulation import EmulatedLink, LinkModel
from ..hook import HPSGD
from ..launch import init_world_of_one

BOUNDARY = "hpsgd H=1 (boundary every step)"


def _setup(width: int, device: str):
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(256, width), nn.ReLU(), nn.Linear(width, width), nn.ReLU(),
                          nn.Linear(width, 10)).to(device)
    opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
    x = torch.randn(64, 256, device=device)
    y = torch.randint(0, 10, (64,), device=device)
    return model, opt, x, y


def _steps(model, opt, x, y, n: int, device: str) -> float:
    # The compute stream only: a device-wide sync would also wait for the auto
    # case's reduction, which is held in flight on the comm stream on purpose.
    sync = torch.cuda.current_stream().synchronize if device == "cuda" else (lambda: None)
    sync()
    t0 = time.perf_counter()
    for _ in range(n):
        opt.zero_grad(set_to_none=True)
        nn.functional.cross_entropy(model(x), y).backward()
        opt.step()
    sync()
    return (time.perf_counter() - t0) / n


def _only(hps: list, on) -> None:
    """Let the optimizer run exactly one of the HPSGD hooks (``on``), or none."""
    for hp in hps:
        if hp is not on:
            hp.detach()
    if on is not None:
        on.attach()


def _interleave(hps: list, cases: dict, model, opt, x, y, steps: int, repeats: int, device: str) -> dict:
    """Seconds per step of each case, in blocks of ``steps``, the cases in a fresh
    random order every repeat (so no case always follows the same other one)."""
    order = random.Random(0)
    names = list(cases)
    samples = {k: [] for k in names}
    for _ in range(repeats):
        order.shuffle(names)
        for k in names:
            _only(hps, cases[k])
            samples[k].append(_steps(model, opt, x, y, steps, device))
    _only(hps, None)
    return samples


def run(widths=(256, 1024), steps: int = 1, repeats: int = 1000, device: str = "cpu") -> dict:
    """Every case steps the same model, optimizer and data, with one HPSGD's hook
    switched on (or none): separately allocated copies of one model differ by up to
    +-2% of a step here by where their tensors landed, more than the hook costs.
    Blocks of ``steps`` steps (default: single steps, each timed), cases interleaved
    in random order ``repeats`` times: the host's load moves whole-step times by
    tens of percent between runs, and single steps interleaved see the same load."""
    init_world_of_one()
    rows, boundaries = [], []
    for width in widths:
        model, opt, x, y = _setup(width, device)
        # One model and optimizer, one hook attached at a time (HPSGD refuses two).
        hps = []
        for kw in ({"sync_every": 10**9}, {"sync_every": "auto", "timeout": 3600,
                                           "communicator": EmulatedLink(LinkModel(bandwidth=1.0, latency=0.0))}, {"sync_every": 1}):
            hps.append(HPSGD(model, opt, **kw))
            hps[-1].detach()
        fixed, auto, every = hps
        # Every kernel any case launches is loaded before the auto case's reduction
        # is held: on CUDA, loading a kernel lazily may wait for the spinning hold.
        for hp in (every, fixed, None):
            _only(hps, hp)
            _steps(model, opt, x, y, 3, device)
        warm = every.stats()  # the boundary's own cost below leaves these first rounds out
        _only(hps, auto)
        # To the first boundary: a reduction now held for hours (close() cancels the hold).
        while auto.stats()["rounds"] == 0:
            _steps(model, opt, x, y, 1, device)
        # The boundary case is timed apart: a boundary leaves the caches cold for
        # whichever step follows it, and that must not be a non-boundary case's step.
        quiet = _interleave(hps, {"plain": None, "hpsgd fixed (no boundary)": fixed,
                                  "hpsgd auto (polling)": auto}, model, opt, x, y, steps, repeats, device)
        loud = _interleave(hps, {"plain": None, BOUNDARY: every}, model, opt, x, y, steps, repeats, device)
        params = sum(p.numel() for p in model.parameters())
        for samples, names in ((quiet, list(quiet)), (loud, [BOUNDARY])):
            for k in names:
                # the median of each repeat's ratio to the plain block of the same repeat
                ratio = statistics.median(t / t0 for t, t0 in zip(samples[k], samples["plain"]))
                rows.append({"width": width, "params": params, "case": k,
                             "step_s": statistics.median(samples[k]), "overhead": ratio - 1.0})
        hook_us = {"fixed": _hook_call_us(hps, fixed), "auto": _hook_call_us(hps, auto)}
        assert auto.stats()["rounds"] == 1, "the auto case must stay inside one window"
        now = every.stats()
        s = {k: now[k] - warm[k] for k in ("boundary_seconds", "exposed_seconds", "rounds")}
        own = (s["boundary_seconds"] - s["exposed_seconds"]) / s["rounds"]
        plain = statistics.median(quiet["plain"])
        boundaries.append({"width": width, "params": params, "rounds": s["rounds"],
                           "boundary_s": own, "fraction_of_step": own / plain, "hook_call_us": hook_us})
        # The held case first: tearing down an NCCL communicator may synchronize the
        # whole device, which would wait for a hold still spinning on another stream.
        for hp in (auto, fixed, every):
            hp.close()
    return {"benchmark": "hook_overhead", "device": device, "rows": rows, "boundary": boundaries,
            "window_bookkeeping_us": window_bookkeeping(device)}


def _hook_call_us(hps: list, hp: HPSGD, calls: int = 100_000) -> float:
    """Microseconds of one call of the hook itself on a non-boundary step: an
    optimizer step with no gradients (the optimizer only loops over its groups),
    with the hook attached, less the same without it."""
    opt = hp.optimizer
    opt.zero_grad(set_to_none=True)
    best = {}
    for case in (hp, None, hp, None):
        _only(hps, case)
        t0 = time.perf_counter()
        for _ in range(calls):
            opt.step()
        best[case] = min(best.get(case, float("inf")), time.perf_counter() - t0)
    _only(hps, None)
    return max(0.0, best[hp] - best[None]) / calls * 1e6


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
    lines = [f"{'params':>9} {'case':32} {'step us':>9} {'overhead':>9}", "-" * 62]
    for r in res["rows"]:
        lines.append(f"{r['params']:9d} {r['case']:32} {r['step_s'] * 1e6:9.1f} {100 * r['overhead']:8.2f}%")
    wb = res.get("window_bookkeeping_us")
    if wb:
        lines.append(f"auto window bookkeeping alone: {wb['reduction_in_flight']:.2f} us per step with a "
                     f"reduction in flight, {wb['nothing_in_flight']:.2f} us without")
    for b in res.get("boundary", ()):
        if "hook_call_us" in b:
            h = b["hook_call_us"]
            lines.append(f"hook call alone, {b['params']} params: {h['fixed']:.2f} us fixed H, {h['auto']:.2f} us auto")
        lines.append(f"boundary (fused round_step + issue), {b['params']} params: {b['boundary_s'] * 1e6:.0f} us "
                     f"per round = {100 * b['fraction_of_step']:.1f}% of one step; a window of H steps pays 1/H")
    return "\n".join(lines)


def plot(res: dict, path: str) -> None:
    from .plots import grouped_bars

    params = list(dict.fromkeys(r["params"] for r in res["rows"]))
    cases = [c for c in dict.fromkeys(r["case"] for r in res["rows"]) if c not in ("plain", BOUNDARY)]
    by = {(r["params"], r["case"]): r for r in res["rows"]}
    grouped_bars(path, f"HPSGD on non-boundary steps ({res.get('device', 'cpu')})",
                 [f"{p:,} params" for p in params],
                 {c: [100 * by[(p, c)]["overhead"] for p in params] for c in cases},
                 "% of a plain step", hline=2.0, hline_label="2% target")
