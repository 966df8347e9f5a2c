"""The paper's tables and Figure 5 as studies: every study file validates and dry-runs, rows carry their own
data settings, and the tables and the figure are built from MLflow alone (hand-made runs, no training)."""
from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

import blocks
from harness.config import Study, load_study, row_data, trial_config
from harness.tracking import NewChild, Tracker

ROOT = Path(__file__).resolve().parents[1]
STUDIES = ["table1", "table2", "table3", "table4", "table5", "table6", "fig5"]
PNG = b"\x89PNG"


def fake_profile(block, options, backbone, num_classes, frames, sizes):
    """harness.profile._profile without fvcore: the model is built (its options at its frames), nothing counted."""
    model = blocks.create(block, backbone=backbone, num_classes=num_classes, num_frames=frames, **dict(options))
    params = sum(p.numel() for p in model.parameters())
    return {"params": params, "params_backbone": params, "params_blocks": 0, "params_head": 0,
            "gflops": {str(s): 0.0 for s in sizes}, "gflops_per_frame": {str(s): 0.0 for s in sizes},
            "fusion_params": None, "ir_interactions": None, "ir_interactions_all": None, "skipped_ops": []}


# ----------------------------------------------------------------------------- study files


@pytest.mark.parametrize("name", STUDIES)
def test_study_dry_runs_and_prints_every_trial(name, monkeypatch, capsys):
    """``harness run studies/<name>.yaml --dry-run`` exits 0 and plans rows x seeds; table4 counts FLOPs for real
    (test_tables_costs shares those counts), the others build each row's model without counting."""
    from harness import profile
    from harness.cli import main

    monkeypatch.chdir(ROOT)
    if name != "table4":
        monkeypatch.setattr(profile, "_profile", fake_profile)
    study = load_study(f"studies/{name}.yaml")
    assert main(["run", f"studies/{name}.yaml", "--dry-run"]) == 0
    out = capsys.readouterr().out
    seeds = study.profiles["laptop"].seeds
    assert f"{len(study.rows)} rows x {seeds} seeds = {len(study.rows) * seeds} trials, profile laptop" in out
    for row in study.rows:
        for seed in range(seeds):
            assert f"{name}/laptop/{row}/seed{seed}" in out
    assert "nothing written" in out


@pytest.mark.parametrize("name", STUDIES)
def test_study_has_both_profiles_and_a_traceable_paper_recipe(name):
    study = load_study(ROOT / "studies" / f"{name}.yaml")
    assert {"laptop", "paper"} <= set(study.profiles)  # the shipped two; table1 adds ssv2 (extends paper)
    laptop, paper = study.profiles["laptop"], study.profiles["paper"]
    assert laptop.data.format == "synth" and laptop.data.root == "work/data/synth-laptop"
    assert laptop.data.synth == load_study(ROOT / "studies" / "table2.yaml").profiles["laptop"].data.synth
    assert re.fullmatch(r"\$\{[A-Z0-9_]+\}", paper.data.root), "paper data come from an environment variable"
    if study.paper:
        paper_rows = pd.read_csv(ROOT / study.paper)["row"].tolist()
        assert set(study.rows) <= set(paper_rows), "every row we run has the paper's figures beside it"


def test_dataset_tables_name_their_classes_and_frames():
    t5, t6 = (load_study(ROOT / "studies" / f"{n}.yaml") for n in ("table5", "table6"))
    assert (t5.num_classes, t5.profiles["paper"].data.format) == (400, "k400")
    assert (t6.num_classes, t6.profiles["paper"].data.format) == (48, "diving48")
    assert {row_data(t6, "paper", r).frames for r in t6.rows} == {16}
    assert [row_data(t6, "paper", r).test_clips for r in t6.rows] == [1, 1, 2]


def test_makefile_tables_target_runs_every_study():
    make = (ROOT / "Makefile").read_text()
    listed = re.search(r"^TABLES\s*:=\s*(.+)$", make, re.M).group(1).split()
    assert listed == STUDIES
    assert re.search(r"^tables:", make, re.M)


# ----------------------------------------------------------------------------- per-row data


STUDY = """
name: mini
num_classes: 10
profiles:
  laptop:
    backbone: {{arch: tiny, width: 4}}
    data: {{format: synth, root: /tmp/none, frames: 4, size: 28, scale_size: 32}}
rows:
  A: {{block: tsn}}
  B: {{block: tsn, data: {data}}}
"""


def mini(tmp_path, data: str) -> Study:
    path = tmp_path / "mini.yaml"
    path.write_text(STUDY.format(data=data))
    return load_study(path)


def test_row_data_applies_to_its_profile_only(tmp_path):
    study = mini(tmp_path, "{laptop: {frames: 8, test_clips: 2, test_crops: 3}}")
    a, b = (trial_config(study, "laptop", row, 0).data for row in "AB")
    assert (a.frames, a.test_clips, a.test_crops) == (4, 1, 1)
    assert (b.frames, b.test_clips, b.test_crops, b.size) == (8, 2, 3, 28)


def test_row_size_brings_its_own_resize(tmp_path):
    b = trial_config(mini(tmp_path, "{laptop: {size: 14}}"), "laptop", "B", 0).data
    assert (b.size, b.resize) == (14, 16)  # not the profile's 32, which is the resize of 28


@pytest.mark.parametrize("data, message", [
    ("{paper: {frames: 16}}", "names profile 'paper'"),
    ("{laptop: {size: 64, scale_size: 32}}", "scale_size 32 is below size 64"),
    ("{laptop: {test_crops: 4}}", "test_crops"),
    ("{laptop: {fps: 4}}", "fps"),
])
def test_bad_row_data_is_an_error_naming_it(tmp_path, data, message):
    with pytest.raises(ValueError, match=re.escape(message)):
        mini(tmp_path, data)


# ----------------------------------------------------------------------------- tables from MLflow


@pytest.fixture
def tracker(tmp_path):
    t = Tracker(f"sqlite:///{tmp_path / 'mlflow.db'}")
    t.prepare()
    return t


def fill(tracker: Tracker, study: Study, metrics: dict[str, dict], top1: dict[str, float],
         artifacts: dict[str, list] | None = None, seeds: int = 1, summary: dict[str, dict] | None = None,
         protocols: dict[str, str] | None = None) -> str:
    """A finished parent with one finished child per row x seed: profile metrics, two epochs, a summary
    (what the Tune callback logs at the end of a trial) and artifacts."""
    parent = tracker.start_parent(study.name, "laptop", params={}, tags={"harness.seeds": str(seeds),
                                                                         "harness.git_commit": "abc"})
    trials = [NewChild(f"{study.name}/laptop/{row}/seed{s}", f"{row} seed{s}",
                       {"harness.row": row, "harness.seed": str(s),
                        **({"harness.protocol": protocols[row]} if row in (protocols or {}) else {})},
                       metrics=metrics.get(row, {}))
              for row in top1 for s in range(seeds)]
    ids = tracker.ensure_children(parent, trials)
    for t in trials:
        row, seed = t.tags["harness.row"], int(t.tags["harness.seed"])
        for epoch in (1, 2):
            tracker.log_epoch(ids[t.key], {"epoch": epoch, "val_top1": top1[row] + seed, "val_top5": 90.0})
        found = (artifacts or {}).get(row)
        tracker.finish_child(ids[t.key], "FINISHED",
                             summary={"last_top1": top1[row] + seed, **(summary or {}).get(row, {})},
                             artifacts={"fusion_matrices.json": found[seed]} if found else {})
    tracker.finish(parent, "FINISHED")
    return parent


def test_table2_shows_fusion_columns_beside_the_papers(tracker, tmp_path, monkeypatch):
    from harness.tables import grid as tables

    monkeypatch.chdir(ROOT)
    study = load_study("studies/table2.yaml")
    fusion = {"Channel grouping": (0, 0), "Channel dropout": (1392, 0), "Channel shuffling": (1392, 0)}
    metrics = {row: {"profile_params": 24_684_606, "profile_gflops_112": 9.3,
                     "profile_ir_interactions": fusion.get(row, (0, 86_272))[0],
                     "profile_fusion_params": fusion.get(row, (0, 86_272))[1]} for row in study.rows}
    trained = {row: {"ir_interactions": 400} for row in study.rows if row.startswith("Ours")}
    fill(tracker, study, metrics, {row: 40.0 + i for i, row in enumerate(study.rows)}, summary=trained)
    paths = tables.write(study, "laptop", tracker, out_dir=tmp_path).paths
    md = paths["md"].read_text()
    shown = tables.display(tables.build(study, tracker.read_study("table2", "laptop"))).set_index("row")
    for col in ("ir-interactions (R50 init)", "paper ir-interactions", "dropout rate", "paper dropout rate",
                "fusion params (M)", "paper fusion params (M)", "top-1 last", "top-5 last", "paper top-1",
                "paper top-5"):
        assert col in shown.columns, col
        assert col in md
    assert shown.loc["Channel dropout", ["dropout rate", "paper dropout rate"]].tolist() == ["0.75", "0.75"]
    assert shown.loc["Channel shuffling", ["dropout rate", "ir-interactions (R50 init)"]].tolist() == ["0", "1392"]
    assert shown.loc["Ours", ["fusion params (M)", "paper fusion params (M)"]].tolist() == ["0.086", "0.086"]
    assert shown.loc["Ours+Li", "paper ir-interactions"] == "~1856"
    assert shown.loc["Ours+Li", "ir-interactions (trained)"] == "400"  # after training, profile's backbone
    assert shown.loc["Channel shuffling", "ir-interactions (trained)"] == "-"
    assert shown.loc["Ours+Li", "top-1 last"] == "44.0" and shown.loc["Ours+Li", "paper top-5"] == "74.92"


def test_table4_shows_gflops_per_view_times_views_and_the_papers_other_rows(tracker, tmp_path, monkeypatch):
    from harness.tables import grid as tables

    monkeypatch.chdir(ROOT)
    study = load_study("studies/table4.yaml")
    metrics = {"Ours 8x1x1 112": {"profile_gflops_112": 9.45, "profile_gflops_224": 36.06},
               "Ours 16x3x10": {"profile_gflops_224": 72.12}}
    top1 = {"Ours 8x1x1 112": 50.0, "Ours 16x3x10": 60.0}  # two rows run, the others not
    fill(tracker, study, metrics, top1, summary={"Ours 16x3x10": {"ir_interactions": 400}})
    frame = tables.build(study, tracker.read_study("table4", "laptop"))
    shown = tables.display(frame).set_index("row")
    cost, paper_cost = "GFLOPs/view × views", "paper GFLOPs/view × views"
    assert shown.loc["Ours 8x1x1 112", [cost, paper_cost]].tolist() == ["9.45×1×1", "9.12×1×1"]
    assert shown.loc["Ours 16x3x10", [cost, paper_cost]].tolist() == ["72.12×3×10", "36.19×3×10"]
    assert "GFLOPs@224" not in shown.columns  # per-side columns give way to the per-view one
    assert "ir-interactions (trained)" not in shown.columns  # a Table 2 column only
    assert shown.loc["TSM 8x1x1", "top-1 last"] == "not run"  # a study row without a trial
    assert shown.loc["TEA 16x3x10", "top-1 last"] == "not run"  # a paper row we have no block for
    assert shown.loc["TEA 16x3x10", ["paper GFLOPs/view × views", "paper top-1"]].tolist() == ["70×3×10", "52.30"]
    assert shown.loc["ECO(En)", "paper top-5"] == "-"  # the paper gives none
    assert shown.loc["Ours 16x3x10", "top-1 last"] == "60.0"
    assert list(shown.index[:len(study.rows)]) == list(study.rows)  # our rows first, in the study's order
    assert len(shown) == len(pd.read_csv(study.paper))
    assert not frame.loc[frame["row"].isin(study.rows), "protocol_differs"].any()  # by design, not flagged
    assert tables.write(study, "laptop", tracker, out_dir=tmp_path).paths['png'].read_bytes()[:4] == PNG


def test_table5_row_on_the_profiles_protocol_is_not_flagged_beside_rows_with_their_own(tracker, monkeypatch):
    from harness.tables import grid as tables

    monkeypatch.chdir(ROOT)
    study = load_study("studies/table5.yaml")
    # "Ours 8x1x1" keeps the profile's single view; the two other rows set 2 clips x 3 crops (the mode)
    protocols = {"TSM 8x3x10": "4f-28-2x3", "Ours 8x1x1": "4f-28-1x1", "Ours 8x3x10": "4f-28-2x3"}
    fill(tracker, study, {}, {row: 60.0 for row in protocols}, protocols=protocols)
    runs = tracker.read_study("table5", "laptop")
    frame = tables.build(study, runs)
    assert not frame["protocol_differs"].fillna(False).astype(bool).any()
    shown = tables.display(frame).set_index("row")
    assert shown.loc["Ours 8x1x1", "protocol (run)"] == "4f-28-1x1"  # no ⚠: its protocol by design
    assert shown.loc["Ours 8x3x10", "protocol (run)"] == "4f-28-2x3"
    assert shown.loc["TEA 8x3x10", "protocol (run)"] == "-"  # a paper row: never run
    assert "protocol" not in shown.columns
    assert tables.header(study, "laptop", runs, frame)["protocol"] == "per row (see the protocol column)"
    assert not any(line.startswith("⚠") for line in tables.notes(study, frame, tables.header(study, "laptop", runs, frame)))


def test_runs_of_one_row_under_two_protocols_are_flagged_even_in_a_per_row_table(tracker, monkeypatch):
    from harness.tables import grid as tables

    monkeypatch.chdir(ROOT)
    study = load_study("studies/table5.yaml")
    fill(tracker, study, {}, {"Ours 8x1x1": 60.0, "Ours 8x3x10": 61.0}, seeds=1,
         protocols={"Ours 8x1x1": "4f-28-1x1", "Ours 8x3x10": "4f-28-2x3"})
    # a second seed of Ours 8x1x1 tested another way (say, --set data.test_clips=2 on a rerun)
    parent = tracker.read_study("table5", "laptop").parent.run_id
    key = "table5/laptop/Ours 8x1x1/seed9"
    ids = tracker.ensure_children(parent, [NewChild(key, "Ours 8x1x1 seed9", {
        "harness.row": "Ours 8x1x1", "harness.seed": "9", "harness.protocol": "4f-28-2x1"})])
    tracker.log_epoch(ids[key], {"epoch": 1, "val_top1": 59.0, "val_top5": 90.0})
    tracker.finish_child(ids[key], "FINISHED", summary={"last_top1": 59.0})
    frame = tables.build(study, tracker.read_study("table5", "laptop")).set_index("row")
    assert frame.loc["Ours 8x1x1", "protocol_differs"]
    assert frame.loc["Ours 8x1x1", "protocol"] == "4f-28-1x1 + 4f-28-2x1"
    assert not frame.loc["Ours 8x3x10", "protocol_differs"]


# ----------------------------------------------------------------------------- Figure 5


def test_fusion_heatmaps_draw_a_png_from_hand_made_matrices(tmp_path):
    from harness.plots import bag_labels, fusion_heatmaps

    rng = np.random.default_rng(0)
    matrices = {row: [np.abs(rng.normal(size=(4, 4))) * (i + 1) for i in range(4)] for row in ("Ours", "Ours+Li")}
    path = fusion_heatmaps(matrices, tmp_path / "fig5.png", title="test",
                           labels={"Ours": bag_labels(blocks.options("vps"))})
    assert path.read_bytes()[:4] == PNG and path.stat().st_size > 10_000
    assert bag_labels(blocks.options("vps")) == (["I", "T-C-3", "T-C-5", "T-M-3"], ["I", "S-C-3", "S-C-5", "S-M-3"])
    with pytest.raises(ValueError, match="no fusion matrices"):
        fusion_heatmaps({}, tmp_path / "none.png")


def test_fig5_is_drawn_from_the_runs_fusion_matrices_artifacts(tracker, tmp_path, monkeypatch):
    from harness.tables import grid as tables

    monkeypatch.chdir(ROOT)
    study = load_study("studies/fig5.yaml")
    eye, ones = np.eye(4).tolist(), np.ones((4, 4)).tolist()
    artifacts = {"Ours": [[eye] * 4, [ones] * 4], "Ours+Li and Lc": [[ones] * 4, [ones] * 4]}
    fill(tracker, study, {}, {"Ours": 40.0, "Ours+Li and Lc": 45.0}, artifacts, seeds=2)
    runs = tracker.read_study("fig5", "laptop")
    matrices, seeds = tables.fusion_matrices(study, tracker, runs)
    assert seeds == {"Ours": 2, "Ours+Li and Lc": 2}
    np.testing.assert_allclose(matrices["Ours"][3], (np.eye(4) + 1) / 2)  # the mean over seeds, per stage
    paths = tables.write(study, "laptop", tracker, out_dir=tmp_path).paths
    assert paths["png"] == tmp_path / "fig5.png" and paths["png"].read_bytes()[:4] == PNG
    assert "Ours+Li and Lc" in paths["md"].read_text()


def test_table1_says_gst_r101_trains_the_tiny_backbone_on_the_laptop_and_resnet101_on_the_paper(monkeypatch):
    from harness.config import trained_backbone
    from harness.tables.grid import backbone_notes

    monkeypatch.chdir(ROOT)
    study = load_study("studies/table1.yaml")
    [note] = backbone_notes(study, "laptop")
    assert note.startswith("Backbones: GST-R101 trains tiny under the laptop profile") and "resnet101's" in note
    assert backbone_notes(study, "paper") == []  # it trains its own ResNet-101 there: nothing to say
    assert trained_backbone(study, "paper", "GST-R101") == "resnet101"
    assert trained_backbone(study, "paper", "GST") == "resnet50"
