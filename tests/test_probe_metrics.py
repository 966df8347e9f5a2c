"""Stratified top-1 (harness.probe): bucket edges, hand-made predictions, the bucket CSV, and per-clip predictions
from fit that the probe's report stratifies (the trainer itself knows no bucket)."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from harness import probe, train
from harness.predictions import Predictions
from harness.config import Backbone, Buckets, Data, Recipe, Row, Synth, TrainConfig
from harness.data import build_loader
from harness.data.formats import DataError, clip_id

PROBE_SET = {"videos": 40, "frames": 8, "size": 32, "seed": 5, "val-fraction": 0.5,
             "train-size": (0.19, 0.25), "train-speed": (0.031, 0.044)}  # train medium only, val full ranges


@pytest.fixture(scope="session")
def data_probe_dir(tmp_path_factory) -> Path:
    """A 40-clip synth set from ``harness data synth`` with medium-only train ranges and full val ranges."""
    from harness.cli import main

    out = tmp_path_factory.mktemp("probe") / "set"
    argv = ["data", "synth", str(out)]
    for k, v in PROBE_SET.items():
        argv += [f"--{k}", *map(str, v if isinstance(v, tuple) else (v,))]
    assert main(argv) == 0
    return out


def _data(root: Path, **kw) -> Data:
    synth = Synth(videos=40, frames=8, size=32, seed=5, val_fraction=0.5, train_size=(0.19, 0.25),
                  train_speed=(0.031, 0.044))
    return Data(format="synth", root=str(root), frames=4, size=32, scale_size=32, synth=synth, **kw)


# --------------------------------------------------------------------------- pure functions


def test_level_edges_belong_to_the_upper_bucket():
    edges, names = (0.2, 0.3), ("small", "medium", "large")
    assert [probe.level(v, edges, names) for v in (0.1, 0.2, 0.25, 0.3, 0.9)] == \
        ["small", "medium", "medium", "large", "large"]
    assert probe.scale_bucket(0.13, 0.05, Buckets()) == "size_small/speed_fast"
    assert probe.scale_bucket(0.22, 0.02, Buckets()) == "size_medium/speed_slow"


def test_default_edges_are_the_thirds_of_the_full_ranges():
    from harness.data.synth import SIZE_RANGE, SPEED_RANGE

    for edges, (lo, hi) in ((Buckets().size, SIZE_RANGE), (Buckets().speed, SPEED_RANGE)):
        assert edges == pytest.approx((lo + (hi - lo) / 3, lo + 2 * (hi - lo) / 3), abs=1e-4)


def test_stratified_top1_on_hand_made_predictions():
    # predictions 0 0 1 1 2 2 against labels 0 1 1 0 2 2: clips 0, 2, 4, 5 are right
    logits = np.eye(3)[[0, 0, 1, 1, 2, 2]]
    labels = np.array([0, 1, 1, 0, 2, 2])
    buckets = ["size_small/speed_fast", "size_small/speed_fast", "size_small/speed_slow",
               "size_large/speed_fast", "size_large/speed_slow", None]
    got = probe.stratified_top1(logits.argmax(1) == labels, buckets)
    assert got == {
        "val_top1/size_small/speed_fast": 50.0, "val_count/size_small/speed_fast": 2,
        "val_top1/size_small/speed_slow": 100.0, "val_count/size_small/speed_slow": 1,
        "val_top1/size_large/speed_fast": 0.0, "val_count/size_large/speed_fast": 1,
        "val_top1/size_large/speed_slow": 100.0, "val_count/size_large/speed_slow": 1,
        "val_top1/size_small": pytest.approx(200 / 3), "val_count/size_small": 3,
        "val_top1/size_large": 50.0, "val_count/size_large": 2,
        "val_top1/speed_fast": pytest.approx(100 / 3), "val_count/speed_fast": 3,
        "val_top1/speed_slow": 100.0, "val_count/speed_slow": 2,
    }  # the clip without a bucket (index 5) counts nowhere; empty cells have no metric


def test_single_part_buckets_have_no_marginals():
    got = probe.stratified_top1(np.array([True, False, True]), ["occluded", "occluded", "clear"])
    assert got == {"val_top1/clear": 100.0, "val_count/clear": 1, "val_top1/occluded": 50.0, "val_count/occluded": 2}


def test_metric_names_are_accepted_by_mlflow():
    """MLflow refuses '=' in metric names; the names use '_' between a dimension and its level."""
    pytest.importorskip("mlflow")
    from mlflow.utils.validation import _validate_metric_name

    names = probe.stratified_top1(np.array([True, True]), ["size_small/speed_fast", "size_large/speed_slow"])
    for name in names:
        _validate_metric_name(name)


def test_stratified_top1_refuses_mismatched_lengths():
    with pytest.raises(ValueError, match="N buckets"):
        probe.stratified_top1(np.ones(3, dtype=bool), ["a", "b"])


# --------------------------------------------------------------------------- bucket CSV


def test_bucket_csv_errors_say_what_to_fix(tmp_path):
    bad = tmp_path / "b.csv"
    with pytest.raises(DataError, match="no file at"):
        probe.read_bucket_csv(tmp_path / "none.csv")
    bad.write_text("id,group\n1,a\n")
    with pytest.raises(DataError, match="header must be clip_id,bucket"):
        probe.read_bucket_csv(bad)
    bad.write_text("clip_id,bucket\n1,size=small\n")
    with pytest.raises(DataError, match=r"b\.csv:2: bucket 'size=small'"):
        probe.read_bucket_csv(bad)
    bad.write_text("clip_id,bucket\n1,a\n1,b\n")
    with pytest.raises(DataError, match=r"b\.csv:3: clip '1' is in bucket 'a' already"):
        probe.read_bucket_csv(bad)


def _predictions(ids, extra=None) -> Predictions:
    n = len(ids)
    return Predictions(list(ids), np.zeros(n, dtype=np.int64), np.zeros((n, 1), dtype=np.int64), extra or {})


def test_bucket_csv_maps_clips_by_id_and_warns_on_missing(tmp_path, caplog):
    csv_path = tmp_path / "b.csv"
    csv_path.write_text("clip_id,bucket\n10,near\n11,far/left\n")
    data = Data(format="sthv2", root=str(tmp_path), bucket_csv=str(csv_path))
    clips = _predictions(["10", "11", "12", "13"])
    assert probe.clip_buckets(data, clips) == ["near", "far/left", None, None]
    assert "2 of 4 val clips have no bucket" in caplog.text
    csv_path.write_text("clip_id,bucket\nx,near\n")
    with pytest.raises(DataError, match="none of its clip ids is in the val split"):
        probe.clip_buckets(data, clips)


def test_scale_buckets_need_size_and_speed_keys(tmp_path):
    data = Data(format="sthv2", root=str(tmp_path), buckets=Buckets())
    with pytest.raises(DataError, match="lack them.*bucket_csv"):
        probe.clip_buckets(data, _predictions(["1"]))
    assert probe.clip_buckets(Data(format="sthv2", root=str(tmp_path)), _predictions([])) is None
    both = _predictions(["1", "2"], {"size": [0.13, 0.3], "speed": [0.05, 0.02]})
    assert probe.clip_buckets(data, both) == ["size_small/speed_fast", "size_large/speed_slow"]


def test_data_takes_one_stratification():
    with pytest.raises(ValueError, match="not both"):
        Data(format="synth", root="r", buckets=Buckets(), bucket_csv="b.csv")


# --------------------------------------------------------------------------- on a synth set


def test_train_and_val_ranges_differ_when_asked(data_probe_dir):
    train_set = json.loads((data_probe_dir / "train.json").read_text())
    val_set = json.loads((data_probe_dir / "validation.json").read_text())
    assert len(train_set) == len(val_set) == 20
    for e in train_set:  # every family, capped ones included: the caps do not bind in this range
        assert 0.19 <= e["size"] <= 0.25 and 0.031 <= e["speed"] <= 0.044, e
    assert all(0.12 <= e["size"] <= 0.32 and 0 < e["speed"] <= 0.06 for e in val_set)
    assert sum(not 0.19 <= e["size"] <= 0.25 for e in val_set) >= 5
    assert sum(not 0.031 <= e["speed"] <= 0.044 for e in val_set) >= 5
    marker = json.loads((data_probe_dir / ".synth.json").read_text())
    assert marker["size_range"] == [0.19, 0.25] and marker["val_size_range"] == [0.12, 0.32]


def test_bucket_csv_path_agrees_with_the_size_speed_path(data_probe_dir, tmp_path):
    """A user's CSV holding the synth buckets gives the same cells as data.buckets, from train.predict's clips."""
    by_scale = _data(data_probe_dir, buckets=Buckets())
    loader, classes = build_loader(by_scale, "val", batch_size=8, seed=0, train=False, with_index=True)
    entries = loader.dataset.entries
    rows = [f"{clip_id(e)},{probe.scale_bucket(e.extra['size'], e.extra['speed'], Buckets())}" for e in entries]
    (tmp_path / "buckets.csv").write_text("clip_id,bucket\n" + "\n".join(rows) + "\n")
    by_csv = _data(data_probe_dir, bucket_csv=str(tmp_path / "buckets.csv"))

    torch.manual_seed(0)
    model = _MeanColour(len(classes))
    metrics, clips = train.predict(model, loader)
    assert sorted(clips.ids) == sorted(clip_id(e) for e in entries)  # every val clip, once
    assert probe.clip_buckets(by_csv, clips) == probe.clip_buckets(by_scale, clips)
    got = probe.stratified_top1(clips.correct(1), probe.clip_buckets(by_scale, clips))
    cells = {k: v for k, v in got.items() if k.startswith("val_count/size_") and "/speed_" in k}
    assert sum(cells.values()) == len(entries) == 20
    weighted = sum(got[k.replace("val_count", "val_top1")] * n for k, n in cells.items()) / len(entries)
    assert weighted == pytest.approx(metrics["val_top1"])  # the cells add up to the top-1 evaluate gives
    assert metrics == train.evaluate(model, loader)
    with pytest.raises(ValueError, match="with_index=True"):
        plain, _ = build_loader(by_scale, "val", batch_size=8, seed=0, train=False)
        train.predict(model, plain)


class _MeanColour(torch.nn.Module):
    """Predicts from the mean pixel: a fixed, input-dependent classifier (no training needed)."""

    def __init__(self, classes: int):
        super().__init__()
        self.fc = torch.nn.Linear(3, classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(x.mean(dim=(1, 3, 4)))


def test_fit_keeps_per_clip_predictions_of_the_last_epoch_that_hold_the_cells(data_probe_dir, tmp_path):
    cfg = TrainConfig(name="probe", backbone=Backbone(arch="tiny", width=4), row=Row(block="tsm"), seed=0,
                      data=_data(data_probe_dir, buckets=Buckets()),
                      recipe=Recipe(epochs=2, batch_size=10, lr=0.02, schedule="cosine", threads=1))
    reports = []
    result = train.fit(cfg, tmp_path / "out", report=lambda m, _: reports.append(m))
    assert [train.PREDICTIONS_KEY in r for r in reports] == [False, True]  # the last epoch's only
    assert not any(k.startswith("val_top1/") for r in result.history for k in r)  # no bucket in the trainer
    clips = result.predictions
    assert len(clips) == 20 and clips.top1() == pytest.approx(result.last_top1)
    assert set(clips.extra) == {"size", "speed"}  # the annotation's numbers ride along
    saved = Predictions.from_json(json.loads((tmp_path / "out" / "predictions.json").read_text()))
    assert saved.to_json() == clips.to_json()
    got = probe.stratified_top1(clips.correct(1), probe.clip_buckets(cfg.data, clips))
    nine = {f"size_{a}/speed_{b}" for a in probe.SIZE_NAMES for b in probe.SPEED_NAMES}
    cells = {k.split("/", 1)[1] for k in got if k.startswith("val_top1/") and k.count("/") == 2}
    assert len(cells) >= 4 and cells <= nine  # 20 val clips: most of the nine cells, no other name
    assert sum(v for k, v in got.items() if k.startswith("val_count/size_") and "/speed_" in k) == 20
