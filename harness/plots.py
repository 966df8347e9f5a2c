"""Figures of a study (matplotlib, Agg backend: no display needed).

    harness tables studies/table1.yaml      # also writes results/table1.png
    harness tables studies/fig5.yaml        # results/fig5.png: Fig. 5's heatmaps

:func:`accuracy_vs_gflops` draws top-1 (mean +- std over seeds) against the
row's GFLOPs on the paper backbone: this run on the left, the paper's figures
on the right. Two panels rather than one because the laptop profile trains on
synthetic data: its accuracies are not on the paper's scale. With GFLOPs per
view (Tables 4, 5) the x axis is the cost of one video, GFLOPs per view x
views, on a log scale, and the paper's panel uses the paper's own costs.

:func:`fusion_heatmaps` draws Fig. 5: ||T_ij||_1 of the fusion layer per
insertion stage (columns) and study row (rows). Each matrix is divided by its
sum, so a cell is the share of that stage's routing held by one (temporal,
spatial) pair; that puts stages of different widths on one colour scale.
What it gives up: the absolute size of the weights, which the shares hide.

:func:`scale_heatmaps` draws the action-scale probe: val top-1 per object size x
motion speed cell, a panel per block, a row of panels per regime, one colour scale.
"""
from __future__ import annotations

import io
import textwrap
from pathlib import Path
from types import ModuleType
from typing import Any, Sequence

import numpy as np
import pandas as pd

from harness.files import write_atomic
from harness.probe import SIZE_NAMES, SPEED_NAMES


def _pyplot() -> ModuleType:
    """matplotlib.pyplot on the Agg backend: files only, no display needed."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _save(fig: Any, path: str | Path) -> Path:
    plt = _pyplot()
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110)
    plt.close(fig)
    return write_atomic(buf.getvalue(), path)


def _views(v: Any) -> float:
    """'3x10' -> 30; a missing count (the paper's N/A) -> NaN."""
    try:
        return float(np.prod([int(x) for x in str(v).split("x")]))
    except ValueError:
        return float("nan")


def _costs(frame: pd.DataFrame) -> tuple[pd.Series, pd.Series, str]:
    """x for our panel and for the paper's, and the axis label."""
    if "gflops_view" in frame and frame["gflops_view"].notna().any():
        ours = pd.to_numeric(frame["gflops_view"], errors="coerce") * frame["views"].map(_views)
        paper = ours
        if "paper_gflops_view" in frame:
            paper = pd.to_numeric(frame["paper_gflops_view"], errors="coerce") * frame["paper_views"].map(_views)
        return ours, paper, "GFLOPs per video (per view x views), paper backbone"
    sizes = sorted(int(c[7:]) for c in frame.columns if c.startswith("gflops_") and c[7:].isdigit())
    if not sizes:
        x = pd.Series(range(len(frame)), dtype=float, index=frame.index)
        return x, x, "row"
    x = pd.to_numeric(frame[f"gflops_{sizes[0]}"], errors="coerce")
    return x, x, f"GFLOPs per clip at {sizes[0]}px, paper backbone"


def _points(ax: Any, x: pd.Series, y: pd.Series, names: pd.Series, **style: Any) -> None:
    ax.errorbar(x, y, **style)
    for xi, yi, name in zip(x, y, names):
        if pd.notna(xi) and pd.notna(yi):
            ax.annotate(name, (xi, yi), textcoords="offset points", xytext=(4, 4), fontsize=8)


def accuracy_vs_gflops(frame: pd.DataFrame, path: str | Path, *, title: str = "") -> Path:
    """Write the accuracy-vs-GFLOPs PNG for a table frame (see ``harness.tables.build``); atomic."""
    plt = _pyplot()
    x, paper_x, label = _costs(frame)
    per_video = label.startswith("GFLOPs per video")
    has_paper = "paper_top1" in frame and frame["paper_top1"].notna().any()
    fig, axes = plt.subplots(1, 2 if has_paper else 1, figsize=(12 if has_paper else 7, 5), squeeze=False)
    ax = axes[0][0]
    y = pd.to_numeric(frame["top1_mean"], errors="coerce")
    err = pd.to_numeric(frame["top1_std"], errors="coerce").fillna(0)
    _points(ax, x, y, frame["row"], yerr=err, fmt="o", capsize=3)
    ax.set_ylabel("top-1 (%), last epoch, mean ± std over seeds")
    ax.set_title("this run")
    panels = [ax]
    if has_paper:
        ax2 = axes[0][1]
        _points(ax2, paper_x, pd.to_numeric(frame["paper_top1"], errors="coerce"), frame["row"], fmt="s",
                color="tab:orange")
        ax2.set_ylabel("top-1 (%), paper")
        ax2.set_title("paper")
        panels.append(ax2)
    for a in panels:
        a.set_xlabel(label)
        a.grid(alpha=0.3)
        if per_video:
            a.set_xscale("log")
    if title:
        fig.suptitle(title, fontsize=9, wrap=True)  # the header line is longer than the figure is wide
    fig.tight_layout()
    return _save(fig, path)


def bag_labels(options: dict[str, Any]) -> tuple[list[str], list[str]]:
    """Fig. 5's axis names, domain-type-kernelsize: rows the temporal bag (T-C-3, T-M-3, I), columns the spatial.

    ``options``: the row's resolved ``vps`` options (``spatial_rf``, ``temporal_rf``, ``pool``).
    """
    from blocks.vps import rf_kernels

    pool = {"max": "M-3", "avg": "A-3"}.get(options.get("pool", "max"))

    def names(domain: str, rf: int) -> list[str]:
        return [("I" if k == 1 else f"{domain}-C-{k}") if k != "pool" else (f"{domain}-{pool}" if pool else "I")
                for k in rf_kernels(rf)]

    return names("T", options.get("temporal_rf", 5)), names("S", options.get("spatial_rf", 5))


def mean_matrices(runs: Sequence[Sequence[Sequence[Sequence[float]]]]) -> list[np.ndarray]:
    """Per stage, the mean over seeds of each seed's ||T_ij||_1 matrix (``fusion_matrices.json`` per run)."""
    stages = {len(r) for r in runs}
    if len(stages) != 1:
        raise ValueError(f"runs hold different numbers of insertion stages: {sorted(stages)}")
    return [np.mean([np.asarray(r[s], dtype=float) for r in runs], axis=0) for s in range(stages.pop())]


def fusion_heatmaps(matrices: dict[str, list[np.ndarray]], path: str | Path, *, title: str = "",
                    labels: dict[str, tuple[list[str], list[str]]] | None = None,
                    seeds: dict[str, int] | None = None) -> Path:
    """Write Fig. 5: a heatmap per row (of the study) x insertion stage, each matrix as shares of its sum.

    Args:
        matrices: row -> one (G_t x G_s) matrix of ||T_ij||_1 per insertion stage (after conv1..conv4).
        labels: row -> (temporal names, spatial names) for the axes; generic names when absent.
        seeds: row -> how many runs were averaged, for the panel titles.
    """
    if not matrices:
        raise ValueError("no fusion matrices to draw: no finished run of a block with a fusion layer")
    plt = _pyplot()
    shares = {row: [m / m.sum() if m.sum() > 0 else m for m in stages] for row, stages in matrices.items()}
    vmax = max(float(m.max()) for stages in shares.values() for m in stages)
    n_rows, n_cols = len(shares), max(len(s) for s in shares.values())
    fig, axes = plt.subplots(n_rows, n_cols, figsize=(3.0 * n_cols + 1.4, 3.0 * n_rows + 0.6), squeeze=False,
                             layout="constrained")
    image = None
    for i, (row, stages) in enumerate(shares.items()):
        for j in range(n_cols):
            ax = axes[i][j]
            if j >= len(stages):
                ax.axis("off")
                continue
            m = stages[j]
            image = ax.imshow(m, cmap="Blues", vmin=0.0, vmax=vmax)
            t_names, s_names = (labels or {}).get(row) or ([], [])
            if len(t_names) != m.shape[0] or len(s_names) != m.shape[1]:
                t_names = [f"Y{k + 1}" for k in range(m.shape[0])]
                s_names = [f"X{k + 1}" for k in range(m.shape[1])]
            ax.set_xticks(range(m.shape[1]), s_names, rotation=45, ha="right", fontsize=7)
            ax.set_yticks(range(m.shape[0]), t_names, fontsize=7)
            for (a, b), v in np.ndenumerate(m):
                ax.text(b, a, f"{v:.2f}", ha="center", va="center", fontsize=6,
                        color="white" if v > 0.6 * vmax else "black")
            n = (seeds or {}).get(row)
            ax.set_title(f"{row}, after conv{j + 1}" + (f" ({n} seed{'s' * (n > 1)})" if n else ""), fontsize=8)
    fig.colorbar(image, ax=axes.ravel().tolist(), shrink=0.8,
                 label="share of the stage's Σ||T_ij||_1 (rows: temporal Y_i, columns: spatial X_j)")
    if title:
        fig.suptitle(title, fontsize=9, wrap=True)  # the header line is longer than the figure is wide
    return _save(fig, path)


def scale_heatmap_figure(cells: pd.DataFrame, *, title: str = "") -> Any:
    """The probe's figure (see :func:`scale_heatmaps`), returned open so a caller can inspect its panels."""
    plt = _pyplot()
    if cells.empty:  # every trial failed: the tables are still written, with a figure that says so
        fig, ax = plt.subplots(figsize=(6, 2))
        ax.axis("off")
        ax.text(0.5, 0.5, "no finished trial logged val_top1/size_*/speed_*", ha="center", va="center")
        fig.suptitle(title, fontsize=8)
        return fig
    rows, regimes = list(pd.unique(cells["row"])), list(pd.unique(cells["regime"]))
    value = {(r.regime, r.row, r.size, r.speed): r.top1 for r in cells.itertuples()}
    lo, hi = float(cells["top1"].min()), float(cells["top1"].max())
    vmin, vmax = np.floor(lo / 10) * 10, max(np.ceil(hi / 10) * 10, np.floor(lo / 10) * 10 + 10)
    width = 1.9 * len(rows) + 1.6
    fig, axes = plt.subplots(len(regimes), len(rows), figsize=(width, 2.1 * len(regimes) + 1.0), squeeze=False,
                             sharex=True, sharey=True, layout="constrained")
    image = None
    for i, regime in enumerate(regimes):
        for j, row in enumerate(rows):
            ax = axes[i][j]
            m = np.array([[value.get((regime, row, size, speed), np.nan) for speed in SPEED_NAMES]
                          for size in SIZE_NAMES], dtype=float)  # a cell without val clips stays blank
            image = ax.imshow(m, cmap="viridis", vmin=vmin, vmax=vmax)
            for (a, b), v in np.ndenumerate(m):
                ax.text(b, a, "-" if np.isnan(v) else f"{v:.0f}", ha="center", va="center", fontsize=7,
                        color="black" if v > vmin + 0.6 * (vmax - vmin) else "white")
            ax.set_xticks(range(len(SPEED_NAMES)), SPEED_NAMES, fontsize=7)
            ax.set_yticks(range(len(SIZE_NAMES)), SIZE_NAMES, fontsize=7)
            ax.set_title(row, fontsize=8)
            if j == 0:
                ax.set_ylabel(f"{regime}\nobject size", fontsize=8)
            if i == len(regimes) - 1:
                ax.set_xlabel("motion speed", fontsize=8)
    fig.colorbar(image, ax=axes.ravel().tolist(), shrink=0.8, label="val top-1 (%), mean over seeds")
    if title:
        fig.suptitle(textwrap.fill(title, int(width * 16)), fontsize=8)  # the header line is long
    return fig


def scale_heatmaps(cells: pd.DataFrame, path: str | Path, *, title: str = "") -> Path:
    """Write the probe's PNG: a 3x3 heatmap (object size x motion speed) of val top-1 per block, one row of
    panels per regime, every panel on the same colour scale (shared by all blocks and regimes); atomic.

    Args:
        cells: one line per (row, regime, size, speed) with ``top1`` the mean over seeds
            (``harness.tables.cell_means``); panels follow the order of its lines.
    """
    return _save(scale_heatmap_figure(cells, title=title), path)
