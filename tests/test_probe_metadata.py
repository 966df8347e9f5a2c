"""The synth set's size and speed keys match its decoded pixels, bucket for bucket (harness.probe).

Each case asks ``harness data synth`` for one cell in train and another in val,
decodes the videos with the trainer's reader (sthv2 annotations, decord), and
measures the moving object: its area against the temporal-median background,
turned into a side with the shape's area factor (the shape is named in the
annotation's placeholder), and its per-frame step from the circular centroid
(the frame is a torus). Only families whose object keeps its size and moves
at a steady speed are measured: translation (class 0) and orbit (class 8).

The asked ranges sit inside the buckets, away from the edges by more than the
measurement error (side: -2% .. +14%, mostly the anti-aliased rim; speed: +-3%),
so a wrong declared size or speed shows as a different bucket. 32 frames of 64 px:
a large slow object must leave each pixel for over half the clip for the median
to see the background.
"""
from __future__ import annotations

import json
import math

import numpy as np
import pytest

from harness import probe
from harness.config import Buckets
from harness.data.formats import read_split
from harness.data.video import open_entry

SIZES = {"small": (0.13, 0.16), "medium": (0.195, 0.215), "large": (0.265, 0.29)}
SPEEDS = {"slow": (0.018, 0.027), "medium": (0.033, 0.042), "fast": (0.048, 0.057)}
# (train cell, val cell): the nine cells in five sets
CASES = [(("small", "slow"), ("large", "fast")), (("small", "medium"), ("large", "medium")),
         (("small", "fast"), ("large", "slow")), (("medium", "slow"), ("medium", "fast")),
         (("medium", "medium"), ("medium", "medium"))]
FRAMES, SIDE, VIDEOS = 32, 64, 20
# object area / side^2 of each shape (object units, half-side 1, see synth._sdf)
AREA = {"disc": math.pi / 4, "square": 0.85 ** 2, "diamond": 0.5, "triangle": 3 * math.sqrt(3) / 16,
        "ring": math.pi * (1 - 0.25) / 4, "cross": (2 * 2 * 0.7 - 0.7 ** 2) / 4}
STEADY = {0: "translate", 8: "orbit"}  # class index -> family measured
SPLIT_FILES = {"train": "train.json", "val": "validation.json"}


def _synth(out, train_cell, val_cell) -> None:
    from harness.cli import main

    argv = ["data", "synth", str(out), "--videos", str(VIDEOS), "--frames", str(FRAMES), "--size", str(SIDE),
            "--seed", "7", "--val-fraction", "0.5"]
    for split, (size, speed) in (("train", train_cell), ("val", val_cell)):
        argv += [f"--{split}-size", *map(str, SIZES[size]), f"--{split}-speed", *map(str, SPEEDS[speed])]
    assert main(argv) == 0


def _centroid(mask: np.ndarray) -> np.ndarray:
    """(T, 2) circular centroid (x, y) in pixels of a (T, S, S) mask on the torus."""
    s = mask.shape[1]
    phase = np.exp(2j * math.pi * (np.arange(s) + 0.5) / s)
    x = np.angle((mask.sum(1) * phase).sum(1))
    y = np.angle((mask.sum(2) * phase).sum(1))
    return np.stack([x, y], 1) * s / (2 * math.pi)


def measure(video: np.ndarray, shape: str) -> tuple[float, float]:
    """Object side and step per frame, both as fractions of the frame side, from decoded frames."""
    frames = video.astype(np.float32)
    mask = np.abs(frames - np.median(frames, axis=0)).sum(-1) > 60
    side = math.sqrt(np.median(mask.sum((1, 2))) / AREA[shape])
    step = (np.diff(_centroid(mask), axis=0) + SIDE / 2) % SIDE - SIDE / 2
    return side / SIDE, float(np.median(np.hypot(step[:, 0], step[:, 1]))) / SIDE


@pytest.mark.parametrize("train_cell,val_cell", CASES, ids=["/".join(a + b) for a, b in CASES])
def test_declared_size_and_speed_match_the_decoded_pixels(tmp_path, train_cell, val_cell):
    out = tmp_path / "set"
    _synth(out, train_cell, val_cell)
    for split, cell in (("train", train_cell), ("val", val_cell)):
        expected = f"size_{cell[0]}/speed_{cell[1]}"
        measured = 0
        annotations = {e["id"]: e for e in json.loads((out / SPLIT_FILES[split]).read_text())}
        for entry in read_split("sthv2", out / "videos", out, split).entries:
            size, speed = entry.extra["size"], entry.extra["speed"]
            assert SIZES[cell[0]][0] <= size <= SIZES[cell[0]][1]  # every family draws its size in the range
            if entry.label not in STEADY:
                continue
            assert SPEEDS[cell[1]][0] <= speed <= SPEEDS[cell[1]][1]
            assert probe.scale_bucket(size, speed, Buckets()) == expected
            clip = open_entry(entry)
            shape = annotations[entry.path.stem]["placeholders"][0].split()[-1]  # "red disc" -> disc
            got_size, got_speed = measure(clip.get(np.arange(clip.num_frames)), shape)
            assert probe.scale_bucket(got_size, got_speed, Buckets()) == expected, (
                STEADY[entry.label], shape, (size, speed), (round(got_size, 4), round(got_speed, 4)))
            assert got_size == pytest.approx(size, rel=0.2) and got_speed == pytest.approx(speed, rel=0.1)
            measured += 1
        assert measured == 2, f"{split}: expected one translation and one orbit clip, measured {measured}"
