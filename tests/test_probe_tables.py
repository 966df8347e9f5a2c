"""The probe's outputs from MLflow-shaped runs: the table's worst cell / spread / mean ± std, the heatmap PNG,
and the probe study's plan (no training: hand-made runs and per-clip predictions, as the store returns them)."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from conftest import study_runs_of, trial_run

from harness import plots
from harness.config import Study, load_study
from harness.predictions import Predictions
from harness.probe import SIZE_NAMES, SPEED_NAMES
from harness.tables import probe as tables

ROOT = Path(__file__).resolve().parents[1]
PNG = b"\x89PNG"


def probe_study(rows=("TSN", "Ours")) -> Study:
    blocks = {"TSN": {"block": "tsn"}, "Ours": {"block": "vps", "proportion": 0.25}}
    return Study.model_validate({
        "name": "probe_t", "kind": "probe",
        "profiles": {"laptop": {"backbone": {"arch": "tiny"}, "data": {
            "format": "synth", "root": "r", "buckets": {"size": [0.2, 0.25], "speed": [0.03, 0.045]}}}},
        "rows": {r: blocks[r] for r in rows},
        "regimes": {"in-distribution": {"description": "all scales"},
                    "scale-shift": {"train_size": [0.21, 0.24]}}})


CLIPS = 100  # val clips per cell: every whole percentage is a count of correct clips
# a size and a speed inside each bucket of probe_study()'s edges (size 0.2 / 0.25, speed 0.03 / 0.045)
SIZE_AT = {"small": 0.15, "medium": 0.22, "large": 0.3}
SPEED_AT = {"slow": 0.02, "medium": 0.04, "large": 0.05, "fast": 0.05}


def predictions(cells: dict, default: float) -> Predictions:
    """Per-clip predictions whose cells score ``cells`` (percent; ``None``: no val clip), else ``default``."""
    ids, labels, ranking, size, speed = [], [], [], [], []
    for s in SIZE_NAMES:
        for v in SPEED_NAMES:
            top1 = cells.get((s, v), default)
            if top1 is None:
                continue
            for i in range(CLIPS):
                ids.append(f"{s}-{v}-{i}")
                labels.append(0)
                ranking.append([0, 1] if i < round(top1) else [1, 0])
                size.append(SIZE_AT[s])
                speed.append(SPEED_AT[v])
    return Predictions(ids, np.array(labels), np.array(ranking), {"size": size, "speed": speed})


def trial(row, regime, seed, cells, *, last, status="FINISHED", default=50.0):
    """A child run and its predictions: every cell at ``default`` except those in ``cells`` (``None``: no clip)."""
    key = f"probe_t/laptop/{row}/{regime}/seed{seed}"
    run = trial_run(key, tags={"harness.row": row, "harness.seed": str(seed), "harness.regime": regime},
                    metrics={"last_top1": last, "val_top1": last, "epoch": 5.0}, status=status,
                    params={"data.frames": "4", "data.size": "28"}, history={5: last}, run_id=f"id-{key}")
    return run, predictions(cells, default)


class FakeTracker:
    """What the probe's report reads of a store: the runs, and each run's ``predictions.json``."""

    def __init__(self, runs, stored):
        self.runs, self.stored = runs, stored

    def read_study(self, study, profile, parent_id=None):
        return self.runs

    def read_json(self, run_id, artifact):
        assert artifact == "predictions.json"
        return self.stored[run_id].to_json()


@pytest.fixture
def store():
    # seed 0: worst 20 (small/slow), best 80, spread 60; seed 1: worst 30 (medium/medium), best 90, spread 60.
    # Worst and spread are per seed (25, 60); the worst and spread of the mean cells would be 30 and 45.
    made = [
        trial("Ours", "in-distribution", 0, {("small", "slow"): 20.0, ("large", "fast"): 80.0}, last=40.0),
        trial("Ours", "in-distribution", 1, {("small", "slow"): 40.0, ("medium", "medium"): 30.0,
                                             ("large", "slow"): 90.0}, last=44.0, default=60.0),
        trial("Ours", "in-distribution", 2, {("small", "slow"): 0.0}, last=0.0, status="FAILED"),  # not counted
        # one seed only, and a cell without val clips: worst over the eight cells present, no std
        trial("Ours", "scale-shift", 0, {("large", "fast"): None, ("medium", "fast"): 10.0}, last=35.0),
    ]
    tsn = [trial("TSN", regime, s, {("medium", "medium"): 30.0 + s}, last=25.0 + s)
           for regime in ("in-distribution", "scale-shift") for s in (0, 1)]
    made = tsn + made
    runs = study_runs_of(*(run for run, _ in made), end_time=60_000, tags={
        "harness.seeds": "2", "harness.git_commit": "abc123", "harness.wall_s": "612.4"})
    return FakeTracker(runs, {run.run_id: p for run, p in made})


@pytest.fixture
def runs(store):
    return store.runs


@pytest.fixture
def cells(store):
    return tables.cell_frame(probe_study(), "laptop", store, store.runs)


def test_probe_frame_worst_cell_spread_and_mean_std(runs, cells):
    frame = tables.probe_frame(probe_study(), runs, cells).set_index(["row", "regime"])
    assert list(frame.index) == [("TSN", "in-distribution"), ("TSN", "scale-shift"),
                                 ("Ours", "in-distribution"), ("Ours", "scale-shift")]
    ours = frame.loc[("Ours", "in-distribution")]
    assert (ours["seeds"], ours["trials"]) == (2, 3)
    assert ours["top1_mean"] == pytest.approx(42.0) and ours["top1_std"] == pytest.approx(2 ** 0.5 * 2)
    assert ours["worst_mean"] == pytest.approx(25.0) and ours["worst_std"] == pytest.approx(50 ** 0.5)
    assert ours["spread_mean"] == pytest.approx(60.0) and ours["spread_std"] == pytest.approx(0.0)
    assert ours["worst_cell"] == "small/slow" and ours["cells"] == 9 and ours["min_cell_clips"] == CLIPS
    shift = frame.loc[("Ours", "scale-shift")]
    assert shift["cells"] == 8 and shift["worst_mean"] == 10.0 and shift["spread_mean"] == 40.0
    assert shift["worst_std"] is None or pd.isna(shift["worst_std"])  # one seed: no std
    tsn = frame.loc[("TSN", "scale-shift")]
    assert tsn["worst_mean"] == pytest.approx(30.5) and tsn["spread_mean"] == pytest.approx(19.5)
    assert tsn["worst_cell"] == "medium/medium"


def test_cell_means_average_the_seeds_in_study_order(cells):
    means = tables.cell_means(probe_study(), cells)
    assert list(pd.unique(means["row"])) == ["TSN", "Ours"]
    cell = means[(means["row"] == "Ours") & (means["regime"] == "in-distribution")].set_index(["size", "speed"])
    assert cell.loc[("small", "slow"), "top1"] == pytest.approx(30.0)  # (20 + 40) / 2, the FAILED seed left out
    assert cell.loc[("large", "slow"), "top1"] == pytest.approx(70.0)
    assert len(means) == 4 * 9 - 1  # the cell without val clips is absent, not 0


def test_probe_tables_and_heatmap_are_written_from_the_runs(store, tmp_path):
    paths = tables.write(probe_study(), "laptop", store, out_dir=tmp_path).paths
    assert sorted(paths) == ["csv", "md", "png"]
    md = paths["md"].read_text(encoding="utf-8")
    lines = [[c.strip() for c in line.strip("|").split("|")] for line in md.splitlines() if line.startswith("| Ours")]
    row, regime, top1, worst, spread, cell, seeds = lines[0]
    assert (row, regime, cell, seeds) == ("Ours", "in-distribution", "small/slow", "2/3")
    # mean [95% interval]: 2 seeds borrow the variance pooled over the probe's rows (†)
    for text, mean in ((top1, "42.0"), (worst, "25.0"), (spread, "60.0")):
        assert text.startswith(f"{mean} [") and text.endswith("]†"), text
    assert lines[1][2].startswith("35.0 [")  # one seed: the pooled variance still gives an interval
    assert "cut at [0.2, 0.25]" in md and "Wall time of the probe" in md and "612 s" in md
    csv = pd.read_csv(paths["csv"])
    assert {"row", "regime", "top1_mean", "worst_mean", "worst_std", "spread_mean", "spread_std"} <= set(csv.columns)
    assert csv.loc[(csv["row"] == "Ours") & (csv["regime"] == "in-distribution"), "worst_mean"].item() == 25.0
    assert paths["png"].read_bytes()[:4] == PNG


def test_heatmap_has_a_panel_per_block_and_regime_on_one_colour_scale(cells):
    means = tables.cell_means(probe_study(), cells)
    fig = plots.scale_heatmap_figure(means)
    panels = [ax for ax in fig.axes if ax.images]
    assert len(panels) == 2 * 2  # 2 blocks x 2 regimes, one 3x3 image each
    assert {ax.images[0].get_array().shape for ax in panels} == {(3, 3)}
    assert len({ax.images[0].get_clim() for ax in panels}) == 1  # the same colour scale everywhere
    assert [ax.get_title() for ax in panels] == ["TSN", "Ours", "TSN", "Ours"]
    import matplotlib.pyplot as plt

    plt.close(fig)
    empty = plots.scale_heatmap_figure(means.iloc[:0])  # every trial failed: a figure that says so, no panel
    assert not any(ax.images for ax in empty.axes) and "no finished trial" in empty.axes[0].texts[0].get_text()
    plt.close(empty)


def test_scale_probe_study_dry_runs_rows_x_regimes_x_seeds(monkeypatch, capsys):
    from harness.cli import main
    from harness.study import grid

    monkeypatch.chdir(ROOT)
    monkeypatch.setattr(grid, "profile_rows", lambda study, sizes, *args, **kwargs: {  # fvcore on R50 is not the point here
        row: {"params": 1e6, "gflops": {str(s): 1.0 for s in sizes}} for row in study.rows})
    study = load_study("studies/scale_probe.yaml")
    assert main(["run", "studies/scale_probe.yaml", "--dry-run"]) == 0
    out = capsys.readouterr().out
    rows, regimes, seeds = len(study.rows), len(study.regimes), study.profiles["laptop"].seeds
    assert f"{rows} rows x {regimes} regimes x {seeds} seeds = {rows * regimes * seeds} trials" in out
    for row in study.rows:
        for regime in study.regimes:
            for seed in range(study.profiles["laptop"].seeds):
                assert f"scale_probe/laptop/{row}/{regime}/seed{seed}" in out
    assert "nothing written" in out


def test_versus_line_judges_ours_against_the_single_rf_rows_paired_by_seed():
    from scipy import stats as scipy_stats

    ours, rf_s, rf_l = [50.0, 52.0, 51.0, 53.0], [40.0, 41.0, 39.0, 42.0], [50.0, 49.0, 53.0, 50.0]
    worst = {"Ours@in-distribution": dict(enumerate(ours)), "RF-S@in-distribution": dict(enumerate(rf_s)),
             "RF-L@in-distribution": dict(enumerate(rf_l)),
             "Ours@scale-shift": {0: 20.0}, "RF-S@scale-shift": {0: 30.0}}
    ind, shift = tables.versus(worst, ["in-distribution", "scale-shift"])
    low, high = scipy_stats.ttest_rel(ours, rf_s).confidence_interval(0.95)  # 4 pairs: their own variance
    assert f"Ours minus: +11.0 [{low:+.1f}, {high:+.1f}] vs RF-S (higher)" in ind
    assert "vs RF-L (unresolved)" in ind  # +1.0 on noisy pairs
    assert "-10.0 vs RF-S (no variance to judge it: one seed)" in shift
    assert tables.versus({k: v for k, v in worst.items() if not k.startswith("Ours")}, ["in-distribution"]) == []
