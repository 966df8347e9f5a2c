"""Tables say which of their orderings hold: intervals in every accuracy cell, verdicts with Holm, the seeds a
close pair would need, and where each row's spread comes from, read from a real MLflow store (hand-made runs
with per-clip predictions; no training)."""
from __future__ import annotations

import numpy as np
import pytest
from scipy import stats as scipy_stats

from harness import stats
from harness.config import Study
from harness.predictions import Predictions
from harness.tables import grid as tables
from harness.tables.statistics import predictions as stored_predictions
from harness.tracking import NewChild, Tracker

CLIPS = 200
# row -> per-seed top-1 (a multiple of 100 / CLIPS): TSM far above TSN, GST a hair above TSM
TOP1 = {"TSN": [30.0, 31.5, 29.0], "TSM": [60.0, 63.5, 61.0], "GST": [61.0, 63.0, 62.5]}


def study() -> Study:
    return Study.model_validate({
        "name": "mini", "num_classes": 4,
        "profiles": {"laptop": {"backbone": {"arch": "tiny", "width": 4},
                                "data": {"format": "sthv2", "root": "x", "frames": 4, "size": 16}}},
        "rows": {row: {"block": row.lower()} for row in TOP1}})


def clips_for(top1: float, seed: int) -> Predictions:
    """Per-clip predictions scoring ``top1``: which clips are right varies with the seed."""
    right = np.zeros(CLIPS, dtype=bool)
    right[np.random.default_rng(seed).permutation(CLIPS)[: round(top1 * CLIPS / 100)]] = True
    ranking = np.where(right[:, None], [[0, 1]], [[1, 0]])
    return Predictions([f"clip{i}" for i in range(CLIPS)], np.zeros(CLIPS, dtype=np.int64), ranking)


@pytest.fixture
def store(tmp_path):
    t = Tracker(f"sqlite:///{tmp_path / 'mlflow.db'}")
    t.prepare()
    parent = t.start_parent("mini", "laptop", params={"trials": 9},
                            tags={"harness.seeds": "3", "harness.profile": "laptop"})
    for row, values in TOP1.items():
        for seed, top1 in enumerate(values):
            key = f"mini/laptop/{row}/seed{seed}"
            [rid] = t.ensure_children(parent, [NewChild(key, f"{row} seed{seed}", {
                "harness.row": row, "harness.seed": str(seed), "harness.protocol": "4f-16-1x1"})]).values()
            t.log_text(rid, clips_for(top1, 100 * seed + len(row)).dumps(), "predictions.json")
            t.log_epoch(rid, {"epoch": 1, "val_top1": top1, "val_top5": 90.0})
            t.finish_child(rid, "FINISHED", summary={"last_top1": top1, "best_top1": top1})
    t.finish(parent, "FINISHED")
    return t


def test_table_cells_carry_the_pooled_interval_and_the_header_counts_resolved_orderings(store):
    runs = store.read_study("mini", "laptop")
    frame, h, texts = tables.render(study(), "laptop", runs, stored_predictions(store, runs))
    expect = stats.row_intervals({row: dict(enumerate(v)) for row, v in TOP1.items()})
    got = frame.set_index("row")
    for row, ri in expect.items():
        assert got.loc[row, "top1_low"] == pytest.approx(ri.low) and got.loc[row, "top1_high"] == pytest.approx(ri.high)
        assert bool(got.loc[row, "top1_pooled"]) and ri.pooled  # 3 seeds: the study's pooled variance
    # an independent check of the pooled interval: residuals of every row around its mean, df = 3 rows x (3 - 1)
    values = np.array(list(TOP1.values()))
    sd = np.sqrt(((values - values.mean(1, keepdims=True)) ** 2).sum() / 6)
    half = scipy_stats.t.ppf(0.975, 6) * sd / np.sqrt(3)
    tsm = expect["TSM"]
    assert tsm.high - tsm.mean == pytest.approx(half, rel=0.35)  # shared seeds lower the df (docs/statistics.md)
    md = texts["md"]
    line = next(l for l in md.splitlines() if l.startswith("| TSM"))
    assert f"{tsm.mean:.1f} [{tsm.low:.1f}, {tsm.high:.1f}]†" in line
    assert md.splitlines()[4].startswith("**") and "orderings resolved at 3 seeds" in md.splitlines()[4]


def test_verdicts_resolve_the_wide_gap_and_leave_the_hair_unresolved_with_the_seeds_it_would_need(store):
    from harness.tables import statistics

    runs = store.read_study("mini", "laptop")
    _, _, texts = tables.render(study(), "laptop", runs, stored_predictions(store, runs))
    judged = statistics.orderings(study(), {row: dict(enumerate(v)) for row, v in TOP1.items()})
    table = statistics.ordering_table(judged).set_index("ordering")
    assert table.loc["TSM vs TSN", "verdict"] == "resolved"
    close = next(o for o in table.index if set(o.split(" vs ")) == {"GST", "TSM"})
    assert table.loc[close, "verdict"] == "unresolved"
    assert int(table.loc[close, "seeds per row for 80% power"]) > 3  # more than it has
    # the same lines are in the markdown, under the table
    assert "## Which orderings hold" in texts["md"]
    assert f"| {close} " in texts["md"] and "| TSM vs TSN " in texts["md"]
    resolved = sum(table["verdict"] == "resolved")
    assert f"{resolved} of {len(table)} orderings resolved at 3 seeds" in texts["md"]


def test_each_rows_spread_is_split_into_seed_and_clip_parts_from_the_predictions(store):
    runs = store.read_study("mini", "laptop")
    frame, _, texts = tables.render(study(), "laptop", runs, stored_predictions(store, runs))
    tsn = frame.set_index("row").loc["TSN"]
    split = stats.split_noise({s: clips_for(v, 100 * s + 3).correct(1) for s, v in enumerate(TOP1["TSN"])})
    assert tsn["seed_sd"] == pytest.approx(split.seed_sd) and tsn["clip_sd"] == pytest.approx(split.clip_sd)
    assert "## Where the spread comes from" in texts["md"]


# ----------------------------------------------------------------------------- --until-resolved


def test_waves_add_seeds_only_to_rows_of_unresolved_orderings_until_they_resolve(tmp_path, monkeypatch):
    """The engine's --until-resolved loop on a real MLflow store; Ray is replaced by a launcher that 'trains'
    each new trial by logging a planted top-1: each row's true mean plus a fixed, row-specific wobble by seed."""
    import json

    from harness.study import engine, grid
    from harness.study.plan import RunOptions

    truth = {"TSN": 30.0, "TSM": 60.0, "GST": 61.0}
    wobble = {"TSN": [0.5, -0.5, 0.3, -0.3], "TSM": [0.0, 2.0, -1.0, 0.5], "GST": [1.0, 0.0, 0.5, -1.0]}
    s = Study.model_validate({
        "name": "mini", "num_classes": 4,
        "profiles": {"laptop": {"backbone": {"arch": "tiny", "width": 4}, "seeds": 2,
                                "data": {"format": "sthv2", "root": "x", "frames": 4, "size": 16}}},
        "rows": {row: {"block": "tsn" if row == "TSN" else row.lower()} for row in truth}})
    monkeypatch.setattr(grid, "profile_rows", lambda study, sizes, name: {
        row: {"params": 1, "gflops": {str(x): 1.0 for x in sizes}} for row in study.rows})
    plan = grid.plan(s, "laptop", s.profiles["laptop"])
    t = Tracker(f"sqlite:///{tmp_path / 'mlflow.db'}")
    t.prepare()
    parent = t.start_parent("mini", "laptop", params={}, tags={})

    def train(todo):
        for spec in (x for x in plan.trials if x.key in todo):
            [rid] = t.ensure_children(parent, [NewChild.of(spec)]).values()
            top1 = truth[spec.row] + wobble[spec.row][spec.seed % 4]
            t.log_epoch(rid, {"epoch": 1, "val_top1": top1})
            t.finish_child(rid, "FINISHED", summary={"last_top1": top1})

    train({x.key for x in plan.trials})
    from harness.tables.statistics import orderings

    at_two = orderings(s, {row: {i: truth[row] + wobble[row][i] for i in (0, 1)} for row in truth})
    assert [f"{c.a} vs {c.b}" for c in at_two.comparisons if not c.resolved] == ["GST vs TSM"]  # the close pair
    monkeypatch.setattr(engine, "run_on_ray", lambda plan, opts, how: train(how.todo))
    opts = RunOptions("mini.yaml", until_resolved=True)
    assert engine.waves(plan, t, parent, opts, lambda data: {}, budget=30)

    history = json.loads(t.run(parent).tags["harness.waves"])
    *added, stop = history
    assert added and stop["stop"] in ("every ordering resolved", "the budget of 30 trials is spent")
    for wave in added:  # seeds go only to the rows of orderings that were unresolved then
        rows_open = {row for pair in wave["unresolved"] for row in pair.split(" vs ")}
        assert set(wave["added"]) <= rows_open
    seeds = {row: sorted(x.seed for x in plan.trials if x.row == row) for row in truth}
    assert all(v == list(range(len(v))) for v in seeds.values())  # numbered on: rows keep sharing seeds
    assert len(plan.trials) <= 30 and len(t.children(parent)) == len(plan.trials)
    assert len(seeds["GST"]) > 2 and len(seeds["TSN"]) < len(seeds["GST"])  # the close pair got the seeds
    runs = t.read_study("mini", "laptop")
    md = tables.render(s, "laptop", runs)[2]["md"]
    assert "Seeds added by `--until-resolved`: wave 1:" in md and f"stopped: {stop['stop']}" in md
