"""Decode the sampled frames of one entry: decord for videos, Pillow for frame folders.

Design against decord's known failure modes (user-pains.md, tools-notes.md):

* one short-lived ``VideoReader`` per sample (long-lived readers leak memory);
  ``num_threads=1`` because DataLoader workers are the parallelism;
* only the sampled indices are decoded (``get_batch``), never the whole video;
* indices are clamped to the frames decord indexed, which are the frames that
  decode (``get_batch`` past them can hang, decord #373);
* truncation: a truncated webm opens and reports fewer frames than it should.
  The promise comes from the annotation (list files) or from the container
  header, read with PyAV (~0.3 ms); a video holding fewer than
  :data:`MIN_FRAME_FRACTION` of its promise is unreadable. A truncated mp4
  fails to open at all (its index is at the end).

PyAV and decord each ship their own FFmpeg. Once decord is loaded, PyAV can no
longer open the libvpx encoders (``avcodec_open2`` returns EINVAL), so this
module loads PyAV first, and the synth writer always encodes in fresh
processes.

Every failure is raised as :class:`UnreadableError` with the path and reason,
so the dataset can skip, count and log it.
"""
from __future__ import annotations

import logging
import os
import re
from pathlib import Path

import av  # noqa: F401 - load PyAV's FFmpeg before decord's: the other order breaks PyAV's VP8/VP9 encoders
import numpy as np

from .formats import DataError, Entry

log = logging.getLogger(__name__)

MIN_FRAME_FRACTION = 0.9  # decoded / promised below this: truncated (allows rounding of duration * fps)

# frame widths decord 0.6's get_batch fails on (every even width 16..856 tried here); read with PyAV instead
DECORD_BAD_WIDTHS = (16, 24, 48, 72)
_warned_width = False

# frame file names of TSM (sthv1 ``%05d``, sthv2 ``%06d``, kinetics ``img_%05d``) and mmaction2 (``img_%05d``)
FRAME_TEMPLATES = ("{:05d}.jpg", "img_{:05d}.jpg", "{:06d}.jpg", "image_{:05d}.jpg",
                   "frame{:05d}.jpg", "frame_{:05d}.jpg", "img_{:05d}.png", "{:05d}.png")


def _decord_reason(e: Exception) -> str:
    """decord's first error line without its ``[hh:mm:ss] /build/path:line:`` prefix."""
    return re.sub(r"^\[[\d:]+\] \S+: ", "", str(e).splitlines()[0] if str(e) else type(e).__name__)[:200]


class UnreadableError(DataError):
    """One entry cannot be used: missing, truncated or undecodable."""

    def __init__(self, message: str):
        super().__init__(message)


def container_frames(path: Path) -> int | None:
    """Frames the container header promises (stream count, else duration x rate); None if it does not say."""
    try:
        with av.open(str(path)) as c:
            if not c.streams.video:
                raise UnreadableError(f"{path}: no video stream")
            s = c.streams.video[0]
            if s.frames:
                return int(s.frames)
            rate = s.average_rate or s.guessed_rate
            if c.duration and rate:
                return int(round(c.duration / 1_000_000 * float(rate)))
    except (av.error.FFmpegError, OSError) as e:
        raise UnreadableError(f"{path}: cannot open ({e})") from e
    return None


def check_count(path: Path, decoded: int, promised: int | None) -> None:
    """Raise if fewer frames decode than the promise allows (truncated file)."""
    if decoded < 1:
        raise UnreadableError(f"{path}: no decodable frames")
    if promised and decoded < MIN_FRAME_FRACTION * promised:
        raise UnreadableError(f"{path}: truncated, {decoded} frames decode of {promised} promised")


class VideoClip:
    """An opened video: its decodable frame count, and a method to decode chosen indices."""

    def __init__(self, path: Path, promised: int | None = None):
        import decord

        if not path.is_file():
            raise UnreadableError(f"{path}: missing")
        promised = promised or container_frames(path)
        try:
            self._reader = decord.VideoReader(str(path), num_threads=1)
            self.num_frames = len(self._reader)
        except (decord.DECORDError, RuntimeError) as e:
            raise UnreadableError(f"{path}: cannot decode ({_decord_reason(e)})") from e
        check_count(path, self.num_frames, promised)
        self.path = path

    def get(self, indices: np.ndarray) -> np.ndarray:
        """uint8 ``(len(indices), H, W, 3)``; indices clamped to what decodes."""
        import decord

        idx = np.clip(np.asarray(indices, dtype=np.int64), 0, self.num_frames - 1)
        try:
            return self._reader.get_batch(idx.tolist()).asnumpy()
        except (decord.DECORDError, RuntimeError) as e:
            if "DECORDArrayCopyFromTo" not in str(e):
                raise UnreadableError(f"{self.path}: cannot decode frames ({_decord_reason(e)})") from e
        return decode_with_pyav(self.path, idx)


def decode_with_pyav(path: Path, indices: np.ndarray) -> np.ndarray:
    """Frames ``indices`` decoded in order with PyAV, up to the last one needed (not the whole video).

    Only for what decord 0.6 cannot do: its ``get_batch`` fails on frames 16,
    24, 48 or 72 px wide ("DECORDArrayCopyFromTo: The size must exactly
    match"; every even width 16..856 was tried here), while its frame index is right.
    """
    global _warned_width
    if not _warned_width:
        log.warning("decord cannot decode %s (frame width in %s); decoding such files with PyAV",
                    path, DECORD_BAD_WIDTHS)
        _warned_width = True
    wanted, last = set(indices.tolist()), int(indices.max())
    frames: dict[int, np.ndarray] = {}
    try:
        with av.open(str(path)) as c:
            for i, frame in enumerate(c.decode(video=0)):
                if i in wanted:
                    frames[i] = frame.to_ndarray(format="rgb24")
                if i >= last:
                    break
    except (av.error.FFmpegError, OSError) as e:
        raise UnreadableError(f"{path}: cannot decode frames with PyAV ({e})") from e
    if not frames:
        raise UnreadableError(f"{path}: no decodable frames")
    top = max(frames)
    return np.stack([frames[min(i, top)] if min(i, top) in frames else frames[top] for i in indices.tolist()])


class FrameFolder:
    """A folder of 1-based frame images; the template is given or detected from frame 1."""

    def __init__(self, path: Path, promised: int | None = None, template: str | None = None):
        if not path.is_dir():
            raise UnreadableError(f"{path}: missing frame folder")
        self.path = path
        self.template = template or self._detect()
        if promised and (path / self.template.format(promised)).is_file():
            self.num_frames = promised  # the fast path: the last promised frame is there
        else:
            self.num_frames = self._count()
            check_count(path, self.num_frames, promised)

    def _detect(self) -> str:
        for t in FRAME_TEMPLATES:
            if (self.path / t.format(1)).is_file():
                return t
        raise UnreadableError(f"{self.path}: no frame 1 named like {', '.join(t.format(1) for t in FRAME_TEMPLATES)}")

    def _count(self) -> int:
        """Consecutive frames present from 1 (a gap ends the usable range)."""
        names = set(os.listdir(self.path))
        n = 0
        while self.template.format(n + 1) in names:
            n += 1
        return n

    def get(self, indices: np.ndarray) -> np.ndarray:
        """uint8 ``(len(indices), H, W, 3)`` read with Pillow; each distinct frame read once."""
        from PIL import Image

        idx = np.clip(np.asarray(indices, dtype=np.int64), 0, self.num_frames - 1)
        cache: dict[int, np.ndarray] = {}
        for i in dict.fromkeys(idx.tolist()):
            f = self.path / self.template.format(i + 1)
            try:
                with Image.open(f) as im:
                    cache[i] = np.asarray(im.convert("RGB"))
            except (OSError, ValueError) as e:
                raise UnreadableError(f"{f}: cannot read image ({e})") from e
        shapes = {a.shape for a in cache.values()}
        if len(shapes) > 1:
            raise UnreadableError(f"{self.path}: frames differ in size {sorted(shapes)}")
        return np.stack([cache[i] for i in idx.tolist()])


def open_entry(entry: Entry) -> VideoClip | FrameFolder:
    """Open an entry for decoding; raises :class:`UnreadableError` with the reason."""
    if entry.frames:
        return FrameFolder(entry.path, entry.num_frames, entry.template)
    return VideoClip(entry.path, entry.num_frames)


def probe(entry: Entry) -> int:
    """Open an entry and decode its first, middle and last frame; returns its frame count."""
    clip = open_entry(entry)
    n = clip.num_frames
    frames = clip.get(np.array(sorted({0, n // 2, n - 1})))
    if frames.ndim != 4 or frames.shape[-1] != 3 or 0 in frames.shape:
        raise UnreadableError(f"{entry.path}: decoded frames have shape {frames.shape}")
    return n
