"""``harness data inspect / fingerprint / synth``: check the flags, call :mod:`harness.data`, print the report.

Exit codes: 0 done (inspect: the unreadable share is within the limit), 1 inspect found too many unreadable
entries, 2 unusable flags or annotation files.
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from typing import Any


def _error(message: str) -> int:
    print(f"error: {message}", file=sys.stderr)
    return 2


# ----------------------------------------------------------------------------- harness data inspect


def inspect(args: argparse.Namespace) -> int:
    """``harness data inspect --format F --root R --annotations A [--split S] [--max-bad-fraction X] [--json]``."""
    from harness.data.formats import DataError
    from harness.data.inspect import inspect_split

    if not 0 <= args.max_bad_fraction <= 1:
        return _error("--max-bad-fraction must be between 0 and 1")
    try:
        report = inspect_split(args.format, args.root, args.annotations, args.split)
    except DataError as e:
        return _error(str(e))
    d = report.as_dict(args.max_bad_fraction)
    print(json.dumps(d) if args.json else _inspect_text(d))
    return 0 if d["ok"] else 1


def _inspect_text(d: dict[str, Any]) -> str:
    lines = [f"{d['format']} {d['split']}: {d['entries']} entries, {d['classes']} classes, "
             f"{d['readable']} readable, {len(d['unreadable'])} unreadable ({d['bad_fraction']:.2%}, "
             f"limit {d['max_bad_fraction']:.2%})"]
    if d["frames"]:
        lines.append("frames min/median/max: {min}/{median}/{max}".format(**d["frames"]))
    lines += [f"  unreadable: {r}" for r in d["reasons"]]
    return "\n".join(lines)


# ----------------------------------------------------------------------------- harness data fingerprint


def fingerprint(args: argparse.Namespace) -> int:
    """``harness data fingerprint --format F --root R [--annotations A] [--split S] [--sample N] [--json]``."""
    from harness.config import Data
    from harness.data.fingerprint import fingerprint as fingerprint_split
    from harness.data.formats import DataError

    if args.sample < 1:
        return _error("--sample must be >= 1")
    data = Data(format=args.format, root=args.root, annotations=args.annotations)
    try:
        d = fingerprint_split(data, args.split, args.sample)
    except DataError as e:
        return _error(str(e))
    print(json.dumps(d) if args.json else _fingerprint_text(d))
    return 0


def _fingerprint_text(d: dict[str, Any]) -> str:
    lines = [f"fingerprint {d['fingerprint']}  ({d['format']} {d['split']}: {d['clips']} of {d['entries']} "
             f"clips sampled, decoder {d['decoder']})",
             f"  annotations sha256 {d['annotations']}  ({', '.join(d['files'])})",
             f"  pixels      sha256 {d['pixels']}"]
    lines += [f"  unreadable: {r}" for r in d["unreadable"]]
    return "\n".join(lines)


# ----------------------------------------------------------------------------- harness data synth

# (flag, upper bound) of the object-size and speed ranges, as fractions of the frame side
_RANGE_LIMITS = (("train-size", 1.0), ("train-speed", 0.5), ("val-size", 1.0), ("val-speed", 0.5))


def synth(args: argparse.Namespace) -> int:
    """``harness data synth OUT_DIR [--videos N --frames T --size S --seed K --val-fraction F]
    [--{train,val}-{size,speed} MIN MAX]``: 0 written (or already there), 2 unusable flags."""
    from harness.data.synth import CLASSES, SIZE_RANGE, SPEED_RANGE, ensure_at

    ranges = {flag: _range(getattr(args, flag.replace("-", "_")), SIZE_RANGE if "size" in flag else SPEED_RANGE)
              for flag, _ in _RANGE_LIMITS}
    problems = _synth_problems(args, ranges)
    if problems:
        return _error("; ".join(problems))
    start = time.perf_counter()
    try:
        root = ensure_at(args.out_dir, videos=args.videos, frames=args.frames, size=args.size, seed=args.seed,
                         val_fraction=args.val_fraction, size_range=ranges["train-size"],
                         speed_range=ranges["train-speed"], val_size_range=ranges["val-size"],
                         val_speed_range=ranges["val-speed"])
    except OSError as e:  # FileExistsError included: a folder that is not a synthetic set
        return _error(str(e))
    print(f"{args.videos} clips of {args.frames}x{args.size}x{args.size} ({len(CLASSES)} classes) in {root} "
          f"[{time.perf_counter() - start:.1f} s]\n"
          f"read it with: harness data inspect --format sthv2 --root {root / 'videos'} --annotations {root}")
    return 0


def _range(flag: list[float] | None, full: tuple[float, float]) -> tuple[float, float]:
    """A ``MIN MAX`` flag as a range; unset (None), the generator's full range."""
    low, high = flag or full
    return low, high


def _synth_problems(args: argparse.Namespace, ranges: dict[str, tuple[float, float]]) -> list[str]:
    """Every unusable flag at once, so that one run says all there is to fix."""
    problems = [f"--{k} must be >= {lo}" for k, v, lo in
                (("videos", args.videos, 2), ("frames", args.frames, 2), ("size", args.size, 16)) if v < lo]
    if not 0 < args.val_fraction < 1:
        problems.append("--val-fraction must be between 0 and 1")
    problems += [f"--{flag} MIN MAX needs 0 < MIN <= MAX <= {top:g}, got {list(ranges[flag])}"
                 for flag, top in _RANGE_LIMITS if not 0 < ranges[flag][0] <= ranges[flag][1] <= top]
    return problems
