"""Tracking and tables without Ray: keyed child runs are written once, and tables come from MLflow alone."""
from __future__ import annotations

import math
import textwrap

import pandas as pd
import pytest

from harness.config import load_study
from harness.tracking import NewChild, Tracker

STUDY = """
name: mini
paper: {paper}
num_classes: 10
profiles:
  laptop:
    backbone: {{arch: tiny, width: 4}}
    data: {{format: synth, root: {root}, frames: 4, size: 16}}
    recipe: {{epochs: 2, batch_size: 8}}
    seeds: 2
rows:
  TSN: {{block: tsn}}
  TSM: {{block: tsm}}
"""

PAPER = """row,paper_params_m,paper_gflops_224,paper_top1,paper_top5,source
TSN,23.87,,14.90,36.97,test
TSM,23.87,33,42.11,71.01,test
"""


@pytest.fixture
def study(tmp_path):
    (tmp_path / "paper.csv").write_text(PAPER)
    path = tmp_path / "mini.yaml"
    path.write_text(STUDY.format(paper=tmp_path / "paper.csv", root=tmp_path / "synth"))
    return load_study(path)


@pytest.fixture
def tracker(tmp_path):
    t = Tracker(f"sqlite:///{tmp_path / 'mlflow.db'}")
    t.prepare()
    return t


# (row, seed) -> per-epoch val_top1, val_top5
FAKE = {("TSN", 0): [(10.0, 50.0), (12.0, 55.0)], ("TSN", 1): [(14.0, 52.0), (11.0, 60.0)],
        ("TSM", 0): [(30.0, 70.0), (60.0, 90.0)], ("TSM", 1): [(40.0, 80.0), (50.0, 85.0)]}


def _trials(study):
    return [NewChild(f"mini/laptop/{row}/seed{seed}", f"{row} seed{seed}",
                     {"harness.row": row, "harness.seed": str(seed)},
                     {"row.block": study.rows[row].block, "recipe.lr": 0.01, "seed": seed},
                     {"profile_params": 23_864_558, "profile_gflops_224": 32.9})
            for (row, seed) in FAKE]


def _fill(tracker, study, parent):
    ids = tracker.ensure_children(parent, _trials(study))
    for (row, seed), epochs in FAKE.items():
        rid = ids[f"mini/laptop/{row}/seed{seed}"]
        for e, (top1, top5) in enumerate(epochs, 1):
            tracker.log_epoch(rid, {"epoch": e, "val_top1": top1, "val_top5": top5, "train_loss": 1.0 / e})
        tracker.finish_child(rid, "FINISHED", summary={"best_top1": max(t for t, _ in epochs),
                                                        "last_top1": epochs[-1][0], "best_epoch": 1})
    return ids


def test_child_runs_are_keyed_and_epochs_logged_once(tracker, study):
    parent = tracker.start_parent("mini", "laptop", params={"study": "mini"}, tags={"harness.seeds": "2"})
    ids = _fill(tracker, study, parent)
    # a second writer pass (a resumed or retried trial) must reuse the runs and add nothing
    again = Tracker(tracker.uri)
    assert again.ensure_children(parent, _trials(study)) == ids
    rid = ids["mini/laptop/TSM/seed0"]
    assert not again.log_epoch(rid, {"epoch": 2, "val_top1": 99.0})
    assert not again.finish_child(rid, "FINISHED", summary={"best_top1": 99.0})
    children = tracker.children(parent)
    assert sorted(children) == sorted(ids)
    history = tracker.client.get_metric_history(rid, "val_top1")
    assert sorted((m.step, m.value) for m in history) == [(1, 30.0), (2, 60.0)]
    run = tracker.run(rid)
    assert run.status == "FINISHED"
    assert run.tags["mlflow.parentRunId"] == parent
    assert run.params["row.block"] == "tsm"
    assert run.metrics["best_top1"] == 60.0


def test_resumed_trial_continues_its_own_run(tracker, study):
    parent = tracker.start_parent("mini", "laptop", params={}, tags={})
    ids = tracker.ensure_children(parent, _trials(study)[:1])
    rid = ids["mini/laptop/TSN/seed0"]
    tracker.log_epoch(rid, {"epoch": 1, "val_top1": 10.0})
    # the driver dies; a new driver sees epoch 1 in the store, skips a re-run epoch 1, logs epoch 2
    fresh = Tracker(tracker.uri)
    assert fresh.ensure_children(parent, _trials(study)[:1]) == ids
    assert not fresh.log_epoch(rid, {"epoch": 1, "val_top1": 11.0})
    assert fresh.log_epoch(rid, {"epoch": 2, "val_top1": 12.0})
    # the driver's Tune callback holds its own handle and never called ensure_children: same rule
    callback_side = Tracker(tracker.uri)
    assert not callback_side.log_epoch(rid, {"epoch": 2, "val_top1": 13.0})
    steps = [(m.step, m.value) for m in fresh.client.get_metric_history(rid, "val_top1")]
    assert sorted(steps) == [(1, 10.0), (2, 12.0)]


def test_table_from_mlflow_has_mean_interval_paper_and_delta(tracker, study, tmp_path):
    from harness.tables import grid as tables

    parent = tracker.start_parent("mini", "laptop", params={}, tags={"harness.seeds": "2",
                                                                     "harness.git_commit": "abc123"})
    _fill(tracker, study, parent)
    tracker.finish(parent, "FINISHED")
    paths = tables.write(study, "laptop", Tracker(tracker.uri), out_dir=tmp_path / "results").paths
    csv = pd.read_csv(paths["csv"]).set_index("row")
    assert {"row", "params", "top1_mean", "top1_std", "seeds", "paper_top1"} <= set(csv.reset_index().columns)
    assert list(csv.index) == ["TSN", "TSM"]  # the study's order
    assert csv.loc["TSM", "top1_mean"] == pytest.approx(55.0)  # last epochs 60, 50
    assert csv.loc["TSM", "top1_std"] == pytest.approx(math.sqrt(50.0), abs=1e-3)
    assert csv.loc["TSM", "best_top1_mean"] == pytest.approx(55.0)
    assert csv.loc["TSN", "best_top1_mean"] == pytest.approx(13.0)  # best epochs 12, 14
    assert csv.loc["TSN", "top5_mean"] == pytest.approx(57.5)
    assert csv.loc["TSM", "paper_top1"] == pytest.approx(42.11)
    assert csv.loc["TSM", "delta_top1"] == pytest.approx(55.0 - 42.11, abs=1e-3)
    assert csv.loc["TSM", "params"] == 23_864_558 and csv.loc["TSM", "seeds"] == 2
    assert csv.loc["TSM", "gflops_224"] == pytest.approx(32.9)
    md = paths["md"].read_text()
    assert "profile laptop" in md and "2 seed(s)" in md and "commit abc123" in md
    # the cell is the mean with its 95% interval (2 seeds: the variance pooled over both rows, marked †)
    low, high = csv.loc["TSM", "top1_low"], csv.loc["TSM", "top1_high"]
    assert low < 55.0 < high and csv.loc["TSM", "top1_pooled"]
    assert f"55.0 [{low:.1f}, {high:.1f}]†" in md
    # an accuracy's printed interval stops at 100 (TSM's top-5: 90 and 85); the CSV keeps the t interval's end
    assert csv.loc["TSM", "top5_high"] > 100 and f"87.5 [{csv.loc['TSM', 'top5_low']:.1f}, 100.0]†" in md
    assert "| TSM vs TSN | +43.5 [" in md and "0 of 1 orderings resolved at 2 seeds" in md
    assert paths["tex"].read_text().lstrip().startswith("% mini: profile laptop")
    assert paths["png"].read_bytes()[:4] == b"\x89PNG"
    assert not list((tmp_path / "results").glob(".*.tmp"))  # atomic writes leave no temp files


def test_tables_cli_fails_cleanly_without_a_store(tmp_path, monkeypatch, study, capsys):
    from harness.cli import main

    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    (tmp_path / "s.yaml").write_text(textwrap.dedent(STUDY.format(paper=tmp_path / "paper.csv",
                                                                  root=tmp_path / "synth")))
    assert main(["tables", "s.yaml"]) == 1
    assert not (tmp_path / "work").exists()
