"""Batched clip transforms: TSM crops, test views, normalisation, flip with label swap."""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from harness.config import Data
from harness.data import build_loader
from harness.data.dataset import ClipDataset, flip_swap
from harness.data.formats import Entry
from harness.data.synth import CLASSES
from harness.data.transforms import (MEAN, STD, eval_clip, fix_offsets, multiscale_box, normalize, resize_short,
                                     symmetric_swap, to_tensor, train_clip, view_boxes)


def test_resize_short_keeps_aspect():
    x = torch.zeros(2, 3, 240, 320, dtype=torch.uint8)
    assert resize_short(x, 128).shape == (2, 3, 128, 171)
    assert resize_short(x.transpose(-1, -2), 128).shape == (2, 3, 171, 128)
    assert resize_short(x, 128).dtype == torch.uint8


def test_multiscale_box_uses_tsm_sizes_and_fixed_positions():
    rng = np.random.default_rng(0)
    h, w, size = 128, 171, 112
    allowed = {112, 96, 84, 128}  # 128 * (1, .875 -> snapped to 112, .75, .66)
    seen = set()
    for _ in range(400):
        top, left, ch, cw = multiscale_box(h, w, size, rng)
        assert ch in allowed and cw in allowed
        assert abs(sorted(allowed).index(ch) - sorted(allowed).index(cw)) <= 1  # max_distort 1
        assert (top, left) in fix_offsets(h, w, ch, cw)
        assert 0 <= top <= h - ch and 0 <= left <= w - cw
        seen.add((ch, cw))
    assert len(seen) == 10  # 4 sides, pairs at most one step apart: 4 + 3 + 3


@pytest.mark.parametrize("crops", [1, 3, 5, 10])
def test_view_boxes(crops):
    boxes = view_boxes(128, 171, 112, crops)
    assert len(boxes) == crops
    assert all(0 <= t <= 16 and 0 <= l <= 59 and h == w == 112 for (t, l, h, w), _ in boxes)
    assert sum(m for _, m in boxes) == (5 if crops == 10 else 0)


def test_eval_views_shapes_and_mirrors():
    frames = np.random.default_rng(0).integers(0, 255, (4, 60, 80, 3), dtype=np.uint8)
    v = eval_clip(frames, resize_to=40, size=32, crops=10)
    assert v.shape == (10, 4, 3, 32, 32) and v.dtype == torch.uint8
    assert torch.equal(v[5:], v[:5].flip(-1))  # the last five are the first five mirrored
    one = eval_clip(frames, resize_to=40, size=32, crops=1)
    assert torch.equal(one[0], v[4])  # the centre crop is the fifth of the five


def test_normalize_is_imagenet():
    x = torch.zeros(1, 3, 2, 2, dtype=torch.uint8)
    y = normalize(x)
    assert torch.allclose(y[0, :, 0, 0], -torch.tensor(MEAN) / torch.tensor(STD))
    assert torch.allclose(normalize(x + 255)[0, :, 0, 0], (1 - torch.tensor(MEAN)) / torch.tensor(STD))


def half_red_clip(t: int = 3, size: int = 40) -> np.ndarray:
    """Left half red, right half blue: a flip is visible."""
    f = np.zeros((t, size, size, 3), np.uint8)
    f[:, :, : size // 2, 0] = 255
    f[:, :, size // 2:, 2] = 255
    return f


def is_flipped(clip: torch.Tensor) -> bool:
    s = clip.shape[-1]
    return bool(clip[0, 2, :, : s // 4].float().mean() > clip[0, 0, :, : s // 4].float().mean())  # blue on the left


def test_train_flip_swaps_labels():
    frames = half_red_clip()
    swap = symmetric_swap({0: 1})
    outcomes = set()
    for seed in range(40):
        kw = dict(resize_to=40, size=32, flip=True, swap=swap)
        clip, label = train_clip(frames, 0, rng=np.random.default_rng(seed), **kw)
        assert clip.shape == (3, 3, 32, 32)
        assert label == (1 if is_flipped(clip) else 0)
        outcomes.add(label)
        clip, label = train_clip(frames, 5, rng=np.random.default_rng(seed), **kw)
        assert label == 5  # classes outside the map keep their label
    assert outcomes == {0, 1}


def test_flip_is_off_by_default():
    frames = half_red_clip()
    for seed in range(20):
        clip, label = train_clip(frames, 0, resize_to=40, size=32, flip=False, swap={0: 1},
                                 rng=np.random.default_rng(seed))
        assert not is_flipped(clip) and label == 0


def test_flip_swap_defaults():
    ss = flip_swap(Data(format="sthv2", root="x", flip=True), [str(i) for i in range(174)])
    assert ss == {86: 87, 87: 86, 93: 94, 94: 93, 166: 167, 167: 166}  # GST
    assert flip_swap(Data(format="sthv2", root="x"), [str(i) for i in range(174)]) == {}  # flip off
    synth = flip_swap(Data(format="synth", root="x", flip=True), CLASSES)
    assert {CLASSES[a]: CLASSES[b] for a, b in synth.items()} == {
        "Moving something from left to right": "Moving something from right to left",
        "Moving something from right to left": "Moving something from left to right",
        "Rotating something clockwise": "Rotating something counter-clockwise",
        "Rotating something counter-clockwise": "Rotating something clockwise",
        "Something circling clockwise": "Something circling counter-clockwise",
        "Something circling counter-clockwise": "Something circling clockwise",
    }
    assert flip_swap(Data(format="k400", root="x", flip=True, flip_label_swap={3: 4}), []) == {3: 4, 4: 3}


def test_symmetric_swap_refuses_conflicts():
    with pytest.raises(ValueError, match="class 1"):
        symmetric_swap({0: 1, 2: 1})


def test_dataset_flip_with_label_swap_end_to_end(tmp_path, data_media):
    """Through ClipDataset on a frame folder: flipped clips carry the swapped label."""
    data_media.write_frame_folder(tmp_path / "a", half_red_clip(6, 40))
    entries = [Entry(tmp_path / "a", 0, num_frames=6, frames=True)]
    ds = ClipDataset(entries, frames=3, train=True, resize_to=40, size=32, flip=True, swap={0: 1, 1: 0})
    labels = {}
    for seed in range(30):
        clip, label = ds[(0, seed)]
        labels[seed] = label
        assert label == (1 if is_flipped(clip) else 0)
    assert set(labels.values()) == {0, 1}


def test_eval_loader_batches_views(tmp_path, data_media):
    (tmp_path / "labels.json").write_text(json.dumps({"a": "0"}))
    (tmp_path / "validation.json").write_text(json.dumps([{"id": str(i), "template": "a"} for i in range(3)]))
    for i in range(3):
        data_media.write_video(tmp_path / "v" / f"{i}.webm", data_media.indexed_frames(12, 40))
    data = Data(format="sthv2", root=str(tmp_path / "v"), annotations=str(tmp_path), frames=4, size=32,
                test_clips=2, test_crops=3)
    loader, classes = build_loader(data, "val", batch_size=2, seed=0, train=False)
    batches = list(loader)
    assert [tuple(x.shape) for x, _ in batches] == [(2, 6, 4, 3, 32, 32), (1, 6, 4, 3, 32, 32)]  # eval keeps the last
    assert batches[0][1].dtype == torch.int64 and classes == ["a"]


def test_to_tensor_refuses_wrong_layout():
    with pytest.raises(ValueError, match=r"\(T, H, W, 3\)"):
        to_tensor(np.zeros((2, 3, 8, 8), np.uint8))
