"""A synthetic, time-reversal-paired video set for the laptop profile, in the Something-Something v2 layout.

::

    harness data synth work/synth --videos 2000 --frames 16 --size 64 --seed 0
    harness data synth work/synth-shift --train-size 0.19 0.25 --train-speed 0.031 0.044   # scale shift

writes ``labels.json``, ``train.json``, ``validation.json`` and
``videos/<id>.webm`` (VP9 4:4:4, 12 fps, ~6 KB a clip at 16 x 64 x 64), read back by the sthv2 reader.

Why it is built this way: the paper's claim is about temporal modelling, so
every class has a twin that is the same clip played backwards (left->right /
right->left, falling / rising, approaching / receding, rotating and circling
clockwise / counter-clockwise). The twin is rendered by reversing the frames
of a forward trajectory, so a model that ignores frame order (TSN) sees the
same bag of frames for both and cannot beat 50% within a pair. Every motion
is stationary: positions live on a torus (an object leaving one side enters
the other), angles and orbit phases are uniform, and approaching objects come
as a stream that fades in small and fades out large, so the first and last
frames of a clip and of its reversed twin follow the same distribution and no
single frame, not even the first, tells the direction. Shapes, colours,
textures, backgrounds, static distractors, object size and speed vary per
clip; each annotation entry records its ``size`` (object side / frame side)
and ``speed`` (displacement per frame / frame side) for action-scale probes.

Clip ``i`` has label ``i % 10``; clips ``2k`` and ``2k + 1`` of each round
of ten share their random draws (``default_rng([seed, i // 10, k])``), so the
set holds every forward clip together with its exact reversal. Generation is
deterministic for a seed, down to the bytes of the files (the muxer runs
bit-exact), and is cached by :func:`ensure_synth`: the set is written to a
temporary folder and renamed into place under a file lock, with a marker file
holding the parameters. 2,000 clips of 16 x 64 x 64 take ~15-40 s on this
2-core machine (two writer processes).

What it gives up: the torus wrap and the fading stream are not natural
scenes, rotation of a small object is subtle at 32 px, and every appearance
occurs in both directions (so a split holds near-copies across a pair).
"""
from __future__ import annotations

import fcntl
import json
import logging
import math
import os
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

# The full ranges: object side and displacement per frame, as fractions of the frame side (the schema's defaults).
from ..config import SIZE_RANGE, SPEED_RANGE, Data, Synth

log = logging.getLogger(__name__)

SYNTH_VERSION = 2  # bump when the renderer changes, so cached sets are regenerated
MARKER = ".synth.json"
FPS = 12
MAX_TURN = 0.5  # rad per frame for rotation / orbit: beyond ~pi/2 the direction aliases
MAX_ZOOM_RATE = 0.125  # approach cycles per frame: at least 8 frames from small to large
ZOOM = 4.0  # size ratio between an approaching object's first and last visible frame

# (family, forward template, reversed template); class 2k is forward, 2k+1 its reversal
PAIRS = (
    ("translate", "Moving [something] from left to right", "Moving [something] from right to left"),
    ("fall", "[Something] falling down", "[Something] rising up"),
    ("approach", "[Something] approaching the camera", "[Something] moving away from the camera"),
    ("rotate", "Rotating [something] clockwise", "Rotating [something] counter-clockwise"),
    ("orbit", "[Something] circling clockwise", "[Something] circling counter-clockwise"),
)
TEMPLATES = [t for _, fwd, rev in PAIRS for t in (fwd, rev)]
CLASSES = [t.replace("[", "").replace("]", "") for t in TEMPLATES]

SHAPES = ("disc", "square", "diamond", "triangle", "ring", "cross")
TEXTURES = ("solid", "stripes", "checker", "rings")
COLOURS = {  # name -> RGB in [0, 1], for the placeholder text only
    "red": (0.85, 0.15, 0.15), "green": (0.2, 0.7, 0.25), "blue": (0.2, 0.3, 0.85), "yellow": (0.9, 0.85, 0.2),
    "orange": (0.95, 0.55, 0.1), "purple": (0.55, 0.25, 0.7), "cyan": (0.2, 0.8, 0.85), "pink": (0.95, 0.5, 0.7),
    "white": (0.95, 0.95, 0.95), "black": (0.08, 0.08, 0.08), "grey": (0.5, 0.5, 0.5), "brown": (0.5, 0.3, 0.15),
}


def mirror_pairs(classes: list[str]) -> dict[int, int]:
    """Classes a horizontal flip turns into each other (left <-> right, clockwise <-> counter-clockwise)."""
    def mirrored(name: str) -> str:
        swaps = (("left", "\0"), ("right", "left"), ("\0", "right"),
                 ("counter-clockwise", "\1"), ("clockwise", "counter-clockwise"), ("\1", "clockwise"))
        for a, b in swaps:
            name = name.replace(a, b)
        return name

    index = {c: i for i, c in enumerate(classes)}
    return {i: index[mirrored(c)] for i, c in enumerate(classes) if mirrored(c) != c and mirrored(c) in index}


# --------------------------------------------------------------------------- rendering


def _sdf(shape: str, u: np.ndarray, v: np.ndarray) -> np.ndarray:
    """Approximate signed distance (object units: half-side 1) to a shape centred at 0, negative inside."""
    if shape == "disc":
        return np.hypot(u, v) - 1.0
    if shape == "square":
        return np.maximum(np.abs(u), np.abs(v)) - 0.85
    if shape == "diamond":
        return (np.abs(u) + np.abs(v) - 1.0) / math.sqrt(2)
    if shape == "triangle":  # a vertex on +u
        return np.maximum.reduce([-u - 0.5, 0.5 * u + 0.866 * v - 0.5, 0.5 * u - 0.866 * v - 0.5])
    if shape == "ring":
        return np.abs(np.hypot(u, v) - 0.75) - 0.25
    if shape == "cross":
        return np.minimum(np.maximum(np.abs(u) - 1, np.abs(v) - 0.35), np.maximum(np.abs(u) - 0.35, np.abs(v) - 1))
    raise ValueError(f"unknown shape {shape!r}")


def _texture(kind: str, freq: float, u: np.ndarray, v: np.ndarray) -> np.ndarray:
    """0..1 mix between the object's two colours, in object coordinates (it turns and scales with it)."""
    if kind == "solid":
        return np.zeros_like(u)
    wave = {"stripes": lambda: np.sin(math.pi * freq * u),
            "checker": lambda: np.sin(math.pi * freq * u) * np.sin(math.pi * freq * v) * 2,
            "rings": lambda: np.sin(math.pi * freq * np.hypot(u, v))}[kind]()
    return np.clip(wave * 3 + 0.5, 0, 1)


@dataclass
class Look:
    """What an object looks like: shape, texture and three colours (body, texture, orientation marker)."""

    shape: str
    texture: str
    freq: float
    body: np.ndarray
    second: np.ndarray
    marker: np.ndarray
    name: str


# A value per frame, or one for every frame.
Track = np.ndarray | float
# One drawn object: centre x, centre y, angle, side (px), alpha (the approach family adds the copy's zoom phase,
# which orders the two copies per frame).
Layer = tuple[Track, ...]


def _draw(canvas: np.ndarray, look: Look, cx: Track, cy: Track, angle: Track, side: Track, alpha: Track) -> None:
    """Composite an object into ``canvas`` (T, S, S, 3) in place; per-frame centre, angle, side (px) and alpha."""
    t, s = canvas.shape[:2]
    grid = np.arange(s, dtype=np.float32) + 0.5
    col = lambda a: np.broadcast_to(np.asarray(a, np.float32), (t,))[:, None, None]  # noqa: E731
    dx = (grid[None, None, :] - col(cx) + s / 2) % s - s / 2  # nearest copy on the torus
    dy = (grid[None, :, None] - col(cy) + s / 2) % s - s / 2
    c, sn, half = np.cos(col(angle)), np.sin(col(angle)), col(side) / 2
    u, v = (c * dx + sn * dy) / half, (-sn * dx + c * dy) / half
    mask = np.clip(0.5 - _sdf(look.shape, u, v) * half, 0, 1) * col(alpha)
    tex = _texture(look.texture, look.freq, u, v)[..., None]
    dot = np.clip(0.5 - (np.hypot(u - 0.7, v) - 0.2) * half, 0, 1)[..., None]
    fg = (look.body * (1 - tex) + look.second * tex) * (1 - dot) + look.marker * dot
    m = mask[..., None]
    canvas *= 1 - m
    canvas += fg * m


def _colour(rng: np.random.Generator, avoid: np.ndarray | None = None) -> tuple[str, np.ndarray]:
    """A named colour jittered a little, far enough from ``avoid`` (the background mean) to be seen."""
    names = list(COLOURS)
    for _ in range(20):
        name = names[rng.integers(len(names))]
        rgb = np.clip(np.asarray(COLOURS[name]) + rng.normal(0, 0.05, 3), 0, 1).astype(np.float32)
        if avoid is None or np.abs(rgb - avoid).sum() > 0.6:
            return name, rgb
    return name, rgb


def _look(rng: np.random.Generator, background_mean: np.ndarray) -> Look:
    name, body = _colour(rng, background_mean)
    shape = SHAPES[rng.integers(len(SHAPES))]
    texture = TEXTURES[rng.integers(len(TEXTURES))]
    second = np.clip(body * rng.uniform(0.35, 0.7), 0, 1).astype(np.float32)
    marker = (1 - body).astype(np.float32)
    return Look(shape, texture, float(rng.choice([2.0, 3.0])), body, second, marker, f"{name} {shape}")


def _background(rng: np.random.Generator, s: int) -> np.ndarray:
    """A static (S, S, 3) background: solid, gradient, smooth noise, stripes or checker, plus 0-2 distractors."""
    kind = rng.integers(5)
    c1, c2 = rng.uniform(0.1, 0.9, 3).astype(np.float32), rng.uniform(0.1, 0.9, 3).astype(np.float32)
    y, x = (np.mgrid[0:s, 0:s].astype(np.float32) + 0.5) / s
    if kind == 0:
        mix = np.zeros((s, s), np.float32)
    elif kind == 1:
        a = rng.uniform(0, 2 * math.pi)
        c, s_ = np.cos(a), np.sin(a)
        mix = (c * x + s_ * y - min(0, c) - min(0, s_)) / (abs(c) + abs(s_))  # 0..1 along direction a
    elif kind == 2:
        k = int(rng.integers(3, 7))
        coarse = rng.uniform(0, 1, (k, k)).astype(np.float32)
        idx = np.clip(np.arange(s) * (k - 1) / (s - 1), 0, k - 1)
        lo = np.floor(idx).astype(int)
        hi, f = np.minimum(lo + 1, k - 1), idx - lo
        rows = coarse[lo] * (1 - f[:, None]) + coarse[hi] * f[:, None]
        mix = rows[:, lo] * (1 - f[None]) + rows[:, hi] * f[None]
    else:
        a, freq = rng.uniform(0, math.pi), rng.uniform(3, 8)
        w = np.sin(2 * math.pi * freq * (np.cos(a) * x + np.sin(a) * y))
        if kind == 4:
            w = w * np.sin(2 * math.pi * freq * (-np.sin(a) * x + np.cos(a) * y))
        mix = 0.5 + 0.25 * np.sign(w)  # low contrast, so the moving object stays the salient thing
    bg = (c1 * (1 - mix[..., None]) + c2 * mix[..., None])[None].astype(np.float32)
    for _ in range(int(rng.integers(0, 3))):
        look = _look(rng, bg.mean(axis=(0, 1, 2)))
        _draw(bg, look, rng.uniform(0, s), rng.uniform(0, s), rng.uniform(0, 2 * math.pi),
              rng.uniform(0.08, 0.2) * s, 1.0)
    return bg[0]


def _trajectory(family: str, rng: np.random.Generator, t: np.ndarray, s: int, size: float,
                speed: float) -> tuple[list[Layer], float]:
    """Forward motion of one family: a list of (cx, cy, angle, side, alpha) layers and the realised speed."""
    n = len(t)
    side, angle = size * s, rng.uniform(0, 2 * math.pi)
    x0, y0 = rng.uniform(0, s), rng.uniform(0, s)
    if family == "translate":  # left to right
        return [(x0 + speed * s * t, y0, angle, side, 1.0)], speed
    if family == "fall":  # accelerating down: v0 = 0.3 mean speed, ends at 1.7x
        vbar = speed * s
        accel = 1.4 * vbar / max(n - 1, 1)
        return [(x0, y0 + 0.3 * vbar * t + 0.5 * accel * t**2, angle, side, 1.0)], speed
    if family == "rotate":  # clockwise on screen (image y points down)
        turn = min(2 * speed / size, MAX_TURN)
        return [(x0, y0, angle + turn * t, side, 1.0)], turn * size / 2
    if family == "orbit":  # centre on a circle, clockwise
        radius = rng.uniform(0.15, 0.3)
        turn = min(speed / radius, MAX_TURN)
        phase = rng.uniform(0, 2 * math.pi) + turn * t
        return [(x0 + radius * s * np.cos(phase), y0 + radius * s * np.sin(phase), angle, side, 1.0)], turn * radius
    if family == "approach":  # a stream of objects growing from side/2 to side*2, fading in and out
        rate = min(speed / (size * math.log(ZOOM)), MAX_ZOOM_RATE)
        p0 = rng.uniform(0, 1)
        centres = rng.uniform(0, s, (2, int(rate * n) + 3, 2))
        layers: list[Layer] = []
        for k in range(2):
            p = p0 + k / 2 + rate * t
            cycle, frac = np.floor(p).astype(int), p - np.floor(p)
            cx, cy = centres[k, cycle, 0], centres[k, cycle, 1]
            alpha = np.clip(2.5 * np.sin(math.pi * frac), 0, 1)
            layers.append((cx, cy, angle + k, side * ZOOM ** (frac - 0.5), alpha, frac))
        return layers, rate * size * math.log(ZOOM)
    raise ValueError(f"unknown motion family {family!r}")


PLAIN_SHAPES = {"translate": "square", "fall": "disc", "approach": "diamond", "rotate": "triangle",
                "orbit": "cross"}


def _plain_trajectory(family: str, rng: np.random.Generator, t: np.ndarray, s: int, size: float,
                      speed: float) -> tuple[list[Layer], float]:
    """``style="plain"``: one object whose whole path stays inside the frame (no torus, no stream).

    Start and end positions then differ between a clip and its reversal, but a
    frame-order-blind model still sees the same bag of frames for both.
    """
    n = len(t)
    side, angle = size * s, rng.uniform(0, 2 * math.pi)
    span = max(s - 1.2 * side, 1.0)
    if family in ("translate", "fall"):  # left to right / downwards, at constant speed
        step = min(speed * s, span / max(n - 1, 1))
        start = 0.6 * side + rng.uniform(0, span - step * (n - 1))
        across = rng.uniform(0.6 * side, s - 0.6 * side)
        along = start + step * t
        cx, cy = (along, across) if family == "translate" else (across, along)
        return [(cx, cy, angle, side, 1.0)], step / s
    if family == "approach":  # grows from side/2 to 1.5 side in the middle of the frame
        grow = np.linspace(0.5, 1.5, n).astype(np.float32)
        return [(s / 2, s / 2, angle, side * grow, 1.0)], float(side / s / max(n - 1, 1))
    if family == "rotate":
        turn = min(max(2 * speed / size, 0.15), MAX_TURN)
        return [(s / 2, s / 2, angle + turn * t, side, 1.0)], turn * size / 2
    radius = 0.25 * s  # orbit, clockwise around the centre
    turn = min(max(speed * s / radius, 0.15), MAX_TURN)
    phase = rng.uniform(0, 2 * math.pi) + turn * t
    return [(s / 2 + radius * np.cos(phase), s / 2 + radius * np.sin(phase), angle, side, 1.0)], turn * radius / s


def _render_plain(family: str, rng: np.random.Generator, frames: int, size: int, obj_size: float,
                  obj_speed: float) -> tuple[np.ndarray, Look, float]:
    _, bg_rgb = _colour(rng)
    bg = np.broadcast_to(bg_rgb * 0.5, (size, size, 3)).astype(np.float32)
    name, body = _colour(rng, bg_rgb * 0.5)
    shape = PLAIN_SHAPES[family]
    look = Look(shape, "solid", 2.0, body, body, (1 - body).astype(np.float32), f"{name} {shape}")
    layers, speed = _plain_trajectory(family, rng, np.arange(frames, dtype=np.float32), size, obj_size, obj_speed)
    canvas = np.repeat(bg[None], frames, axis=0)
    for layer in layers:
        _draw(canvas, look, *layer)
    return canvas, look, speed


def render_clip(seed: int, index: int, *, frames: int = 16, size: int = 64,
                size_range: tuple[float, float] = SIZE_RANGE,
                speed_range: tuple[float, float] = SPEED_RANGE, style: str = "rich") -> tuple[np.ndarray, dict]:
    """Clip ``index`` of the set made with ``seed``: uint8 ``(frames, size, size, 3)`` and its annotation entry.

    The label is ``index % len(CLASSES)``; odd labels are the even label's
    clip with the frames reversed (same random draws).
    """
    label = index % len(CLASSES)
    family = PAIRS[label // 2][0]
    rng = np.random.default_rng([seed, index // len(CLASSES), label // 2])  # twins 2k, 2k+1 share draws
    obj_size, obj_speed = rng.uniform(*size_range), rng.uniform(*speed_range)
    if style == "plain":
        canvas, look, speed = _render_plain(family, rng, frames, size, obj_size, obj_speed)
        layers: list[Layer] = []
    else:
        bg = _background(rng, size)
        look = _look(rng, bg.mean(axis=(0, 1)))
        layers, speed = _trajectory(family, rng, np.arange(frames, dtype=np.float32), size, obj_size, obj_speed)
        canvas = np.repeat(bg[None], frames, axis=0)
    if family == "approach" and layers:  # the nearer (larger) copy is drawn last, per frame
        order = np.argsort(np.stack([layer[5] for layer in layers]), axis=0)
        for rank in range(len(layers)):
            for k, layer in enumerate(layers):
                on = (order[rank] == k).astype(np.float32)
                cx, cy, angle, side, alpha = layer[:5]
                _draw(canvas, look, cx, cy, angle, side, alpha * on)
    else:
        for layer in layers:
            _draw(canvas, look, *layer)
    video = (np.clip(canvas, 0, 1) * 255 + 0.5).astype(np.uint8)
    if label % 2:
        video = video[::-1].copy()
    template = TEMPLATES[label]
    text = template.replace("[something]", look.name).replace("[Something]", look.name.capitalize())
    entry = {"id": str(index), "label": text, "template": template, "placeholders": [look.name],
             "size": round(float(obj_size), 4), "speed": round(float(speed), 4)}
    return video, entry


# --------------------------------------------------------------------------- writing


def write_webm(path: Path, video: np.ndarray, fps: int = FPS) -> None:
    """VP9 in WebM (what Something-Something v2 ships and decord reads), realtime preset, one thread.

    4:4:4 chroma: at 64 px, 4:2:0 halves the colour resolution of objects a
    few pixels wide (decoded PSNR ~30 dB, worst clips ~19 dB, against ~38 / 32
    dB for 4:4:4, for ~5.7 KB instead of ~3.2 KB a clip).
    """
    import av

    t, h, w, _ = video.shape
    # bitexact: no random segment UID or date in the header, so a seed gives byte-identical files
    with av.open(str(path), "w", format="webm", options={"fflags": "+bitexact"}) as container:
        stream = container.add_stream("libvpx-vp9", rate=fps)
        stream.width, stream.height, stream.pix_fmt = w, h, "yuv444p"
        stream.options = {"deadline": "realtime", "cpu-used": "8", "threads": "1", "crf": "30", "b": "0"}
        for frame in video:
            for packet in stream.encode(av.VideoFrame.from_ndarray(frame, format="rgb24")):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)


def _write_range(videos: str, seed: int, start: int, stop: int, kwargs: dict) -> list[dict]:
    """Render and write clips ``start..stop-1`` into ``videos``."""
    entries = []
    for i in range(start, stop):
        video, entry = render_clip(seed, i, **kwargs)
        write_webm(Path(videos) / f"{entry['id']}.webm", video)
        entries.append(entry)
    return entries


def _worker_main() -> None:
    """Child process: a JSON job on stdin, the annotation entries as JSON on stdout."""
    job = json.loads(sys.stdin.read())
    json.dump(_write_range(**job), sys.stdout)


def _render_all(videos_dir: Path, seed: int, start: int, stop: int, processes: int, kwargs: dict) -> list[dict]:
    """Render clips ``start..stop-1``; encode in fresh Python processes, even for one.

    Fresh, because a process that has loaded decord cannot encode VP9 with
    PyAV (see ``video.py``); plain subprocesses rather than a
    ``multiprocessing`` pool, because spawn re-runs an unguarded ``__main__``
    script in every child and fork is unsafe under torch / Ray threads.
    """
    bounds = np.linspace(start, stop, processes + 1).round().astype(int)
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(
        [str(Path(__file__).resolve().parents[2])] + [p for p in [os.environ.get("PYTHONPATH")] if p]))
    code = "from harness.data.synth import _worker_main; _worker_main()"
    children = []
    for lo, hi in zip(bounds[:-1], bounds[1:]):
        job = {"videos": str(videos_dir), "seed": seed, "start": int(lo), "stop": int(hi), "kwargs": kwargs}
        err = tempfile.TemporaryFile("w+")  # a file, so a chatty child cannot fill a pipe and stall
        proc = subprocess.Popen([sys.executable, "-c", code], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                stderr=err, env=env, text=True)
        assert proc.stdin is not None and proc.stdout is not None  # both piped, just above
        proc.stdin.write(json.dumps(job))  # a few hundred bytes: fits the pipe, never blocks
        proc.stdin.close()
        children.append((proc, err))
    entries = []
    for proc, err in children:  # all children run at once; their outputs are read in turn
        assert proc.stdout is not None  # piped
        out = proc.stdout.read()
        proc.stdout.close()
        if proc.wait():
            err.seek(0)
            raise RuntimeError(f"synth writer process failed (exit {proc.returncode}):\n{err.read()[-2000:]}")
        err.close()
        entries += json.loads(out)
    return entries


def generate(out_dir: str | Path, *, videos: int = 2000, frames: int = 16, size: int = 64, seed: int = 0,
             val_fraction: float = 0.25, size_range: tuple[float, float] = SIZE_RANGE,
             speed_range: tuple[float, float] = SPEED_RANGE, val_size_range: tuple[float, float] | None = None,
             val_speed_range: tuple[float, float] | None = None, processes: int | None = None,
             style: str = "rich") -> Path:
    """Write the set into ``out_dir`` (which must not hold anything else); no caching, no lock.

    Validation takes the first ``round(videos * val_fraction)`` ids (at least
    one; ids cycle through the classes, so both splits are balanced).
    ``size_range`` / ``speed_range`` are the train split's; the val split
    draws from ``val_*_range`` (default: the train ranges), so a probe can
    test outside the training scales. With equal ranges the set is the one
    made before per-split ranges existed, byte for byte.
    """
    if videos < 2:
        raise ValueError(f"synth needs at least 2 videos (one per split), got {videos}")
    out = Path(out_dir)
    (out / "videos").mkdir(parents=True, exist_ok=True)
    processes = max(1, min(processes or (min(2, os.cpu_count() or 1) if videos >= 200 else 1), videos))
    kwargs: dict[str, Any] = {"frames": frames, "size": size, "size_range": tuple(size_range),
                              "speed_range": tuple(speed_range), "style": style}
    val_kwargs = {**kwargs, "size_range": tuple(val_size_range or size_range),
                  "speed_range": tuple(val_speed_range or speed_range)}
    start = time.perf_counter()
    n_val = min(max(1, round(videos * val_fraction)), videos - 1)
    if val_kwargs == kwargs:
        entries = _render_all(out / "videos", seed, 0, videos, processes, kwargs)
    else:
        entries = (_render_all(out / "videos", seed, 0, n_val, min(processes, n_val), val_kwargs)
                   + _render_all(out / "videos", seed, n_val, videos, min(processes, videos - n_val), kwargs))
    _warn_capped(entries[:n_val], val_kwargs["speed_range"], "val")
    _warn_capped(entries[n_val:], kwargs["speed_range"], "train")
    (out / "labels.json").write_text(json.dumps({c: str(i) for i, c in enumerate(CLASSES)}, indent=1))
    (out / "validation.json").write_text(json.dumps(entries[:n_val], indent=1))
    (out / "train.json").write_text(json.dumps(entries[n_val:], indent=1))
    log.info("synth: %d clips (%d val) of %dx%dx%d in %.1f s with %d process(es) -> %s",
             videos, n_val, frames, size, size, time.perf_counter() - start, processes, out)
    return out


def _warn_capped(entries: list[dict], speed_range: tuple[float, float], split: str) -> None:
    """Say when realised speeds leave the asked range: rotation and approach cap their rate (MAX_TURN,
    MAX_ZOOM_RATE), so a small object asked to be fast is recorded, and bucketed, slower."""
    below = [e for e in entries if e["speed"] < speed_range[0] - 1e-4]
    if below:
        log.warning("synth %s: %d of %d clips move slower than the asked speed range %s (rotation / approach "
                    "rate capped for small objects), e.g. clip %s at %.4f; their `speed` key says so",
                    split, len(below), len(entries), list(speed_range), below[0]["id"], below[0]["speed"])


def _params(videos: int, frames: int, size: int, seed: int, val_fraction: float,
            size_range: tuple[float, float], speed_range: tuple[float, float],
            val_size_range: tuple[float, float] | None = None,
            val_speed_range: tuple[float, float] | None = None, style: str = "rich") -> dict:
    """The marker: every parameter the files depend on.

    The val ranges appear only when they differ from the train ranges, so a
    set made before per-split ranges existed keeps its marker and is reused
    (the files are the same), rather than regenerated under running trials.
    """
    params = {"version": SYNTH_VERSION, "videos": videos, "frames": frames, "size": size, "seed": seed,
              "val_fraction": val_fraction, "size_range": list(size_range), "speed_range": list(speed_range)}
    for key, value, train in (("val_size_range", val_size_range, size_range),
                              ("val_speed_range", val_speed_range, speed_range)):
        if value is not None and list(value) != list(train):
            params[key] = list(value)
    if style != "rich":  # absent for the default, so older rich sets keep their marker
        params["style"] = style
    return params


def _marker(root: Path) -> dict | None:
    try:
        return json.loads((root / MARKER).read_text())
    except (OSError, ValueError):
        return None


def ensure_at(root: str | Path, *, videos: int = 2000, frames: int = 16, size: int = 64, seed: int = 0,
              val_fraction: float = 0.25, size_range: tuple[float, float] = SIZE_RANGE,
              speed_range: tuple[float, float] = SPEED_RANGE, val_size_range: tuple[float, float] | None = None,
              val_speed_range: tuple[float, float] | None = None, processes: int | None = None,
              style: str = "rich") -> Path:
    """The synth set at ``root``, generated once: reused when its marker matches the parameters.

    Concurrent callers serialise on ``.<root name>.lock`` beside ``root``; the
    set is written to a temporary sibling and renamed into place, so ``root``
    is either absent or complete. A synth set with other parameters is
    replaced; any other non-empty folder is refused.
    """
    root = Path(root).absolute()
    params = _params(videos, frames, size, seed, val_fraction, size_range, speed_range,
                     val_size_range, val_speed_range, style)
    if _marker(root) == params:
        return root
    root.parent.mkdir(parents=True, exist_ok=True)
    with open(root.parent / f".{root.name}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # released when the file closes, also if this process dies
        if _marker(root) == params:  # another process made it while we waited
            return root
        _clear(root)
        for stale in root.parent.glob(f".{root.name}.tmp-*"):  # left by a writer that died; we hold the lock
            shutil.rmtree(stale, ignore_errors=True)
        tmp = root.parent / f".{root.name}.tmp-{os.getpid()}"
        generate(tmp, processes=processes, **{k: v for k, v in params.items() if k != "version"})
        (tmp / MARKER).write_text(json.dumps(params, indent=1))
        os.rename(tmp, root)
    return root


def _clear(root: Path) -> None:
    """Make way for a new set: remove an old synth set or an empty folder, refuse anything else."""
    if not root.exists():
        return
    if _marker(root) is not None:
        log.warning("synth set at %s was made with other parameters (%s); regenerating", root, _marker(root))
        shutil.rmtree(root)
    elif root.is_dir() and not any(root.iterdir()):
        root.rmdir()
    else:
        raise FileExistsError(f"{root} exists and is not a synth set; point data.root (or OUT_DIR) at a new folder")


def ensure_synth(data: Data) -> Path:
    """Generate (once) the synth set a ``Data`` config of format ``synth`` describes; returns ``data.root``.

    Read it with the sthv2 reader: videos in ``<root>/videos``, annotations in ``<root>``.
    """
    cfg = data.synth or Synth()
    return ensure_at(data.root, videos=cfg.videos, frames=cfg.frames, size=cfg.size, seed=cfg.seed,
                     val_fraction=cfg.val_fraction, size_range=cfg.train_size, speed_range=cfg.train_speed,
                     val_size_range=cfg.val_size, val_speed_range=cfg.val_speed, style=cfg.style)
