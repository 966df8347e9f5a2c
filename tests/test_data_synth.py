"""The reversal-paired synth set: determinism, reversal, direction, stationarity, caching, read-back."""
from __future__ import annotations

import json
import math
import threading
import time

import numpy as np
import pytest
import torch

from harness.config import Data, Synth
from harness.data import build_loader, ensure_synth
from harness.data import synth as synth_mod
from harness.data.dataset import build_dataset
from harness.data.sampling import clip_indices
from harness.data.synth import CLASSES, PAIRS, render_clip
from harness.data.transforms import eval_clip

from conftest import SYNTH_ARGS

C = len(CLASSES)
FAST_SMALL = {"size_range": (0.1, 0.1), "speed_range": (0.06, 0.06)}  # every pixel is covered by the object rarely


def test_classes_come_in_reversal_pairs():
    assert C == 2 * len(PAIRS) and len(set(CLASSES)) == C
    assert "left to right" in CLASSES[0] and "right to left" in CLASSES[1]


def test_render_is_deterministic_for_a_seed():
    a, ea = render_clip(0, 12, frames=8, size=32)
    b, eb = render_clip(0, 12, frames=8, size=32)
    c, _ = render_clip(1, 12, frames=8, size=32)
    assert a.shape == (8, 32, 32, 3) and a.dtype == np.uint8
    assert np.array_equal(a, b) and ea == eb
    assert not np.array_equal(a, c)


@pytest.mark.parametrize("pair", range(len(PAIRS)))
def test_twin_is_the_same_clip_reversed(pair):
    fwd, e1 = render_clip(5, 2 * pair, frames=12, size=32)
    rev, e2 = render_clip(5, 2 * pair + 1, frames=12, size=32)
    assert np.array_equal(rev, fwd[::-1])
    assert e1["template"] != e2["template"] and (e1["size"], e1["speed"]) == (e2["size"], e2["speed"])
    assert not np.array_equal(fwd, fwd[::-1])  # something moves


def _circular_track(video: np.ndarray, axis: int) -> np.ndarray:
    """Per-frame step of the moving object's circular centroid along ``axis`` (torus), in pixels."""
    bg = np.median(video.astype(np.float32), axis=0)
    diff = np.abs(video.astype(np.float32) - bg).sum(-1)  # (T, S, S)
    s = video.shape[1]
    prof = diff.sum(axis=2 if axis == 0 else 1)  # mass along y (axis 0) or x (axis 1)
    angles = np.exp(2j * math.pi * (np.arange(s) + 0.5) / s)
    pos = np.angle((prof * angles).sum(1)) * s / (2 * math.pi)
    return (np.diff(pos) + s / 2) % s - s / 2


@pytest.mark.parametrize("label,axis,sign", [(0, 1, 1), (1, 1, -1), (2, 0, 1), (3, 0, -1)])
def test_motion_goes_the_way_the_class_says(label, axis, sign):
    """left->right moves +x, right->left -x, falling +y (image y down), rising -y; measured on pixels."""
    for k in range(3):
        video, entry = render_clip(k, label + C * k, frames=16, size=64, **FAST_SMALL)
        steps = _circular_track(video, axis)
        assert sign * np.median(steps) > 1.0, (entry["label"], steps)
    if label == 2:  # falling accelerates, rising decelerates
        assert np.median(steps[-5:]) > np.median(steps[:5]) + 1


def test_first_frames_do_not_give_the_direction_away():
    """Object x at frame 0 is spread alike for left->right and right->left (a wrong design starts left)."""
    left_half = {0: [], 1: []}
    for k in range(60):
        for label in (0, 1):
            video, _ = render_clip(11, label + C * (2 * k + label), frames=8, size=32, **FAST_SMALL)
            bg = np.median(video.astype(np.float32), axis=0)
            mass = np.abs(video[0].astype(np.float32) - bg).sum(-1).sum(0)
            ang = np.angle((mass * np.exp(2j * math.pi * (np.arange(32) + 0.5) / 32)).sum()) % (2 * math.pi)
            left_half[label].append(ang < math.pi)
    for label in (0, 1):
        assert 0.3 < np.mean(left_half[label]) < 0.7, left_half
    assert abs(np.mean(left_half[0]) - np.mean(left_half[1])) < 0.25


def test_size_and_speed_follow_the_ranges():
    for i in range(2 * C):
        _, e = render_clip(2, i, frames=8, size=32, size_range=(0.2, 0.25), speed_range=(0.01, 0.02))
        assert 0.2 <= e["size"] <= 0.25
        assert 0 < e["speed"] <= 0.02 + 1e-4  # rotation / orbit / approach may be capped below the draw
    small, _ = render_clip(2, 0, frames=8, size=64, size_range=(0.1, 0.1), speed_range=(0.03, 0.03))
    big, _ = render_clip(2, 0, frames=8, size=64, size_range=(0.3, 0.3), speed_range=(0.03, 0.03))
    bg = np.median(big.astype(np.float32), axis=0)
    assert (np.abs(big[0] - bg.astype(np.float32)).sum(-1) > 30).sum() > (
        np.abs(small[0] - np.median(small.astype(np.float32), axis=0)).sum(-1) > 30).sum()


def test_cli_output_layout_and_extra_keys(data_synth_dir):
    root = data_synth_dir
    labels = json.loads((root / "labels.json").read_text())
    assert list(labels) == CLASSES and list(labels.values()) == [str(i) for i in range(C)]
    train = json.loads((root / "train.json").read_text())
    val = json.loads((root / "validation.json").read_text())
    assert len(train) + len(val) == SYNTH_ARGS["videos"] and len(val) == 10
    for e in train + val:
        assert {"id", "label", "template", "placeholders", "size", "speed"} <= set(e)
        assert (root / "videos" / f"{e['id']}.webm").stat().st_size < 20_000
    assert json.loads((root / ".synth.json").read_text())["seed"] == SYNTH_ARGS["seed"]


def _data(root, **kw) -> Data:
    return Data(format="synth", root=str(root), frames=4, size=32,
                synth=Synth(**{k: SYNTH_ARGS[k] for k in ("videos", "frames", "size", "seed")}), **kw)


def test_trainer_reader_decodes_clips_in_order(data_synth_dir, monkeypatch):
    """Read the CLI's set with build_dataset (the trainer's path): each clip matches a fresh render in frame
    order, and a twin matches its partner reversed; the cached set is reused, not regenerated."""
    monkeypatch.setattr(synth_mod, "generate", lambda *a, **k: pytest.fail("cached synth set regenerated"))
    ds, classes = build_dataset(_data(data_synth_dir), "val", train=False)
    assert classes == CLASSES
    idx = clip_indices(SYNTH_ARGS["frames"], 4)[0]
    kw = {k: SYNTH_ARGS[k] for k in ("frames", "size")}

    def expect(video):
        return eval_clip(video[idx], resize_to=ds.resize_to, size=32, crops=1)

    def corr(a, b):  # correlation of the temporal residuals: what moves, not the background or coding noise
        a, b = a.float(), b.float()  # uint8 pixels out of the loader
        a, b = (a - a.mean(dim=1, keepdim=True)).flatten(), (b - b.mean(dim=1, keepdim=True)).flatten()
        return float(torch.corrcoef(torch.stack([a, b]))[0, 1])

    margins, checked = [], 0
    for i, entry in enumerate(ds.entries):
        index = int(entry.path.stem)
        clip, label = ds[i]
        assert label == index % C
        forward = render_clip(SYNTH_ARGS["seed"], index, **kw)[0]
        good, wrong = corr(clip, expect(forward)), corr(clip, expect(forward[::-1].copy()))
        assert good > wrong, (index, good, wrong)
        margins.append(good - wrong)
        if label % 2:  # the decoded file is its forward twin (index - 1) played backwards, not forwards
            partner = render_clip(SYNTH_ARGS["seed"], index - 1, **kw)[0]
            assert corr(clip, expect(partner[::-1].copy())) > corr(clip, expect(partner)) + 0.1
            checked += 1
    assert np.mean(margins) > 0.5 and checked >= 4


def test_build_loader_on_synth(data_synth_dir):
    loader, classes = build_loader(_data(data_synth_dir, workers=0), "train", batch_size=8, seed=0, train=True)
    clips, labels = next(iter(loader))
    assert clips.shape == (8, 4, 3, 32, 32) and labels.dtype == torch.int64 and len(classes) == C


def test_ensure_synth_generates_once_under_concurrency(tmp_path, monkeypatch):
    calls = []

    def fake_generate(out, **params):
        calls.append(params)
        time.sleep(0.3)
        (out / "videos").mkdir(parents=True)
        (out / "labels.json").write_text("{}")

    monkeypatch.setattr(synth_mod, "generate", fake_generate)
    data = Data(format="synth", root=str(tmp_path / "s"), synth=Synth(videos=10, size=32))
    results = []
    threads = [threading.Thread(target=lambda: results.append(ensure_synth(data))) for _ in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(calls) == 1 and len(results) == 3 and len(set(results)) == 1
    assert (tmp_path / "s" / "labels.json").is_file()
    assert not list(tmp_path.glob(".s.tmp-*"))  # the temporary folder was renamed into place
    ensure_synth(data)
    assert len(calls) == 1  # marker matches: cached
    ensure_synth(Data(format="synth", root=str(tmp_path / "s"), synth=Synth(videos=12, size=32)))
    assert len(calls) == 2  # other parameters: regenerated


def test_ensure_synth_refuses_a_foreign_folder(tmp_path):
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "notes.txt").write_text("keep me")
    with pytest.raises(FileExistsError, match="not a synth set"):
        ensure_synth(Data(format="synth", root=str(tmp_path / "mine"), synth=Synth(videos=4, size=32)))
    assert (tmp_path / "mine" / "notes.txt").read_text() == "keep me"


def test_cli_refuses_unusable_arguments(tmp_path, capsys):
    from harness.cli import main

    assert main(["data", "synth", str(tmp_path / "x"), "--videos", "1", "--val-fraction", "1.5"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: --videos must be >= 2") and "--val-fraction" in err and err.count("\n") == 1
    assert not (tmp_path / "x").exists()


def test_width_decord_cannot_batch_is_read_with_pyav(tmp_path):
    """decord 0.6's get_batch fails on 48 px wide frames (table1's synth size): the PyAV fallback reads them."""
    from harness.data.video import VideoClip

    video, _ = render_clip(0, 0, frames=8, size=48)
    synth_mod.write_webm(tmp_path / "a.webm", video)
    clip = VideoClip(tmp_path / "a.webm")
    got = clip.get(np.array([6, 1, 1]))
    assert clip.num_frames == 8 and got.shape == (3, 48, 48, 3)
    err = [np.abs(got[k].astype(float) - video[i]).mean() for k, i in enumerate([6, 1, 1])]
    assert max(err) < 6 and np.abs(got[0].astype(float) - video[1]).mean() > max(err)


@pytest.mark.slow
def test_generation_in_two_processes_writes_every_clip(tmp_path):
    """Speed is not asserted here (no timing in tests): `harness data synth` prints its clips/s."""
    synth_mod.generate(tmp_path / "big", videos=40, frames=16, size=64, seed=0, processes=2)
    assert sorted(int(p.stem) for p in (tmp_path / "big" / "videos").iterdir()) == list(range(40))
