"""One rank, one real training step, one slow all-reduce: how much of the all-reduce
hides behind the step. A small transformer trains (bf16 on CUDA, float32 on CPU)
while the communicator reduces a buffer of the model's size under link emulation
that makes the reduction last about as long as the ``steps`` steps. Measured three
ways: the steps alone, the reduction alone, and both at once (reduction issued,
steps run, then waited for). On CUDA every duration is also taken with CUDA events
(the steps on the compute stream; the reduction on the communicator's own stream,
``Work.device_seconds``) beside the wall clock.

    hidden = (compute + comm - both) / min(compute, comm)
                                        1.0: both took as long as the longer one alone
    slowdown = compute during both / compute alone
"""

from __future__ import annotations

import statistics
import time

import torch
import torch.nn.functional as F

from ..comm import Communicator, LinkModel
from ..launch import init_world_of_one
from ..train.models import SmallTransformer


def _setup(device: torch.device, d_model: int, layers: int, tokens: int, batch: int):
    torch.manual_seed(0)
    dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    features = tokens * 16
    model = SmallTransformer(features, 10, d_model=d_model, layers=layers, tokens=tokens).to(device, dtype)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4)
    x = torch.randn(batch, features, device=device, dtype=dtype)
    y = torch.randint(0, 10, (batch,), device=device)
    return model, opt, x, y


def _steps(model, opt, x, y, n: int) -> None:
    for _ in range(n):
        F.cross_entropy(model(x).float(), y).backward()
        opt.step()
        opt.zero_grad(set_to_none=True)


class _Clock:
    """Wall seconds, and on CUDA the compute stream's event seconds, of a block."""

    def __init__(self, device: torch.device):
        self.cuda = device.type == "cuda"

    def __enter__(self):
        if self.cuda:
            torch.cuda.synchronize()
            self.e0, self.e1 = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            self.e0.record()
            self.stopped = False
        self.t0 = time.perf_counter()
        return self

    def stop_compute(self) -> None:
        if self.cuda:
            self.e1.record()
            self.stopped = True

    def __exit__(self, *exc):
        if self.cuda:
            if not self.stopped:  # a block with no compute: its events span nothing
                self.stop_compute()
            torch.cuda.synchronize()
        self.wall = time.perf_counter() - self.t0
        self.compute_events = self.e0.elapsed_time(self.e1) / 1e3 if self.cuda else float("nan")


# (d_model, layers, tokens, batch): a GPU gets a step of real size, a CPU one it can run.
SIZES = {"cuda": (512, 6, 128, 64), "cpu": (64, 2, 16, 16)}


def run(device: str = "cpu", steps: int = 10, repeats: int = 5, size=None) -> dict:
    init_world_of_one()
    dev = torch.device("cuda", torch.cuda.current_device()) if device == "cuda" else torch.device("cpu")
    model, opt, x, y = _setup(dev, *(size or SIZES[dev.type]))
    nbytes = sum(p.numel() * p.element_size() for p in model.parameters())
    flat = torch.zeros(nbytes // 2, dtype=torch.bfloat16, device=dev)
    _steps(model, opt, x, y, 3)  # warm up (allocator, kernels, optimizer state)

    def compute_alone():
        with _Clock(dev) as c:
            _steps(model, opt, x, y, steps)
            c.stop_compute()
        return c

    compute_s = statistics.median(compute_alone().wall for _ in range(repeats))
    link = LinkModel(bandwidth=nbytes / compute_s, latency=0.0)  # one reduction ~ the steps' time
    rows = []
    with Communicator(device=dev, link=link, timeout=120) as comm:
        transport = comm.transport
        comm.all_reduce_async(flat).wait()  # warm up (communicator, hold kernel)
        for _ in range(repeats):
            alone = compute_alone()
            with _Clock(dev) as c:
                w = comm.all_reduce_async(flat)
                w.wait()
            comm_wall, comm_dev = c.wall, w.device_seconds
            with _Clock(dev) as both:
                w = comm.all_reduce_async(flat)
                _steps(model, opt, x, y, steps)
                both.stop_compute()
                w.wait()
            rows.append({"compute_s": alone.wall, "compute_events_s": alone.compute_events,
                         "comm_s": comm_wall, "comm_device_s": comm_dev, "both_s": both.wall,
                         "compute_in_both_events_s": both.compute_events,
                         "both_device_comm_s": w.device_seconds})
    med = {k: statistics.median(r[k] for r in rows) for k in rows[0]}
    hidden = (med["compute_s"] + med["comm_s"] - med["both_s"]) / min(med["compute_s"], med["comm_s"])
    slowdown = (med["compute_in_both_events_s"] / med["compute_events_s"]) if dev.type == "cuda" else float("nan")
    return {"benchmark": "step_overlap", "device": dev.type, "params": sum(p.numel() for p in model.parameters()),
            "dtype": str(next(model.parameters()).dtype), "bytes": nbytes, "steps": steps,
            "transport": transport, "median": med, "rows": rows,
            "hidden_fraction": hidden, "compute_slowdown_events": slowdown}


def table(res: dict) -> str:
    m = res["median"]
    ev = (lambda v: f"{v * 1e3:8.2f}") if res["device"] == "cuda" else (lambda v: f"{'-':>8}")
    lines = [f"{res['params']:,} params ({res['dtype']}), {res['steps']} training steps vs one all-reduce of "
             f"{res['bytes'] / 1e6:.1f} MB held by the link to about the steps' time ({res['transport']}); medians",
             f"{'':28} {'wall ms':>8} {'events ms':>9}", "-" * 48,
             f"{'steps alone':28} {m['compute_s'] * 1e3:8.2f} {ev(m['compute_events_s'])}",
             f"{'all-reduce alone':28} {m['comm_s'] * 1e3:8.2f} {ev(m['comm_device_s'])}",
             f"{'both (events: the steps)':28} {m['both_s'] * 1e3:8.2f} {ev(m['compute_in_both_events_s'])}",
             f"hidden: {100 * res['hidden_fraction']:.0f}% of the shorter of the two (100%: both took "
             "as long as the longer alone)"]
    if res["device"] == "cuda":
        lines.append(f"the steps on the compute stream took {100 * (res['compute_slowdown_events'] - 1):+.1f}% "
                     "longer while the all-reduce ran")
    return "\n".join(lines)
