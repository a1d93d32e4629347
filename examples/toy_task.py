"""The small task the framework examples share (a user's own model and data go here):
4-way classification of 16 random features, a BatchNorm MLP, and the means to
compare runs (a digest of the parameters, one JSON file per rank)."""

from __future__ import annotations

import hashlib
import json
import os

import torch
from torch import nn
from torch.utils.data import TensorDataset


def dataset(n: int, seed: int) -> TensorDataset:
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, 16, generator=g)
    return TensorDataset(x, x[:, :4].argmax(1))


def mlp() -> nn.Module:
    return nn.Sequential(nn.Linear(16, 64), nn.BatchNorm1d(64), nn.ReLU(), nn.Linear(64, 4))


def digest(module: nn.Module) -> str:
    """sha256 of the parameters' bytes: equal digests, bit-identical models."""
    return hashlib.sha256(b"".join(p.detach().cpu().numpy().tobytes() for p in module.parameters())).hexdigest()


def write_result(out: str, rank: int, result: dict, stats: dict) -> None:
    result = {**result, "rank": rank, "stats": {k: v for k, v in stats.items() if isinstance(v, (int, float))}}
    os.makedirs(out, exist_ok=True)
    with open(os.path.join(out, f"rank{rank}.json"), "w") as f:
        json.dump(result, f)
