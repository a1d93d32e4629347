"""Data sets that load offline: scikit-learn's handwritten digits (ships inside the
package) and a synthetic teacher task for throughput. No downloads at run time."""

from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass
class Dataset:
    x_train: torch.Tensor
    y_train: torch.Tensor
    x_test: torch.Tensor
    y_test: torch.Tensor
    classes: int
    name: str

    def shard(self, rank: int, world: int) -> tuple[torch.Tensor, torch.Tensor]:
        """This rank's disjoint share of the training set."""
        return self.x_train[rank::world], self.y_train[rank::world]


def digits(seed: int = 0) -> Dataset:
    from sklearn.datasets import load_digits

    d = load_digits()
    x = torch.tensor(d.data, dtype=torch.float32) / 16.0
    y = torch.tensor(d.target, dtype=torch.int64)
    perm = torch.randperm(len(x), generator=torch.Generator().manual_seed(seed))
    x, y = x[perm], y[perm]
    n_test = len(x) // 5
    mean, std = x[n_test:].mean(0), x[n_test:].std(0).clamp_min(1e-3)
    x = (x - mean) / std
    return Dataset(x[n_test:], y[n_test:], x[:n_test], y[:n_test], 10, "digits")


def synthetic(n: int = 200_000, dim: int = 64, classes: int = 10, seed: int = 0) -> Dataset:
    """Labels from a fixed random two-layer teacher: learnable, not trivial."""
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, dim, generator=g)
    w1 = torch.randn(dim, 128, generator=g) / dim**0.5
    w2 = torch.randn(128, classes, generator=g) / 128**0.5
    y = (torch.tanh(x @ w1) @ w2).argmax(1)
    n_test = n // 5
    return Dataset(x[n_test:], y[n_test:], x[:n_test], y[:n_test], classes, "synthetic")


DATASETS = {"digits": digits, "synthetic": synthetic}
