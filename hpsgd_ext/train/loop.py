"""One algorithm's run on one rank: same data, model, optimizer and seed for every
algorithm, a wall-time budget shared by all ranks, evaluations at fixed fractions of
the budget (their time excluded from it; the synchronisation before them included)."""

from __future__ import annotations

import time

import torch
import torch.distributed as dist
import torch.nn.functional as F

from ..launch import init_from_env
from . import topology
from .algorithms import make_algorithm
from .data import DATASETS
from .models import MODELS


@torch.no_grad()
def evaluate(model, x, y, batch=1024):
    model.eval()
    correct, loss = 0, 0.0
    for i in range(0, len(x), batch):
        out = model(x[i:i + batch])
        loss += F.cross_entropy(out, y[i:i + batch], reduction="sum").item()
        correct += (out.argmax(1) == y[i:i + batch]).sum().item()
    model.train()
    return correct / len(x), loss / len(x)


def run_algorithm(cfg: dict, algo: str) -> dict:
    rank, world = init_from_env(cfg.get("backend"), timeout_s=cfg["timeout"])
    torch.set_num_threads(cfg["threads"])
    device = torch.device("cuda", torch.cuda.current_device()) if cfg["device"] == "cuda" else torch.device("cpu")
    data = DATASETS[cfg["dataset"]](seed=cfg["seed"])
    x, y = (t.to(device) for t in data.shard(rank, world))
    x_test, y_test = data.x_test.to(device), data.y_test.to(device)
    torch.manual_seed(cfg["seed"])
    model = MODELS[cfg["model"]](data.x_train.shape[1], data.classes).to(device)
    alg = make_algorithm(algo, model, lambda params: torch.optim.SGD(params, lr=cfg["lr"], momentum=cfg["momentum"]),
                         topology.inter_node_link(cfg), cfg)
    ctrl = dist.new_group(backend="gloo")  # stop decisions: tiny, not link-emulated
    gen = torch.Generator(device=device).manual_seed(cfg["seed"] * 1000 + rank)

    budget = float(cfg["seconds"])
    marks = [budget * (i + 1) / cfg["evals"] for i in range(cfg["evals"])]
    acc0, loss0 = evaluate(model, x_test, y_test)
    curve = [{"seconds": 0.0, "steps": 0, "acc": acc0, "loss": loss0}]
    bar = _bar(rank, budget, algo, cfg)
    steps, elapsed, shown = 0, 0.0, 0.0
    while marks:
        t0 = time.perf_counter()
        for _ in range(cfg["check_every"]):
            idx = torch.randint(len(x), (cfg["batch"],), generator=gen, device=device)
            loss = F.cross_entropy(alg.model(x[idx]), y[idx])
            alg.optimizer.zero_grad(set_to_none=True)
            loss.backward()
            alg.optimizer.step()
            steps += 1
        if device.type == "cuda":
            torch.cuda.synchronize()
        elapsed += time.perf_counter() - t0
        agreed = torch.tensor([elapsed], dtype=torch.float64)
        dist.all_reduce(agreed, op=dist.ReduceOp.MAX, group=ctrl)  # every rank decides alike
        now = agreed.item()
        if bar is not None:
            bar.update(min(now, budget) - shown)
            shown = min(now, budget)
        if now >= marks[0]:
            t0 = time.perf_counter()
            alg.sync_for_eval()
            elapsed += time.perf_counter() - t0
            acc, tl = evaluate(model, x_test, y_test)
            curve.append({"seconds": now, "steps": steps, "acc": acc, "loss": tl})
            if bar is not None:
                bar.set_postfix(acc=f"{acc:.3f}", steps=steps)
            while marks and now >= marks[0]:
                marks.pop(0)
    if bar is not None:
        bar.close()
    stats = alg.stats()
    alg.close()
    dist.barrier(group=ctrl)
    accs = [c["acc"] for c in curve[1:]]
    return {"algo": algo, "rank": rank, "world": world, "steps": steps, "train_seconds": elapsed,
            "steps_per_s": steps / elapsed, "final_acc": accs[-1], "best_acc": max(accs),
            "final_loss": curve[-1]["loss"], "curve": curve, "stats": stats}


def _bar(rank, budget, algo, cfg):
    if rank != 0 or cfg.get("quiet"):
        return None
    from tqdm import tqdm

    return tqdm(total=budget, desc=f"{algo:>11}", unit="s", bar_format="{desc} {bar} {n:.0f}/{total:.0f}s {postfix}", mininterval=1.0,
                leave=True)
