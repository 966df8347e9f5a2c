"""Table 4's cost targets: GFLOPs per view of each study row at its own frames and side, against the paper.

fvcore, one multiply-add = one FLOP, ResNet-50 with a 174-class head, batch 1
(``harness.study.plan.profile_rows``, what ``harness run`` logs on every child run).
The paper's figures are read from results/paper/table4.csv; the tolerance is 3%.
"""
from __future__ import annotations

from pathlib import Path

import pandas as pd
import pytest

from harness.config import Row, load_study, row_data
from harness.profile import profile_row
from harness.study.plan import profile_rows

ROOT = Path(__file__).resolve().parents[1]
HOLDS = ["TSM 8x1x1", "TSM 16x1x1", "GST 8x1x1", "GST 16x1x1", "Ours 8x1x1", "Ours 16x1x1"]


@pytest.fixture(scope="module")
def table4():
    study = load_study(ROOT / "studies" / "table4.yaml")
    paper = pd.read_csv(ROOT / "results" / "paper" / "table4.csv").set_index("row")
    # [224]: what harness.study.plan.profile_sizes gives table4, so `harness run --dry-run` reuses these counts
    return study, profile_rows(study, [224]), paper


def per_view(table4, row: str) -> float:
    study, profiles, _ = table4
    return profiles[row]["gflops"][str(row_data(study, "paper", row).size)]


def test_the_rows_carry_the_papers_settings(table4):
    study = table4[0]
    settings = {row: (d.frames, d.size, d.test_crops, d.test_clips)
                for row in study.rows for d in [row_data(study, "paper", row)]}
    assert settings["TSM 16x1x1"] == (16, 224, 1, 1)
    assert settings["Ours 8x1x1 112"] == (8, 112, 1, 1)
    assert settings["Ours 16x3x10"] == (16, 224, 3, 10)


@pytest.mark.parametrize("row", HOLDS)
def test_gflops_per_view_within_3_percent_of_the_paper(table4, row):
    paper = float(table4[2].loc[row, "paper_gflops_view"])
    assert per_view(table4, row) == pytest.approx(paper, rel=0.03), f"{row}: paper {paper}"


@pytest.mark.xfail(strict=True, reason="paper 9.12 GFLOPs for Ours at 8 x 112; we count 9.45 (+3.6%): "
                   "blocks at conv1..conv4 add exactly 1/4 of their 224 FLOPs at 112 (docs/vps-layout.md)")
def test_ours_at_112_within_3_percent_of_the_paper(table4):
    assert per_view(table4, "Ours 8x1x1 112") == pytest.approx(9.12, rel=0.03)


def test_ours_at_112_is_the_backbone_plus_a_quarter_of_the_blocks_224_cost(table4):
    """What we measure instead of 9.12, and why: the blocks' cost scales with H x W, the backbone's too."""
    ours = table4[1]["Ours 8x1x1 112"]["gflops"]
    backbone = profile_row(Row(block="tsn"), num_classes=174, sizes=(112, 224))["gflops"]
    assert ours["112"] == pytest.approx(9.45, abs=0.005)
    assert ours["112"] - backbone["112"] == pytest.approx((ours["224"] - backbone["224"]) / 4, rel=1e-3)


def test_views_multiply_the_cost_not_the_cost_per_view(table4):
    """Table 4 prints 36.19 x 3 x 10 for Ours at 16 frames; one view of 16 frames costs what its 16x1x1 row does."""
    assert per_view(table4, "Ours 16x3x10") == per_view(table4, "Ours 16x1x1")
    assert per_view(table4, "Ours 16x1x1") == pytest.approx(2 * per_view(table4, "Ours 8x1x1"), rel=1e-3)
    assert table4[2].loc["Ours 16x3x10", "paper_gflops_view"] == 36.19  # transcribed as printed
