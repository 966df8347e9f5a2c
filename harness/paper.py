"""The paper's own figures for a study: ``results/paper/<table>.csv``, read here and nowhere else.

Kept apart from what the harness measures: a study names its CSV (``paper:``),
the tables and ``harness profile`` print its columns beside ours, and
``harness run`` profiles every input side the CSV quotes GFLOPs at.
"""
from __future__ import annotations

from pathlib import Path

import pandas as pd

from harness.config import Study

GFLOPS_PREFIX = "paper_gflops_"


def figures(study: Study) -> pd.DataFrame:
    """The study's paper figures indexed by row name; an empty frame when the study names none."""
    if not study.paper or not Path(study.paper).exists():
        return pd.DataFrame(index=pd.Index([], name="row"))
    return pd.read_csv(study.paper, dtype={"row": str}).set_index("row")


def gflops_sizes(study: Study) -> set[int]:
    """Input sides the paper quotes GFLOPs at (``paper_gflops_112``, ``paper_gflops_224`` columns)."""
    return {int(c.removeprefix(GFLOPS_PREFIX)) for c in figures(study).columns
            if c.startswith(GFLOPS_PREFIX) and c.removeprefix(GFLOPS_PREFIX).isdigit()}
