"""Decode the sampled frames of one entry: decord for videos, Pillow for frame folders.

Design against decord's known failure modes (user-pains.md, tools-notes.md):

* one short-lived ``VideoReader`` per sample (long-lived readers leak memory);
  ``num_threads=1`` because DataLoader workers are the parallelism;
* only the sampled indices are decoded (``get_batch``), never the whole video;
* indices are clamped to the frames decord indexed, which are the frames that
  decode (``get_batch`` past them can hang, decord #373);
* one container open per clip: a WebM / MKV states its segment's size in its
  first bytes and an MP4 / MOV the size of each top-level box, so
  :func:`declared_size` (a stat and a few small reads) tells a complete file
  from a cut one without opening it. Only a file cut short, or one whose
  container does not say (a live-recorded WebM, an AVI), is opened a second
  time, with PyAV, for the frame count its header promises; PyAV's open
  probes the stream, which cost ~8% of a 426 x 240 WebM clip's decode.
* truncation: a truncated webm opens and reports fewer frames than it should.
  The promise comes from the annotation (list files) or from the container
  header; a video holding fewer than :data:`MIN_FRAME_FRACTION` of its
  promise is unreadable. A truncated mp4 fails to open at all when its index
  is at the end.
* JPEG frames are decoded by libjpeg-turbo through simplejpeg, straight into
  the clip's array: the same library and settings (accurate DCT, fancy
  upsampling) as Pillow, so the same pixels bit for bit
  (``tests/test_data_decode.py``), without Pillow's per-file Python header
  parsing and copies (~1.7x faster on 176 x 100 frames). Anything else (PNG,
  CMYK JPEG, a file libjpeg warns about) goes through Pillow as before.

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
from typing import BinaryIO, Protocol

import av  # noqa: F401 - load PyAV's FFmpeg before decord's: the other order breaks PyAV's VP8/VP9 encoders
import numpy as np

from .formats import DataError, Entry

try:  # libjpeg-turbo without Pillow's per-file overhead; Pillow decodes the same pixels when it is absent
    import simplejpeg as _simplejpeg
except ImportError:  # pragma: no cover - a dependency; kept optional so a missing wheel only costs speed
    _simplejpeg = None

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


EBML_ID, SEGMENT_ID = 0x1A45DFA3, 0x18538067
MP4_TOP_BOXES = {b"ftyp", b"styp", b"moov", b"mdat", b"free", b"skip", b"wide", b"pdin", b"uuid", b"meta",
                 b"moof", b"mfra", b"sidx"}


def _vint(buf: bytes, pos: int, keep_marker: bool) -> tuple[int, int, bool]:
    """An EBML variable-length integer at ``pos``: (value, next position, all value bits set = unknown size)."""
    first = buf[pos]
    length = 8 - first.bit_length() + 1 if first else 9
    if length > 8 or pos + length > len(buf):
        raise ValueError("not an EBML integer")
    value = first if keep_marker else first & ((1 << (8 - length)) - 1)
    for b in buf[pos + 1:pos + length]:
        value = (value << 8) | b
    unknown = not keep_marker and value == (1 << (7 * length)) - 1
    return value, pos + length, unknown


def _ebml_size(head: bytes) -> int | None:
    """End of the Segment of a Matroska / WebM file, from its first bytes; None if its size is unknown."""
    el, pos, _ = _vint(head, 0, keep_marker=True)
    if el != EBML_ID:
        return None
    size, pos, _ = _vint(head, pos, keep_marker=False)
    el, pos, _ = _vint(head, pos + size, keep_marker=True)
    if el != SEGMENT_ID:
        return None
    size, pos, unknown = _vint(head, pos, keep_marker=False)
    return None if unknown else pos + size


def _mp4_size(f: BinaryIO, file_size: int) -> int | None:
    """End of the last top-level MP4 / MOV box (walking box headers), or None if this is not an MP4."""
    pos = 0
    while pos < file_size:
        f.seek(pos)
        head = f.read(16)
        if len(head) < 8 or head[4:8] not in MP4_TOP_BOXES:
            return None if pos == 0 else pos + 8  # a box header cut off, or no MP4 at all
        size = int.from_bytes(head[:4], "big")
        if size == 1:
            size = int.from_bytes(head[8:16], "big") if len(head) == 16 else 0
        if size == 0:  # "to the end of the file": nothing to compare with
            return None
        if size < 8:
            return None
        pos += size
    return pos


def declared_size(path: Path) -> int | None:
    """The bytes a video's own container structure says it has (WebM / MKV / MP4 / MOV), else None.

    A file shorter than this was cut (an interrupted download or copy); one at
    least this long is complete. None: the container does not say (an EBML
    segment of unknown size, AVI, anything unrecognised).
    """
    try:
        with open(path, "rb") as f:
            head = f.read(64)
            file_size = os.fstat(f.fileno()).st_size
            if head[:4] == EBML_ID.to_bytes(4, "big"):
                return _ebml_size(head)
            return _mp4_size(f, file_size)
    except (ValueError, IndexError):
        return None
    except OSError as e:
        raise UnreadableError(f"{path}: cannot read ({e})") from e


def check_count(path: Path, decoded: int, promised: int | None) -> None:
    """Raise if fewer frames decode than the promise allows (truncated file)."""
    if decoded < 1:
        raise UnreadableError(f"{path}: no decodable frames")
    if promised and decoded < MIN_FRAME_FRACTION * promised:
        raise UnreadableError(f"{path}: truncated, {decoded} frames decode of {promised} promised")


class Clip(Protocol):
    """What the loader reads frames through: a decoder (video, frame folder) or the decode cache."""

    @property
    def num_frames(self) -> int: ...

    def get(self, indices: np.ndarray) -> np.ndarray:
        """uint8 ``(len(indices), H, W, 3)``, indices clamped to the frames that decode."""
        ...


class VideoClip:
    """An opened video: its decodable frame count, and a method to decode chosen indices."""

    def __init__(self, path: Path, promised: int | None = None):
        import decord

        if not path.is_file():
            raise UnreadableError(f"{path}: missing")
        if not promised:
            declared = declared_size(path)
            if declared is None or path.stat().st_size < declared:  # cut, or the container does not say
                promised = container_frames(path)
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
        """uint8 ``(len(indices), H, W, 3)``; each distinct frame read once (see :func:`read_frame`)."""
        idx = np.clip(np.asarray(indices, dtype=np.int64), 0, self.num_frames - 1).tolist()
        if not idx:
            raise ValueError(f"{self.path}: no frame indices to read")
        first_frame = read_frame(self.path / self.template.format(idx[0] + 1))  # its size sizes the output
        out = np.empty((len(idx), *first_frame.shape), np.uint8)
        out[0] = first_frame
        first = {idx[0]: 0}  # frame index -> the row of ``out`` that holds it
        for row, i in enumerate(idx[1:], start=1):
            if i in first:
                out[row] = out[first[i]]
                continue
            dest = out[row]
            frame = read_frame(self.path / self.template.format(i + 1), dest)
            if frame.ctypes.data != dest.ctypes.data:  # decoded elsewhere (Pillow, or another size)
                if frame.shape != out.shape[1:]:
                    raise UnreadableError(f"{self.path}: frames differ in size {sorted({frame.shape, out.shape[1:]})}")
                out[row] = frame
            first[i] = row
        return out


def read_frame(path: Path, into: np.ndarray | None = None) -> np.ndarray:
    """One image file as uint8 ``(H, W, 3)``: libjpeg-turbo via simplejpeg for JPEG, Pillow otherwise.

    ``into``: an array to decode into when its shape fits (the clip's row, so
    no copy); the result is ``into`` then, else a new array. Pillow takes
    every file simplejpeg cannot or will not decode exactly as Pillow would
    (not a JPEG, CMYK, a warning such as a truncated scan), so what it raises
    is what the loader always raised.
    """
    try:
        data = path.read_bytes()
    except OSError as e:
        raise UnreadableError(f"{path}: cannot read image ({e})") from e
    if _simplejpeg is not None and data[:2] == b"\xff\xd8":
        try:
            h, w, space, _ = _simplejpeg.decode_jpeg_header(data)
            if space in ("YCbCr", "Gray"):
                fits = into is not None and into.shape == (h, w, 3)
                return _simplejpeg.decode_jpeg(data, colorspace="RGB", buffer=into if fits else None)
        except ValueError:  # libjpeg's warnings are errors here (strict): let Pillow decide, as before
            pass
    return _read_pillow(path, data)


def _read_pillow(path: Path, data: bytes) -> np.ndarray:
    import io

    from PIL import Image

    try:
        with Image.open(io.BytesIO(data)) as im:
            return np.asarray(im.convert("RGB"))
    except (OSError, ValueError) as e:
        raise UnreadableError(f"{path}: cannot read image ({e})") from e


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
