"""Shared fixtures. Data fixtures (``data_*``) write tiny media files with PyAV and Pillow.

PyAV is imported before anything can import decord: once decord's FFmpeg is
loaded, PyAV cannot open its VP8/VP9 encoders (see harness/data/video.py).
"""
from __future__ import annotations

import av  # noqa: F401 - must precede decord, see the docstring
import numpy as np
import pytest


def frame_level(i: int) -> int:
    """Grey level that encodes frame index ``i`` (survives lossy coding: levels are 9 apart; up to 24 frames)."""
    return 16 + 9 * i


def indexed_frames(n: int, size: int = 32) -> np.ndarray:
    """``n`` frames whose grey level tells their index, with a small white square so codecs see content."""
    frames = np.empty((n, size, size, 3), np.uint8)
    for i in range(n):
        frames[i] = frame_level(i)
    frames[:, :4, :4] = 255
    return frames


def decode_index(level: float) -> int:
    return int(round((level - 16) / 9))


def write_video(path, frames: np.ndarray, fps: int = 12) -> None:
    """``.webm`` -> VP9, anything else -> H.264 in MP4."""
    path.parent.mkdir(parents=True, exist_ok=True)
    webm = str(path).endswith(".webm")
    with av.open(str(path), "w", format="webm" if webm else "mp4") as c:
        s = c.add_stream("libvpx-vp9" if webm else "libx264", rate=fps)
        s.width, s.height, s.pix_fmt = frames.shape[2], frames.shape[1], "yuv420p"
        s.options = {"deadline": "realtime", "cpu-used": "8", "threads": "1"} if webm else {"preset": "ultrafast"}
        for f in frames:
            for p in s.encode(av.VideoFrame.from_ndarray(f, format="rgb24")):
                c.mux(p)
        for p in s.encode():
            c.mux(p)


def write_frame_folder(folder, frames: np.ndarray, template: str = "{:05d}.jpg") -> None:
    from PIL import Image

    folder.mkdir(parents=True, exist_ok=True)
    for i, f in enumerate(frames):
        Image.fromarray(f).save(folder / template.format(i + 1), quality=95)


def truncate(path, fraction: float = 0.6) -> None:
    """Cut a file: a 24-frame 32 px webm cut to 0.6 opens in decord with 9 frames (to 1/3, it fails to open)."""
    data = path.read_bytes()
    path.write_bytes(data[: int(len(data) * fraction)])


class DataMedia:
    """The helpers above, handed to tests as the ``data_media`` fixture."""

    frame_level = staticmethod(frame_level)
    indexed_frames = staticmethod(indexed_frames)
    decode_index = staticmethod(decode_index)
    write_video = staticmethod(write_video)
    write_frame_folder = staticmethod(write_frame_folder)
    truncate = staticmethod(truncate)


@pytest.fixture(scope="session")
def data_media() -> DataMedia:
    return DataMedia()


SYNTH_ARGS = {"videos": 40, "frames": 16, "size": 32, "seed": 3}


@pytest.fixture(scope="session")
def data_synth_dir(tmp_path_factory):
    """A small synth set written by ``harness data synth`` (40 clips of 16 x 32 x 32), shared by the data tests."""
    from harness.cli import main

    out = tmp_path_factory.mktemp("synth") / "set"
    argv = ["data", "synth", str(out)] + [x for k, v in SYNTH_ARGS.items() for x in (f"--{k}", str(v))]
    assert main(argv) == 0
    return out
