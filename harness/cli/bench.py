"""``harness bench blocks / data / harness / report``: run one bench of :mod:`harness.bench`, print its table
(markdown with a title that says how it was measured, or JSON), or assemble the markdown outputs into
``results/bench.md``. Exit codes: 0 measured, 2 unusable flags or study."""
from __future__ import annotations

import argparse
import json
import sys
from contextlib import redirect_stdout
from pathlib import Path
from typing import Any


def _print_json(value: Any) -> None:
    json.dump(value, sys.stdout, indent=1)
    print()


def _error(message: str) -> int:
    print(f"error: {message}", file=sys.stderr)
    return 2


# ----------------------------------------------------------------------------- harness bench blocks


def blocks(args: argparse.Namespace) -> int:
    """``harness bench blocks [--study S] [--size --frames --batch --device --repeats --threads]
    [--default-malloc] [--format md|json]``: step time and memory of every row, as ratios."""
    import pandas as pd
    import torch

    from harness.bench import bench_blocks, block_goals, machine
    from harness.config import load_study

    study = load_study(args.study)
    if args.device == "cuda" and not torch.cuda.is_available():
        return _error("--device cuda: no CUDA device here; use --device cpu")
    if args.threads:
        torch.set_num_threads(args.threads)
    rows = bench_blocks(study.rows, size=args.size, frames=args.frames, batch=args.batch, device=args.device,
                        repeats=args.repeats, num_classes=study.num_classes, default_malloc=args.default_malloc)
    if args.format == "json":
        _print_json(rows)
        return 0
    memory = "peak CUDA memory" if args.device == "cuda" else "activations saved for backward"
    malloc = ("glibc's default malloc thresholds" if args.default_malloc
              else "malloc set up as training sets it (harness.train.keep_freed_memory)")
    print(f"Forward+backward step, {args.frames}x{args.size}, batch {args.batch}, {args.device} "
          f"({machine()}; {malloc}); median and IQR of {args.repeats} interleaved, rotated repeats; time_ratio = "
          f"median of the per-repeat ratios against {rows[0]['row']}; memory_mb = {memory}.\n")
    print(pd.DataFrame(rows).round(3).to_markdown(index=False))
    print("\n" + "\n".join(block_goals(rows)))
    return 0


# ----------------------------------------------------------------------------- harness bench data


def data(args: argparse.Namespace) -> int:
    """``harness bench data [--formats laptop,sthv1,sthv2,k400] [--root R [--annotations A]] ...``: the laptop
    loader vs its model (and the decode cache), then each real format's loader vs its raw decode."""
    from harness.bench import bench_data, laptop_epochs, machine
    from harness.data import realsize, speed
    from harness.train import keep_freed_memory

    formats = [f.strip() for f in args.formats.split(",") if f.strip()]
    unknown = [f for f in formats if f not in ("laptop", *realsize.SPECS)]
    real = [f for f in formats if f in realsize.SPECS]
    if unknown or (args.root and len(real) != 1):
        return _error(f"--formats: {'unknown ' + ', '.join(unknown) if unknown else 'one real format with --root'}; "
                      f"choose from laptop, {', '.join(realsize.SPECS)} (--root takes the files of one)")
    keep_freed_memory()  # as every training process sets it: a clip's MBs of frames are reused, not faulted in
    out: dict[str, Any] = {"machine": machine()}  # before the laptop bench sets the profile's threads
    if "laptop" in formats:
        out["laptop"] = bench_data(args.study, profile=args.profile, batches=args.batches, steps=args.steps)
        out["laptop_epoch"] = laptop_epochs(args.study, profile=args.profile, rounds=args.epoch_rounds)
    out["formats"] = []
    for fmt in real:
        root = Path(args.root) if args.root else realsize.ensure_set(fmt, Path(args.data_dir) / fmt, clips=args.clips)
        annotations = Path(args.annotations) if args.annotations else root
        out["formats"].append(speed.bench_format(fmt, root, annotations, seconds=args.seconds, rounds=args.rounds,
                                                 gpu_rate=args.gpu_clips_per_s))
    if args.format == "json":
        _print_json(out)
    else:
        _print_data(out, args.study, args.profile)
    return 0


def _print_data(out: dict[str, Any], study: str, profile: str) -> None:
    import pandas as pd

    from harness.bench import FRAMES_NOTE
    from harness.data import speed

    print(f"{out['machine']}.\n")
    if "laptop" in out:
        print(f"Training loader vs model, {study} ({profile} profile); goal: loader >= 1.5x model.\n")
        print(pd.DataFrame(out["laptop"]).round(3).to_markdown(index=False) + "\n")
        print(pd.DataFrame(out["laptop_epoch"]).round(3).to_markdown(index=False) + "\n")
    if out["formats"]:
        print(f"Real formats ({FRAMES_NOTE}); every rate one core, one thread, except the worker column.\n")
        print(speed.formats_markdown(out["formats"]))


# ----------------------------------------------------------------------------- harness bench harness


def harness(args: argparse.Namespace) -> int:
    """``harness bench harness [--study S --profile P --rows A,B --trials N --epochs E --concurrency C]``: the same
    trials through Ray Tune + MLflow and through a plain process pool."""
    from harness.bench import bench_harness, harness_markdown, harness_trials, machine
    from harness.errors import fail_config

    try:
        study, profile, trials = harness_trials(args.study, profile=args.profile, trials=args.trials,
                                                rows=tuple(args.rows.split(",")), epochs=args.epochs)
    except Exception as exc:  # noqa: BLE001 - a config error is one line and exit 2
        return fail_config(args.study, exc)
    with redirect_stdout(sys.stderr):  # Ray Tune prints its configuration box to stdout
        result = bench_harness(study, args.profile, profile, trials, concurrency=args.concurrency)
    if args.format == "json":
        _print_json(result)
    else:
        print(f"Ray Tune + MLflow vs a plain loop ({machine()}).\n\n{harness_markdown(result)}")
    return 0


# ----------------------------------------------------------------------------- harness bench report


def report(args: argparse.Namespace) -> int:
    """``harness bench report FILE.md ... [--out results/bench.md]``: one section per file, titled by its name."""
    from harness.bench import report_markdown
    from harness.files import write_atomic

    sections = {Path(p).stem: Path(p).read_text(encoding="utf-8") for p in args.sections}
    print(write_atomic(report_markdown(sections), args.out))
    return 0
