"""Named evaluation protocols: ``8f-112-1x1`` says how a top-1 was measured, in one token.

A test number means little without its protocol: frames per clip, input side,
temporal clips x spatial crops, and how the clips are sampled. 1-view and
30-view top-1 can differ by 7 points (gluon-cv #1606), and on
Something-Something "10 clips" taken at segment mid-points are the same clip
ten times (SlowFast #306, TimeSformer #103). So the protocol is a named value,
stored with each result and printed in table headers, never implied::

    >>> Protocol.parse("16f-224-2x3")
    Protocol(frames=16, size=224, clips=2, crops=3, sampling='tsn-middle')
    >>> Protocol(8, 112, 1, 1).name
    '8f-112-1x1'
    >>> Protocol.from_data(data).name      # what a Data config evaluates with

The name is ``{frames}f-{size}-{clips}x{crops}``, plus ``-{sampling}`` only when
the sampling is not the default ``tsn-middle`` (``16f-224-10x3-dense``).
What it gives up: the resize before cropping (``scale_size``) and the crop
positions are not in the name; they follow from ``size`` by the harness's
fixed rules (``harness.data.transforms``).
"""
from __future__ import annotations

import difflib
import re
from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # config imports pydantic and yaml; a protocol name should parse without them
    from .config import Data

DEFAULT_SAMPLING = "tsn-middle"
SAMPLINGS = {
    "tsn-middle": "T segments, middle frame of each; clip k of n shifts every pick by k/n of a segment "
                  "(harness.data.sampling, TSM's val / twice_sample rule); the one the harness runs",
    "dense": "T consecutive frames at a fixed stride around evenly spaced clip centres (I3D / SlowFast); "
             "names papers' protocols, the harness's loader does not sample this way",
}
CROPS = (1, 3, 5, 10)  # harness.data.transforms.view_boxes: centre; 3 along the long side; 5 corners; 10 with mirrors
_NAME = re.compile(r"^(\d+)f-(\d+)-(\d+)x(\d+)(?:-([a-z][a-z0-9-]*))?$")


@dataclass(frozen=True)
class Protocol:
    """How a model was tested: ``frames`` per clip at ``size`` px, ``clips`` x ``crops`` views, ``sampling``.

    Args:
        frames: T, frames (segments) per clip.
        size: side of the square crop fed to the model.
        clips: temporal clips per video; logits are averaged over all views.
        crops: spatial crops per clip, one of :data:`CROPS`.
        sampling: one of :data:`SAMPLINGS`.
    """

    frames: int
    size: int
    clips: int = 1
    crops: int = 1
    sampling: str = DEFAULT_SAMPLING

    def __post_init__(self) -> None:
        for key in ("frames", "size", "clips", "crops"):
            value = getattr(self, key)
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise ValueError(f"protocol {key} must be a positive integer, got {value!r}")
        if self.crops not in CROPS:
            raise ValueError(f"protocol crops must be one of {CROPS}, got {self.crops}")
        if self.sampling not in SAMPLINGS:
            close = difflib.get_close_matches(self.sampling, SAMPLINGS, n=1)
            hint = f" (did you mean {close[0]!r}?)" if close else ""
            raise ValueError(f"unknown protocol sampling {self.sampling!r}{hint}; known: {', '.join(SAMPLINGS)}")

    @property
    def name(self) -> str:
        """``8f-112-1x1``; the sampling is appended only when it is not ``tsn-middle``."""
        base = f"{self.frames}f-{self.size}-{self.clips}x{self.crops}"
        return base if self.sampling == DEFAULT_SAMPLING else f"{base}-{self.sampling}"

    @property
    def views(self) -> int:
        """Forward passes per video: clips x crops (the cost a 10x3 protocol multiplies)."""
        return self.clips * self.crops

    @property
    def min_frames(self) -> int:
        """Frames a video needs for ``clips`` clips without a shared frame (``tsn-middle``); see ``check_clips``."""
        return self.clips * self.frames

    def __str__(self) -> str:
        return self.name

    @classmethod
    def parse(cls, name: str) -> "Protocol":
        """The protocol a name such as ``16f-224-2x3`` or ``16f-224-10x3-dense`` stands for."""
        match = _NAME.match(name.strip()) if isinstance(name, str) else None
        if match is None:
            raise ValueError(f"protocol name {name!r} is not FRAMESf-SIZE-CLIPSxCROPS[-SAMPLING], "
                             "e.g. '8f-112-1x1' or '16f-224-10x3-dense'")
        frames, size, clips, crops, sampling = match.groups()
        return cls(int(frames), int(size), int(clips), int(crops), sampling or DEFAULT_SAMPLING)

    @classmethod
    def from_data(cls, data: "Data") -> "Protocol":
        """The protocol a ``data`` section evaluates with (the harness samples ``tsn-middle`` only)."""
        return cls(data.frames, data.size, data.test_clips, data.test_crops, DEFAULT_SAMPLING)
