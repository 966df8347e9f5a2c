"""``harness profile`` and ``harness blocks``: what each row or block costs in params and GFLOPs, printed as
markdown, CSV or JSON. Neither needs data or trains anything."""
from __future__ import annotations

import argparse
import json
import sys
from typing import Any


def _print_json(value: Any) -> None:
    json.dump(value, sys.stdout, indent=1)
    print()


def profile(args: argparse.Namespace) -> int:
    """``harness profile STUDY [--frames T] [--size S ...] [--format md|csv|json]``: 0 printed, 2 a bad study."""
    from harness import profile as profiling
    from harness.config import load_study
    from harness.errors import fail_config

    try:
        study = load_study(args.study)
    except Exception as exc:  # noqa: BLE001 - every config error becomes one line
        return fail_config(args.study, exc)
    profiles = profiling.profile_study(study, frames=args.frames, sizes=args.size)
    if args.format == "json":
        _print_json(profiles)
        return 0
    table = profiling.study_table(study, profiles, args.size)
    if args.format == "csv":
        print(table.to_csv(index=False), end="")
        return 0
    print(f"# {study.name}: params and GFLOPs on the paper backbone\n")
    print(profiling.to_markdown(table, profiling.skipped_ops(profiles), args.frames, study.num_classes, args.size))
    return 0


def blocks(args: argparse.Namespace) -> int:
    """``harness blocks [--format md|json] [--profile]``: every block, built-in or plugin, with its options."""
    import pandas as pd

    from harness.catalog import catalog

    entries = catalog(args.profile)
    if args.format == "json":
        _print_json(entries)
        return 0
    table = pd.DataFrame([{
        "block": e["block"], "from": e["origin"], "placement": e["placement"],
        "options": ", ".join(f"{o['name']}={o['default']!r}" for o in e["options"]) or "-",
        **({"params": e["params"], "GFLOPs 8x112": e["gflops_8x112"]} if args.profile else {}),
    } for e in entries])
    print(table.to_markdown(index=False))
    if args.profile:
        print("\nParams and GFLOPs on ResNet-50, 174 classes, 8 frames at 112x112 (fvcore, 1 multiply-add = 1 FLOP).")
    return 0
