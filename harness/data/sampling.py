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
* too short for the views: ``clips * T`` distinct frames exist only when
  ``n >= clips * T``; below that the clips share frames (``n <= T``: every
  clip is frame 0). :func:`check_clips` logs such a video with its counts and
  counts it, instead of silently repeating frames.

Indices are 0-based frame numbers; frame folders add 1 for the file name.
"""
from __future__ import annotations

import logging

import numpy as np

log = logging.getLogger(__name__)

MAX_CLIP_WARNINGS = 5  # per process; later short videos are logged at debug level so a split cannot flood the log
_short = {"videos": 0}


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


def check_clips(num_frames: int, frames: int, clips: int, where: str = "a video") -> bool:
    """Whether ``clips`` clips of ``frames`` frames can be ``clips * frames`` distinct frames; if not, log and count.

    A warning, not an error: a split's lengths vary, so a protocol fits most
    videos and not a few, and stopping the evaluation for those would lose the
    run; repeating frames silently would overstate the views (the "10 clips"
    that are one clip, SlowFast #306). :func:`short_video_count` gives the
    count of this process (each DataLoader worker keeps its own).
    """
    if clips <= 1 or num_frames >= clips * frames:
        return True
    _short["videos"] += 1
    n = _short["videos"]
    same = "every clip is the same (frame 0 repeated)" if num_frames <= frames else "the clips share frames"
    log.log(logging.WARNING if n <= MAX_CLIP_WARNINGS else logging.DEBUG,
            "%s: %d frames cannot give %d clips x %d frames = %d distinct frames; %s. "
            "Lower test_clips or frames, or report the protocol as such", where, num_frames, clips, frames,
            clips * frames, same)
    if n == MAX_CLIP_WARNINGS:
        log.warning("further videos too short for %d clips x %d frames are logged at debug level", clips, frames)
    return False


def short_video_count(reset: bool = False) -> int:
    """Videos :func:`check_clips` found too short in this process; ``reset`` starts a new count."""
    n = _short["videos"]
    if reset:
        _short["videos"] = 0
    return n


def clip_indices(num_frames: int, segments: int, clips: int = 1, where: str = "a video") -> np.ndarray:
    """``clips`` evenly spread test clips, shape ``(clips, segments)``; row 0 is :func:`val_indices`.

    ``where`` names the video in the :func:`check_clips` warning.
    """
    _check(num_frames, segments)
    if clips < 1:
        raise ValueError(f"clips must be >= 1, got {clips}")
    check_clips(num_frames, segments, clips, where)
    if num_frames <= segments:
        return np.zeros((clips, segments), dtype=np.int64)
    tick = num_frames / segments
    shift = ((clips + 2 * np.arange(clips)) % (2 * clips)) / (2 * clips)  # (0.5 + k / clips) mod 1, without float drift
    idx = (tick * shift[:, None] + tick * np.arange(segments)[None, :]).astype(np.int64)
    return np.minimum(idx, num_frames - 1)
