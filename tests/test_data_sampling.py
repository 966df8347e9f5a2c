"""TSN / TSM segment sampling, including its edge cases, and loader determinism."""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from harness.config import Data
from harness.data import build_loader
from harness.data.sampling import clip_indices, train_indices, val_indices


def tsm_val(n: int, t: int) -> list[int]:
    """TSM ``_get_val_indices`` (new_length=1), 0-based, written out independently."""
    if n > t:
        tick = n / float(t)
        return [int(tick / 2.0 + tick * x) for x in range(t)]
    return [0] * t


@pytest.mark.parametrize("n,t", [(16, 8), (17, 8), (9, 8), (37, 8), (100, 16), (3, 1)])
def test_train_picks_one_random_frame_inside_each_segment(n, t):
    avg = n // t
    seen = set()
    for seed in range(50):
        idx = train_indices(n, t, np.random.default_rng(seed))
        assert idx.shape == (t,)
        assert all(i * avg <= f < (i + 1) * avg for i, f in enumerate(idx))  # TSM never uses the last n % t frames
        seen.add(tuple(idx))
    assert len(seen) > 1 or avg == 1  # random offsets, unless each segment holds one frame


def test_train_edge_cases_follow_tsm():
    rng = np.random.default_rng(0)
    assert train_indices(8, 8, rng).tolist() == list(range(8))  # one frame per segment
    assert train_indices(5, 8, rng).tolist() == [0] * 8  # fewer frames than segments: TSM repeats frame 1
    assert train_indices(0, 8, rng).tolist() == [0] * 8


@pytest.mark.parametrize("n,t", [(16, 8), (17, 8), (9, 8), (8, 8), (5, 8), (1, 8), (48, 8), (23, 7)])
def test_val_is_the_segment_middle_as_tsm(n, t):
    assert val_indices(n, t).tolist() == tsm_val(n, t)


def test_val_examples():
    assert val_indices(16, 8).tolist() == [1, 3, 5, 7, 9, 11, 13, 15]
    assert val_indices(8, 8).tolist() == [0] * 8  # TSM's quirk, kept: n == T is not > T


def test_two_clips_are_tsm_twice_sample():
    n, t = 40, 8
    tick = n / t
    idx = clip_indices(n, t, clips=2)
    assert idx[0].tolist() == tsm_val(n, t)
    assert idx[1].tolist() == [int(tick * x) for x in range(t)]


def test_ten_clips_spread_over_each_segment():
    idx = clip_indices(100, 4, clips=10)
    assert idx.shape == (10, 4) and idx.min() >= 0 and idx.max() < 100
    assert idx[0].tolist() == tsm_val(100, 4)  # clip 0 is the val clip
    assert sorted(idx[:, 0].tolist()) == [0, 2, 5, 7, 10, 12, 15, 17, 20, 22]  # 25-frame segment, steps of 2.5
    assert (idx[:, 1] - idx[:, 0]).tolist() == [25] * 10  # the same offset in every segment
    assert len({tuple(r) for r in idx}) == 10


def test_bad_arguments_raise():
    with pytest.raises(ValueError, match="segments"):
        val_indices(10, 0)
    with pytest.raises(ValueError, match="clips"):
        clip_indices(10, 2, clips=0)


@pytest.fixture
def data_tiny_sthv2(tmp_path, data_media):
    (tmp_path / "labels.json").write_text(json.dumps({"a": "0", "b": "1"}))
    items = [{"id": str(i), "template": "ab"[i % 2]} for i in range(6)]
    (tmp_path / "train.json").write_text(json.dumps(items))
    (tmp_path / "validation.json").write_text(json.dumps(items))
    for i in range(6):
        data_media.write_video(tmp_path / "v" / f"{i}.webm", data_media.indexed_frames(12, 32))
    return tmp_path


def _epoch(loader):
    return [(x.clone(), y.clone()) for x, y in loader]


def test_loader_is_deterministic_for_a_seed_and_any_worker_count(data_tiny_sthv2):
    root = data_tiny_sthv2
    base = dict(format="sthv2", root=str(root / "v"), annotations=str(root), frames=4, size=28, flip=True)
    runs = {}
    for workers in (0, 2):
        loader, _ = build_loader(Data(**base, workers=workers), "train", batch_size=2, seed=7, train=True)
        runs[workers] = (_epoch(loader), _epoch(loader))
    (a1, a2), (b1, b2) = runs[0], runs[2]
    for (xa, ya), (xb, yb) in zip(a1 + a2, b1 + b2):
        assert torch.equal(xa, xb) and torch.equal(ya, yb)
    assert not all(torch.equal(x1, x2) for (x1, _), (x2, _) in zip(a1, a2))  # epochs differ
    other, _ = build_loader(Data(**base), "train", batch_size=2, seed=8, train=True)
    assert not all(torch.equal(x1, x2) for (x1, _), (x2, _) in zip(a1, _epoch(other)))  # seeds differ


def test_sampler_set_epoch_replays(data_tiny_sthv2):
    root = data_tiny_sthv2
    loader, _ = build_loader(Data(format="sthv2", root=str(root / "v"), annotations=str(root), frames=4, size=28),
                             "train", batch_size=2, seed=1, train=True)
    first = _epoch(loader)
    _epoch(loader)
    loader.sampler.set_epoch(0)
    assert all(torch.equal(x1, x2) for (x1, _), (x2, _) in zip(first, _epoch(loader)))
