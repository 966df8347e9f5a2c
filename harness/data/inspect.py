"""``harness data inspect``: open every entry of a split and say what is readable, before a run finds out.

::

    harness data inspect --format sthv2 --root data/sthv2/videos --annotations data/sthv2 --split val
    harness data inspect --format sthv2 --root work/synth/videos --annotations work/synth --json

Each entry is opened the way the loader opens it (decord for videos, Pillow
for frame folders, the same truncation rule), and its first, middle and last
frames are decoded. Exit codes: 0 when the unreadable fraction is within
``--max-bad-fraction``, 1 above it, 2 for unusable arguments or annotation
files. Entries are probed on a few threads (decord, PyAV and Pillow release the
GIL while decoding); there is no per-file timeout, so a file that hangs
decord (#373) hangs the inspection too.
"""
from __future__ import annotations

import logging
import os
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from .formats import Entry, read_split
from .video import UnreadableError, probe

log = logging.getLogger(__name__)


@dataclass
class Report:
    format: str
    split: str
    entries: int
    classes: int
    frames: list[int] = field(default_factory=list)
    unreadable: list[tuple[str, str]] = field(default_factory=list)  # (path, reason)

    @property
    def readable(self) -> int:
        return self.entries - len(self.unreadable)

    @property
    def bad_fraction(self) -> float:
        return len(self.unreadable) / self.entries if self.entries else 0.0

    def as_dict(self, max_bad_fraction: float) -> dict[str, Any]:
        stats = {k: int(f(self.frames)) for k, f in (("min", np.min), ("median", np.median), ("max", np.max))} \
            if self.frames else None
        return {
            "format": self.format, "split": self.split, "entries": self.entries, "classes": self.classes,
            "readable": self.readable, "unreadable": [p for p, _ in self.unreadable],
            "reasons": [r for _, r in self.unreadable], "frames": stats,
            "bad_fraction": self.bad_fraction, "max_bad_fraction": max_bad_fraction,
            "ok": self.bad_fraction <= max_bad_fraction,
        }


def _probe(entry: Entry) -> int | str:
    """The entry's frame count, or why it cannot be read."""
    try:
        return probe(entry)
    except UnreadableError as e:
        return str(e)
    except Exception as e:  # a decoder bug on one file must not end the inspection  # noqa: BLE001
        return f"{entry.path}: {type(e).__name__}: {e}"


def inspect_split(fmt: str, root: str | Path, annotations: str | Path, split: str,
                  threads: int | None = None) -> Report:
    """Read a split's annotations and probe every entry; raises AnnotationError for unusable annotations."""
    result = read_split(fmt, root, annotations, split)
    report = Report(fmt, split, len(result.entries), len(result.classes))
    with ThreadPoolExecutor(threads or min(8, os.cpu_count() or 1)) as pool:
        for entry, probed in zip(result.entries, pool.map(_probe, result.entries)):
            if isinstance(probed, int):
                report.frames.append(probed)
            else:
                report.unreadable.append((str(entry.path), probed))
                log.warning("unreadable: %s", probed)
    return report
