"""``harness data fingerprint``: one short hash that says two copies of a dataset are the same data.

::

    harness data fingerprint --format sthv2 --root data/sthv2/videos --annotations data/sthv2 --split val
    harness data fingerprint --format synth --root work/data/synth-table1 --json

Why: a differently decoded or re-encoded copy of a dataset moves top-1 by 2+
points (mmaction2 #705: a checkpoint re-tested at 55.6 against the claimed
57.9), and nothing in a results table shows it. The fingerprint hashes

* ``annotations``: the bytes of the annotation files the reader used, in the
  reader's order (not their names, paths or timestamps);
* ``pixels``: the decoded uint8 frames of a fixed sample of clips (every k-th
  entry by sorted id, :data:`FRAMES` segment-middle frames each), with each
  clip's id and decodable frame count; an unreadable sampled entry is hashed
  as unreadable and listed.

``fingerprint`` is the first 16 hex digits of the hash of both. The sample
depends on neither a seed nor the study's protocol (frames, clips), so the
same data gives the same fingerprint in every study. The decoder and its
version are reported beside it but not hashed: when two fingerprints differ,
``pixels`` and ``decoder`` tell whether the decoder is why.

What it gives up: a change to a clip outside the sample, or to a frame the
sample does not read, is not seen (``--sample`` larger sees more, at the cost
of decoding more). The synth format is read where it is (``videos/`` and the
annotation files under ``root``); it is not generated here.
"""
from __future__ import annotations

import hashlib
import logging
from pathlib import Path
from typing import Any

import numpy as np

from ..config import Data
from .formats import Entry, read_split
from .sampling import val_indices
from .video import UnreadableError, open_entry

log = logging.getLogger(__name__)

FRAMES = 8  # segment-middle frames decoded per sampled clip
SHORT = 16  # hex digits of the combined fingerprint


def _paths(data: Data) -> tuple[str, Path, Path]:
    """(reader format, media root, annotations folder); synth is the sthv2 layout under ``data.root``."""
    root = Path(data.root)
    ann = Path(data.annotations) if data.annotations else root
    if data.format == "synth":
        return "sthv2", root / "videos", ann
    return data.format, root, ann


def _hash_files(files: list[Path]) -> str:
    """sha256 of the files' bytes, each length-prefixed so that moving bytes between files changes it."""
    h = hashlib.sha256()
    for f in files:
        body = f.read_bytes()
        h.update(len(body).to_bytes(8, "little"))
        h.update(body)
    return h.hexdigest()


def _clip_id(entry: Entry, root: Path) -> str:
    """The entry's path under the root without its suffix: the same for a copy of the data elsewhere."""
    try:
        rel = entry.path.relative_to(root)
    except ValueError:
        rel = Path(entry.path.name)
    return rel.with_suffix("").as_posix() if not entry.frames else rel.as_posix()


def sample_entries(entries: list[Entry], root: Path, sample: int) -> list[Entry]:
    """Every k-th entry by sorted id (file name first, so flat and per-class layouts pick the same clips)."""
    if sample < 1:
        raise ValueError(f"sample must be >= 1, got {sample}")
    ordered = sorted(entries, key=lambda e: (Path(_clip_id(e, root)).name, _clip_id(e, root)))
    step = max(1, len(ordered) // sample)
    return ordered[::step][:sample]


def _decoder(entry: Entry) -> str:
    """The library (and version) that decodes this entry in the loader."""
    if entry.frames:
        import PIL

        from .video import _simplejpeg

        jpeg = f" (JPEG: simplejpeg {_simplejpeg.__version__}, the same pixels)" if _simplejpeg is not None else ""
        return f"Pillow {PIL.__version__}{jpeg}"
    import av
    import decord

    return f"decord {decord.__version__} (PyAV {av.__version__})"


def _hash_clip(h: hashlib._Hash, entry: Entry, root: Path) -> str | None:
    """Feed one clip's id, frame count and sampled frames to ``h``; returns the reason if it is unreadable."""
    h.update(_clip_id(entry, root).encode() + b"\0")
    try:
        clip = open_entry(entry)
        frames = clip.get(val_indices(clip.num_frames, FRAMES))
    except (UnreadableError, ValueError, OSError, RuntimeError) as e:
        h.update(b"unreadable\0")
        return str(e)
    frames = np.ascontiguousarray(frames, dtype=np.uint8)
    h.update(f"{clip.num_frames}:{'x'.join(map(str, frames.shape))}\0".encode())
    h.update(frames.tobytes())
    return None


def fingerprint(data: Data, split: str = "val", sample: int = 16) -> dict[str, Any]:
    """Fingerprint of one split of ``data``: annotation bytes and the decoded pixels of a fixed sample.

    Returns ``{"fingerprint", "annotations", "pixels", "decoder", "clips", ...}``:
    ``clips`` is the number of sampled clips, ``entries`` the split's size,
    ``unreadable`` the sampled entries that did not decode (path: reason).
    Raises :class:`~harness.data.formats.AnnotationError` for unusable annotations.
    """
    fmt, root, ann = _paths(data)
    result = read_split(fmt, root, ann, split)
    chosen = sample_entries(result.entries, root, sample)
    pixels = hashlib.sha256()
    unreadable, decoders = [], set()
    for entry in chosen:
        reason = _hash_clip(pixels, entry, root)
        if reason is None:
            decoders.add(_decoder(entry))
        else:
            unreadable.append(reason)
            log.warning("fingerprint: sampled entry unreadable, hashed as such: %s", reason)
    annotations = _hash_files(result.files)
    combined = hashlib.sha256(f"{annotations}:{pixels.hexdigest()}".encode()).hexdigest()[:SHORT]
    return {"fingerprint": combined, "annotations": annotations, "pixels": pixels.hexdigest(),
            "decoder": ", ".join(sorted(decoders)) or "none", "clips": len(chosen),
            "format": data.format, "split": split, "entries": len(result.entries),
            "files": [f.name for f in result.files], "unreadable": unreadable}
