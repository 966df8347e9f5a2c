"""Small datasets in the official layouts at the real sizes, for ``harness bench data``.

The loader's speed on the synthetic 32 px set says nothing about a real run:
decoding a 426 x 240 VP9 frame costs ~100x a 32 px one. These writers make a
few clips of each format as the owners ship them, at their sizes:

* ``sthv1``: Something-Something v1, JPEG frame folders ``<root>/<id>/%05d.jpg``, 176 x 100, 40 frames,
  ``something-something-v1-labels.csv`` / ``-train.csv`` / ``-validation.csv``;
* ``sthv2``: Something-Something v2, VP9 WebM ``<root>/<id>.webm``, 426 x 240, 48 frames at 12 fps,
  ``labels.json`` / ``train.json`` / ``validation.json``;
* ``k400``: Kinetics-400, H.264 MP4 ``<root>/<label>/<youtube_id>_<start:06d>_<end:06d>.mp4``, 340 x 256,
  250 frames at 25 fps (10 s, x264's default 250-frame keyframe interval), ``train.csv`` / ``validate.csv``.

The content is a textured background with moving textured objects and a
little sensor noise, so the codecs spend about the bits they spend on real
footage (a flat frame would make decoding unrealistically cheap). Written in a
fresh Python process: once decord is loaded, PyAV cannot open its VP9 encoder
(see ``video.py``).
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np

CLASSES = ("Pushing something from left to right", "Pushing something from right to left")


@dataclass(frozen=True)
class Spec:
    """One format's real size: frame side, frame count, frame rate, container."""

    width: int
    height: int
    frames: int
    fps: int
    what: str


SPECS = {
    "sthv1": Spec(176, 100, 40, 12, "Something-Something v1 JPEG frame folders"),
    "sthv2": Spec(426, 240, 48, 12, "Something-Something v2 VP9 WebM"),
    "k400": Spec(340, 256, 250, 25, "Kinetics-400 H.264 MP4"),
}


def render(spec: Spec, seed: int) -> np.ndarray:
    """``(frames, height, width, 3)`` uint8: a gradient with texture, two moving objects, sensor noise."""
    rng = np.random.default_rng(seed)
    h, w = spec.height, spec.width
    y, x = np.mgrid[0:h, 0:w].astype(np.float32)
    base = np.stack([x / w, y / h, (x + y) / (w + h)], -1) * rng.uniform(120, 220, 3) + rng.uniform(0, 30, 3)
    base += 12 * np.sin(x[..., None] / rng.uniform(3, 9)) * np.cos(y[..., None] / rng.uniform(3, 9))
    video = np.empty((spec.frames, h, w, 3), np.uint8)
    boxes = [(rng.uniform(0, w), rng.uniform(0, h), rng.uniform(-4, 4), rng.uniform(-3, 3),
              int(rng.uniform(0.1, 0.3) * h), rng.uniform(0, 255, 3)) for _ in range(2)]
    for t in range(spec.frames):
        f = base.copy()
        for cx, cy, vx, vy, side, colour in boxes:
            px, py = int(cx + vx * t) % w, int(cy + vy * t) % h
            patch = f[py:py + side, px:px + 2 * side]
            patch[:] = colour + 20 * np.sin(np.arange(patch.shape[1]) / 2.0)[None, :, None]
        f += rng.normal(0, 6, f.shape)
        video[t] = np.clip(f, 0, 255).astype(np.uint8)
    return video


def _write_video(path: Path, video: np.ndarray, spec: Spec) -> None:
    """VP9 WebM (sthv2) or H.264 MP4 (k400) with the encoders' usual settings, not the fastest ones."""
    import av

    path.parent.mkdir(parents=True, exist_ok=True)
    webm = path.suffix == ".webm"
    with av.open(str(path), "w", format="webm" if webm else "mp4", options={"fflags": "+bitexact"}) as c:
        s = c.add_stream("libvpx-vp9" if webm else "libx264", rate=spec.fps)
        s.width, s.height, s.pix_fmt = spec.width, spec.height, "yuv420p"
        s.options = ({"deadline": "good", "cpu-used": "4", "crf": "31", "b": "0", "threads": "1"} if webm
                     else {"preset": "veryfast", "crf": "23", "threads": "1"})
        for frame in video:
            for packet in s.encode(av.VideoFrame.from_ndarray(frame, format="rgb24")):
                c.mux(packet)
        for packet in s.encode():
            c.mux(packet)


def _write_frames(folder: Path, video: np.ndarray) -> None:
    from PIL import Image

    folder.mkdir(parents=True, exist_ok=True)
    for i, frame in enumerate(video):
        Image.fromarray(frame).save(folder / f"{i + 1:05d}.jpg", quality=90)


def _annotate(fmt: str, root: Path, ids: list[str]) -> None:
    """The annotation files of the official layout; every clip in both splits."""
    labels = [CLASSES[i % 2] for i in range(len(ids))]
    if fmt == "sthv1":
        (root / "something-something-v1-labels.csv").write_text("\n".join(CLASSES) + "\n")
        rows = "".join(f"{v};{c}\n" for v, c in zip(ids, labels))
        for name in ("train", "validation"):
            (root / f"something-something-v1-{name}.csv").write_text(rows)
    elif fmt == "sthv2":
        (root / "labels.json").write_text(json.dumps({c: str(i) for i, c in enumerate(CLASSES)}))
        items = [{"id": v, "label": c.lower(), "template": c.replace("something", "[something]"),
                  "placeholders": ["something"]} for v, c in zip(ids, labels)]
        for name in ("train", "validation"):
            (root / f"{name}.json").write_text(json.dumps(items))
    else:
        rows = "".join(f"{c},{v[:11]},0,10,train\n" for v, c in zip(ids, labels))
        for name in ("train", "validate"):
            (root / f"{name}.csv").write_text("label,youtube_id,time_start,time_end,split\n" + rows)


def clip_path(fmt: str, root: Path, clip_id: str, label: str) -> Path:
    if fmt == "sthv1":
        return root / clip_id
    if fmt == "sthv2":
        return root / f"{clip_id}.webm"
    return root / label.replace(" ", "_") / f"{clip_id[:11]}_000000_000010.mp4"


def write_set(fmt: str, root: str | Path, clips: int = 8, seed: int = 0) -> Path:
    """Write ``clips`` clips of ``fmt`` and its annotations into ``root`` (in this process); returns ``root``."""
    spec = SPECS[fmt]
    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)
    ids = [f"{100000 + i}" if fmt != "k400" else f"yt{i:09d}" for i in range(clips)]
    for i, clip_id in enumerate(ids):
        video = render(spec, seed * 1000 + i)
        path = clip_path(fmt, root, clip_id, CLASSES[i % 2])
        if fmt == "sthv1":
            _write_frames(path, video)
        else:
            _write_video(path, video, spec)
    _annotate(fmt, root, ids)
    (root / ".realsize.json").write_text(json.dumps({"format": fmt, "clips": clips, "seed": seed}))
    return root


def ensure_set(fmt: str, root: str | Path, clips: int = 8, seed: int = 0) -> Path:
    """The set at ``root``, written in a fresh process unless a complete one with these parameters is there."""
    root = Path(root)
    marker = root / ".realsize.json"
    if marker.is_file() and json.loads(marker.read_text()) == {"format": fmt, "clips": clips, "seed": seed}:
        return root
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(
        [str(Path(__file__).resolve().parents[2])] + [p for p in [os.environ.get("PYTHONPATH")] if p]))
    code = f"from harness.data.realsize import write_set; write_set({fmt!r}, {str(root)!r}, {clips}, {seed})"
    result = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True)
    if result.returncode:
        raise RuntimeError(f"writing the {fmt} bench set in {root} failed:\n{result.stderr[-2000:]}")
    return root
