"""Probe configuration: synth ranges, bucket edges, regimes, the scale_probe study, and cache / resume keys."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from pydantic import ValidationError

from harness import probe
from harness.config import Buckets, Data, Regime, Study, Synth, load_study, trial_config
from harness.data import synth as synth_mod

STUDY = Path(__file__).resolve().parents[1] / "studies" / "scale_probe.yaml"


def test_synth_ranges_default_to_the_full_ones_and_must_be_ordered():
    s = Synth()
    assert s.train_size == s.val_size == synth_mod.SIZE_RANGE
    assert s.train_speed == s.val_speed == synth_mod.SPEED_RANGE
    with pytest.raises(ValidationError, match=r"val_speed must be \[min, max\] with 0 < min <= max"):
        Synth(val_speed=[0.05, 0.01])
    with pytest.raises(ValidationError, match="buckets.size"):
        Buckets(size=[0.3, 0.2])


def test_regime_overrides_ranges_in_its_own_folder():
    data = Data(format="synth", root="work/data/s", synth=Synth(videos=100))
    shifted = Regime(train_size=[0.19, 0.25]).data(data, "scale-shift")
    assert shifted.root == "work/data/s-scale-shift" and shifted.synth.videos == 100
    assert shifted.synth.train_size == (0.19, 0.25) and shifted.synth.val_size == synth_mod.SIZE_RANGE
    assert data.synth.train_size == synth_mod.SIZE_RANGE  # the profile is not changed
    with pytest.raises(ValueError, match="synth laptop profile only"):
        Regime().data(Data(format="sthv2", root="r"), "x")
    with pytest.raises(ValidationError, match="train_speed must be"):
        Regime(train_speed=[0.2, 0.1])


def test_regimes_belong_to_probe_studies():
    base = {"name": "x", "profiles": {"laptop": {"backbone": {"arch": "tiny"},
                                                 "data": {"format": "synth", "root": "r"}}},
            "rows": {"TSN": {"block": "tsn"}}, "regimes": {"a": {}}}
    with pytest.raises(ValidationError, match="regimes are for kind: probe"):
        Study.model_validate(base)
    with pytest.raises(ValidationError, match="regimes is empty"):
        Study.model_validate({**base, "kind": "probe", "regimes": {}})
    assert Study.model_validate({**base, "kind": "probe"}).regimes["a"] == Regime()
    with pytest.raises(ValidationError, match=r"rename \['../x'\]"):
        Study.model_validate({**base, "kind": "probe", "regimes": {"../x": {}}})


def test_scale_probe_study_is_the_issue_s_design():
    study = load_study(STUDY)
    assert study.kind == "probe" and list(study.profiles) == ["laptop"]
    assert list(study.rows) == ["TSN", "TSM", "GST", "RF-S", "RF-L", "RF-L-Inception", "RF-L-Inception-T", "Ours"]
    assert study.rows["Ours"].block == "vps" and study.profiles["laptop"].seeds == 2
    assert set(study.regimes) == {"in-distribution", "scale-shift"}
    data = study.profiles["laptop"].data
    assert data.buckets == Buckets()  # the thirds, fixed up front
    full = study.regimes["in-distribution"].data(data, "in-distribution").synth
    assert full.train_size == full.val_size == synth_mod.SIZE_RANGE
    assert full.train_speed == full.val_speed == synth_mod.SPEED_RANGE
    shift = study.regimes["scale-shift"].data(data, "scale-shift").synth
    assert shift.val_size == synth_mod.SIZE_RANGE and shift.val_speed == synth_mod.SPEED_RANGE
    corners = {probe.scale_bucket(a, b, data.buckets) for a in shift.train_size for b in shift.train_speed}
    assert corners == {"size_medium/speed_medium"}  # training only in the middle cell
    trial = trial_config(study, "laptop", "Ours", 1)
    assert trial.data.buckets is not None and trial.row.options == {"proportion": 0.25}


def test_cache_marker_keeps_its_old_layout_when_the_splits_share_ranges():
    """Sets made before per-split ranges existed are reused (same files), not regenerated under running trials."""
    old = {"version": synth_mod.SYNTH_VERSION, "videos": 40, "frames": 8, "size": 32, "seed": 0,
           "val_fraction": 0.25, "size_range": [0.12, 0.32], "speed_range": [0.015, 0.06]}
    same = synth_mod._params(40, 8, 32, 0, 0.25, (0.12, 0.32), (0.015, 0.06), (0.12, 0.32), (0.015, 0.06))
    assert same == old
    shifted = synth_mod._params(40, 8, 32, 0, 0.25, (0.19, 0.25), (0.015, 0.06), (0.12, 0.32), None)
    assert shifted["size_range"] == [0.19, 0.25] and shifted["val_size_range"] == [0.12, 0.32]
    assert "val_speed_range" not in shifted


def test_ensure_synth_passes_the_split_ranges(tmp_path, monkeypatch):
    calls = []
    monkeypatch.setattr(synth_mod, "ensure_at", lambda root, **kw: calls.append(kw) or Path(root))
    synth = Synth(train_size=[0.19, 0.25], val_speed=[0.02, 0.03])
    synth_mod.ensure_synth(Data(format="synth", root=str(tmp_path), synth=synth))
    assert calls[0]["size_range"] == (0.19, 0.25) and calls[0]["val_speed_range"] == (0.02, 0.03)
    assert calls[0]["speed_range"] == synth_mod.SPEED_RANGE and calls[0]["val_size_range"] == synth_mod.SIZE_RANGE


def test_resume_accepts_a_checkpoint_saved_before_the_ranges_existed(tmp_path):
    from harness import train
    from harness.config import Backbone, Row, TrainConfig

    cfg = TrainConfig(backbone=Backbone(arch="tiny"), row=Row(block="tsn"),
                      data=Data(format="synth", root="r", synth=Synth(videos=40)))
    saved = cfg.model_dump(mode="json")
    for key in ("train_size", "train_speed", "val_size", "val_speed"):
        del saved["data"]["synth"][key]
    del saved["data"]["buckets"], saved["data"]["bucket_csv"]
    train.check_same_trial(saved, cfg, tmp_path / "last.pt")
    shifted = cfg.data.model_copy(update={"synth": Synth(videos=40, val_size=[0.2, 0.3])})
    other = cfg.model_copy(update={"data": shifted})
    with pytest.raises(ValueError, match="data.synth.val_size"):
        train.check_same_trial(saved, other, tmp_path / "last.pt")


def test_cli_refuses_a_reversed_range(tmp_path, capsys):
    from harness.cli import main

    assert main(["data", "synth", str(tmp_path / "x"), "--videos", "4", "--train-size", "0.3", "0.2"]) == 2
    assert "--train-size MIN MAX needs 0 < MIN <= MAX <= 1, got [0.3, 0.2]" in capsys.readouterr().err
    assert not (tmp_path / "x").exists()


def test_scale_probe_generator_and_recipe_are_the_same_for_every_row():
    """Never tuned per row: every trial of a regime reads the same data and trains with the same recipe."""
    study = load_study(STUDY)
    assert not any(row.recipe for row in study.rows.values())
    data = study.profiles["laptop"].data
    assert data.synth.style == "plain" and data.multiscale_crop is False
    for regime in study.regimes:
        trials = [trial_config(study, "laptop", row, 0) for row in study.rows]
        assert len({(t.data.model_dump_json(), t.recipe.model_dump_json(), t.backbone.model_dump_json())
                    for t in trials}) == 1, regime


def _windows(x: np.ndarray, size: int) -> set[bytes]:
    h, w = x.shape[1:3]
    return {x[:, i:i + size, j:j + size].tobytes() for i in range(h - size + 1) for j in range(w - size + 1)}


def test_fixed_scale_crop_keeps_the_test_scale():
    """multiscale_crop: false crops `size` pixels without zoom; TSM's multi-scale crop zooms (what leaks scales)."""
    from harness.data import transforms

    frames = np.random.default_rng(0).integers(0, 256, (2, 32, 32, 3), dtype=np.uint8)
    windows = _windows(frames, 28)

    def view(multiscale: bool, seed: int) -> bytes:
        x, _ = transforms.train_clip(frames, 0, resize_to=32, size=28, flip=False, swap={},
                                     rng=np.random.default_rng(seed), multiscale=multiscale)
        assert x.shape == (2, 3, 28, 28)
        pixels = x.permute(0, 2, 3, 1).numpy()  # uint8: normalisation is the trainer's
        return pixels.tobytes()

    assert all(view(False, s) in windows for s in range(20))
    assert not all(view(True, s) in windows for s in range(20))
    assert Data(format="synth", root="r").multiscale_crop is True  # TSM's recipe stays the default


def test_dataset_takes_the_crop_option_from_data(tmp_path):
    from harness.data.dataset import build_dataset

    data = Data(format="synth", root=str(tmp_path / "s"), frames=2, size=28, scale_size=32, multiscale_crop=False,
                synth=Synth(videos=4, frames=4, size=32, val_fraction=0.5, style="plain"))
    dataset, _ = build_dataset(data, "train", train=True)
    assert dataset.multiscale is False and dataset[0][0].shape == (2, 3, 28, 28)
    data = data.model_copy(update={"multiscale_crop": True})
    assert build_dataset(data, "train", train=True)[0].multiscale is True
