"""Figures of a study's table (matplotlib, Agg backend: no display needed).

    harness tables studies/table1.yaml      # also writes results/table1.png

:func:`accuracy_vs_gflops` draws top-1 (mean +- std over seeds) against the
row's GFLOPs on the paper backbone: this run on the left, the paper's figures
on the right, on the same GFLOPs axis. Two panels rather than one because the
laptop profile trains on synthetic data: its accuracies are not on the
paper's scale.
"""
from __future__ import annotations

import io
from pathlib import Path

import pandas as pd


def accuracy_vs_gflops(frame: pd.DataFrame, path: str | Path, *, title: str = "") -> Path:
    """Write the accuracy-vs-GFLOPs PNG for a table frame (see ``harness.tables.build``); atomic."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from harness.tables import write_atomic

    sizes = sorted(int(c.split("_")[1]) for c in frame.columns if c.startswith("gflops_"))
    size = sizes[0] if sizes else None
    x = frame[f"gflops_{size}"] if size else pd.Series(range(len(frame)), dtype=float)
    has_paper = "paper_top1" in frame and frame["paper_top1"].notna().any()
    fig, axes = plt.subplots(1, 2 if has_paper else 1, figsize=(12 if has_paper else 7, 5), squeeze=False,
                             sharex=True)
    ax = axes[0][0]
    y = pd.to_numeric(frame["top1_mean"], errors="coerce")
    err = pd.to_numeric(frame["top1_std"], errors="coerce").fillna(0)
    ax.errorbar(x, y, yerr=err, fmt="o", capsize=3)
    for xi, yi, name in zip(x, y, frame["row"]):
        if pd.notna(xi) and pd.notna(yi):
            ax.annotate(name, (xi, yi), textcoords="offset points", xytext=(4, 4), fontsize=8)
    ax.set_xlabel(f"GFLOPs per clip at {size}px, paper backbone" if size else "row")
    ax.set_ylabel("top-1 (%), last epoch, mean ± std over seeds")
    ax.set_title("this run")
    ax.grid(alpha=0.3)
    if has_paper:
        ax2 = axes[0][1]
        py = pd.to_numeric(frame["paper_top1"], errors="coerce")
        ax2.plot(x, py, "s", color="tab:orange")
        for xi, yi, name in zip(x, py, frame["row"]):
            if pd.notna(xi) and pd.notna(yi):
                ax2.annotate(name, (xi, yi), textcoords="offset points", xytext=(4, 4), fontsize=8)
        ax2.set_xlabel(ax.get_xlabel())
        ax2.set_ylabel("top-1 (%), paper")
        ax2.set_title("paper")
        ax2.grid(alpha=0.3)
    if title:
        fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110)
    plt.close(fig)
    return write_atomic(buf.getvalue(), path)
