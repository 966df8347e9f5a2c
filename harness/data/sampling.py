"""TSN / TSM segment sampling: which frames of a video make a clip of T.

The rules are those of the official TSM ``ops/dataset.py`` (``new_length=1``,
RGB), so a model trained here sees the frames a TSM checkpoint saw:

* train (``_sample_indices``): ``avg = n // T``; if ``avg > 0`` segment ``i``
  takes ``i * avg + randint(avg)`` (a random offset inside each of T equal
  segments; the last ``n % T`` frames are never used, as in TSM); else if
  ``n > T``, T sorted random indices; else all zeros.
* val / test (``_get_val_indices``): if ``n > T``, ``int(tick / 2 + tick * i)``
  with ``tick = n / T`` (the middle frame of each segment); else all zeros.
  TSM's quirk is kept on purpose: a video of exactly T frames gives T copies of
  its first frame, not frames 0..T-1.
* test views: clip ``k`` of ``n`` shifts every segment's pick by ``k / n`` of a
  segment, starting from the middle: offsets ``tick * ((0.5 + k / n) mod 1)``.
  ``n = 1`` is the val rule; ``n = 2`` is TSM's ``twice_sample`` (middles, then
  segment starts); ``n = 10`` spreads ten clips evenly. (On Something-Something
  the extra clips are near-duplicates: see user-pains.md.)

Indices are 0-based frame numbers; frame folders add 1 for the file name.
"""
from __future__ import annotations

import numpy as np


def _check(num_frames: int, segments: int) -> None:
    if segments < 1:
        raise ValueError(f"segments must be >= 1, got {segments}")
    if num_frames < 0:
        raise ValueError(f"num_frames must be >= 0, got {num_frames}")


def train_indices(num_frames: int, segments: int, rng: np.random.Generator) -> np.ndarray:
    """Random offset inside each of ``segments`` equal segments (TSM ``_sample_indices``)."""
    _check(num_frames, segments)
    avg = num_frames // segments
    if avg > 0:
        return np.arange(segments) * avg + rng.integers(0, avg, size=segments)
    if num_frames > segments:  # unreachable with new_length=1 (avg > 0 then); kept to mirror TSM
        return np.sort(rng.integers(0, num_frames, size=segments))
    return np.zeros(segments, dtype=np.int64)


def val_indices(num_frames: int, segments: int) -> np.ndarray:
    """Middle frame of each segment (TSM ``_get_val_indices``), zeros when ``num_frames <= segments``."""
    return clip_indices(num_frames, segments, clips=1)[0]


def clip_indices(num_frames: int, segments: int, clips: int = 1) -> np.ndarray:
    """``clips`` evenly spread test clips, shape ``(clips, segments)``; row 0 is :func:`val_indices`."""
    _check(num_frames, segments)
    if clips < 1:
        raise ValueError(f"clips must be >= 1, got {clips}")
    if num_frames <= segments:
        return np.zeros((clips, segments), dtype=np.int64)
    tick = num_frames / segments
    shift = ((clips + 2 * np.arange(clips)) % (2 * clips)) / (2 * clips)  # (0.5 + k / clips) mod 1, without float drift
    idx = (tick * shift[:, None] + tick * np.arange(segments)[None, :]).astype(np.int64)
    return np.minimum(idx, num_frames - 1)
