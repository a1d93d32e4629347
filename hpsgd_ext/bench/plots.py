"""The charts the benchmarks without a curve share: grouped bars, and a grid of
annotated cells for a sweep over two factors."""

from __future__ import annotations


def grouped_bars(path: str, title: str, groups: list[str], series: dict[str, list[float]], ylabel: str,
                 hline: float | None = None, hline_label: str = "") -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(max(6.0, 1.6 * len(groups) * max(1, len(series)) / 2), 4))
    width = 0.8 / max(1, len(series))
    for i, (name, values) in enumerate(series.items()):
        xs = [g + (i - (len(series) - 1) / 2) * width for g in range(len(groups))]
        bars = ax.bar(xs, values, width, label=name)
        ax.bar_label(bars, fmt="%.3g", fontsize=7)
    if hline is not None:
        ax.axhline(hline, color="k", lw=0.8, ls="--", label=hline_label)
    ax.set_xticks(range(len(groups)), groups, fontsize=8)
    ax.set_ylabel(ylabel)
    ax.set_title(title)
    ax.grid(alpha=0.3, axis="y")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def heat_grids(path: str, title: str, rows: list[str], cols: list[str],
               grids: dict[str, list[list[float | None]]], fmt: str = "%.2g",
               thresholds: dict[str, float] | None = None) -> None:
    """One annotated grid per entry of ``grids`` (values[row][col], None for no cell),
    side by side; a cell below its grid's threshold is outlined in red."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    fig, axes = plt.subplots(1, len(grids), figsize=(1.2 * len(cols) * len(grids) + 2, 0.45 * len(rows) + 1.5),
                             squeeze=False)
    for ax, (name, values) in zip(axes[0], grids.items()):
        data = np.array([[np.nan if v is None else v for v in r] for r in values], dtype=float)
        ax.imshow(data, cmap="viridis", aspect="auto")
        limit = (thresholds or {}).get(name)
        for i in range(len(rows)):
            for j in range(len(cols)):
                if np.isnan(data[i, j]):
                    continue
                ax.text(j, i, fmt % data[i, j], ha="center", va="center", fontsize=8, color="w")
                if limit is not None and data[i, j] < limit:
                    ax.add_patch(plt.Rectangle((j - 0.5, i - 0.5), 1, 1, fill=False, ec="r", lw=2))
        ax.set_xticks(range(len(cols)), cols, fontsize=8)
        ax.set_yticks(range(len(rows)), rows, fontsize=8)
        ax.set_title(name + (f" (red: below {limit:g})" if limit is not None else ""), fontsize=9)
    fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
