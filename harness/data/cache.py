"""Decode once (``data.cache``): every frame of a split, decoded once, kept as uint8 for all later epochs.

::

    data: {format: synth, root: work/data/synth-laptop, cache: file}   # or: memory; default: off

Why: on a small set the decoder, not the model, sets the pace of every epoch
(the laptop profile decodes each 32 px WebM clip 5 epochs x 2 seeds x 10 rows
times). With the cache, a clip is decoded once and each epoch indexes an array.

* ``file``: ``<annotations folder>/.harness-cache/<split>-<key>.u8`` (the frames, raw
  uint8) and ``.json`` (where each clip's frames start, their count and size),
  memory-mapped by every trial and DataLoader worker that reads the split: the
  first trial decodes, the others wait on a lock and then map it.
* ``memory``: the same array in this process, kept for later trials that run
  in it (Ray Tune reuses a worker process across trials of a study).

The key hashes the data fingerprint (annotation bytes and the decoded pixels
of a fixed sample, :mod:`harness.data.fingerprint`), each clip's path, size
and modification time, and the decoder's version: data that changes gets a
new file, and the stale one for that split is removed. Values are the
decoder's, bit for bit: a clip's frames are decoded in order once
(``get`` of all indices) and indexed later, which gives the pixels that decoding
the sampled indices gives (``tests/test_data_cache.py``).

What it gives up: the whole split must fit (a guard refuses more than
:data:`MAX_BYTES`); a clip that is unreadable when the cache is built stays
unreadable (with its reason) until the data changes; a data folder deleted
mid-run is no longer noticed, since the cache holds what it needs.
"""
from __future__ import annotations

import fcntl
import hashlib
import json
import logging
import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..config import Data
from .formats import DataError, Entry
from .video import Clip, UnreadableError, open_entry

log = logging.getLogger(__name__)

CACHE_VERSION = 1  # bump when what is stored or how it is keyed changes
MAX_BYTES = 8 << 30  # decoded frames beyond this are not a "small set"
FOLDER = ".harness-cache"
_MEMORY: dict[str, "FrameCache"] = {}  # key -> cache, for data.cache: memory


@dataclass(frozen=True)
class Slot:
    """Where one clip's frames lie in the cache array: byte offset, frame count, frame height and width."""

    offset: int
    frames: int
    height: int
    width: int


class CachedClip:
    """A clip read from the cache, with the interface of a decoder (``num_frames``, ``get``)."""

    def __init__(self, frames: np.ndarray):
        self._frames = frames
        self.num_frames = len(frames)

    def get(self, indices: np.ndarray) -> np.ndarray:
        """uint8 ``(len(indices), H, W, 3)``, indices clamped as the decoders clamp them; a copy."""
        idx = np.clip(np.asarray(indices, dtype=np.int64), 0, self.num_frames - 1)
        return self._frames[idx]


class FrameCache:
    """A split's decoded frames: one flat uint8 array and, per clip path, its :class:`Slot` or why it failed."""

    def __init__(self, data: np.ndarray, slots: dict[str, Slot | str], path: Path | None = None):
        self._data, self.slots, self.path = data, slots, path

    def clip(self, entry: Entry) -> Clip:
        """The entry's frames; :class:`UnreadableError` (the reason at build time) if it did not decode."""
        slot = self.slots.get(str(entry.path))
        if slot is None:  # not in the cache (cannot happen for the entries it was built from): decode
            return open_entry(entry)
        if isinstance(slot, str):
            raise UnreadableError(slot)
        size = slot.frames * slot.height * slot.width * 3
        frames = self._data[slot.offset:slot.offset + size].reshape(slot.frames, slot.height, slot.width, 3)
        return CachedClip(frames)

    def __getstate__(self) -> dict:
        """A file cache travels to spawned workers as its path (each maps the file), not as its bytes."""
        state = dict(self.__dict__)
        if self.path is not None:
            state["_data"] = None
        return state

    def __setstate__(self, state: dict) -> None:
        self.__dict__.update(state)
        if self._data is None:
            self._data = np.memmap(self.path, dtype=np.uint8, mode="r")


def cache_key(data: Data, split: str, entries: list[Entry]) -> str:
    """Hex key: the split's fingerprint, every clip's path, size and mtime, the decoder's version."""
    from .fingerprint import _decoder, fingerprint

    h = hashlib.sha256(f"v{CACHE_VERSION}:{fingerprint(data, split)['fingerprint']}".encode())
    for decoder in sorted({_decoder(e) for e in entries[:1] + entries[-1:]}):
        h.update(decoder.encode())
    for e in entries:
        try:
            st = e.path.stat()
            h.update(f"{e.path}:{st.st_size}:{st.st_mtime_ns}\0".encode())
        except OSError:
            h.update(f"{e.path}:missing\0".encode())
    return h.hexdigest()[:16]


def _decode_all(entries: list[Entry], split: str, sink: Callable[[np.ndarray], object]) -> dict[str, Slot | str]:
    """Decode every frame of every entry in order, handing the bytes to ``sink``; the slots."""
    slots: dict[str, Slot | str] = {}
    offset = 0
    for e in entries:
        try:
            clip = open_entry(e)
            frames = np.ascontiguousarray(clip.get(np.arange(clip.num_frames)), dtype=np.uint8)
        except (UnreadableError, ValueError, OSError, RuntimeError) as err:
            slots[str(e.path)] = str(err) if isinstance(err, UnreadableError) else f"{e.path}: {err}"
            continue
        if not offset and frames.nbytes * len(entries) > MAX_BYTES:  # judged on the first clip that decodes
            raise DataError(f"data.cache: the {split} split would take ~{frames.nbytes * len(entries) / 2**30:.0f} GiB "
                            f"decoded (more than {MAX_BYTES >> 30} GiB); the cache is for small sets: "
                            "set data.cache: off for this dataset")
        sink(frames)
        slots[str(e.path)] = Slot(offset, *frames.shape[:3])
        offset += frames.nbytes
    return slots


def _to_json(slots: dict[str, Slot | str]) -> str:
    return json.dumps({k: v if isinstance(v, str) else [v.offset, v.frames, v.height, v.width]
                       for k, v in slots.items()})


def _from_json(text: str) -> dict[str, Slot | str]:
    return {k: v if isinstance(v, str) else Slot(*v) for k, v in json.loads(text).items()}


def _memory_cache(entries: list[Entry], split: str, key: str) -> FrameCache:
    if key not in _MEMORY:
        parts: list[np.ndarray] = []
        slots = _decode_all(entries, split, lambda f: parts.append(f.reshape(-1)))
        _MEMORY[key] = FrameCache(np.concatenate(parts) if parts else np.zeros(0, np.uint8), slots)
        log.info("decode cache: %s split decoded once into memory (%.1f MB)", split, _MEMORY[key]._data.nbytes / 1e6)
    return _MEMORY[key]


def _file_cache(entries: list[Entry], split: str, key: str, folder: Path) -> FrameCache:
    """Map ``<folder>/<split>-<key>.u8``; build it first (under a lock, written aside and renamed) if absent."""
    frames, index = folder / f"{split}-{key}.u8", folder / f"{split}-{key}.json"
    try:
        folder.mkdir(exist_ok=True)
        with open(folder / f"{split}.lock", "w") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)  # released when the file closes, also if this process dies
            if not index.is_file():  # the index is renamed last: present means complete
                _build_file(entries, split, frames, index)
                for stale in folder.glob(f"{split}-*"):
                    if stale not in (frames, index):
                        stale.unlink(missing_ok=True)
    except OSError as e:
        raise DataError(f"data.cache: file: cannot write the decode cache in {folder} ({e.strerror or e}); "
                        "make the folder writable, or set data.cache: memory") from e
    slots = _from_json(index.read_text())
    data = np.memmap(frames, dtype=np.uint8, mode="r") if frames.stat().st_size else np.zeros(0, np.uint8)
    return FrameCache(data, slots, frames if frames.stat().st_size else None)


def _build_file(entries: list[Entry], split: str, frames: Path, index: Path) -> None:
    tmp = frames.with_name(f".{frames.name}.{os.getpid()}")
    with open(tmp, "wb") as f:
        slots = _decode_all(entries, split, lambda a: f.write(a.data))
    os.replace(tmp, frames)
    tmp_index = index.with_name(f".{index.name}.{os.getpid()}")
    tmp_index.write_text(_to_json(slots))
    os.replace(tmp_index, index)
    log.info("decode cache: %s split decoded once into %s (%.1f MB)", split, frames, frames.stat().st_size / 1e6)


def open_cache(data: Data, split: str, entries: list[Entry], annotations: Path) -> FrameCache | None:
    """The split's :class:`FrameCache` as ``data.cache`` asks (None for ``off``), built on first use.

    The file goes next to the data: in the annotations folder (the synth set's own folder for ``synth``).
    """
    if data.cache == "off":
        return None
    key = cache_key(data, split, entries)
    if data.cache == "memory":
        return _memory_cache(entries, split, key)
    return _file_cache(entries, split, key, annotations / FOLDER)
