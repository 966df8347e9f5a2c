"""``harness blocks``: every available block, where it comes from, its options.

Options, their types and defaults are read from each block's constructor
signature (plus the factory's placement options), never from a hand-kept list;
plugin blocks installed through the ``harness.blocks`` entry point appear too.

    harness blocks --format md --profile
"""
from __future__ import annotations

from typing import Any

import blocks


def describe(name: str) -> dict[str, Any]:
    defaults, types = blocks.options(name), blocks.option_types(name)
    cls = blocks.get(name)
    return {
        "block": name,
        "origin": blocks.origin(name),
        "placement": blocks.placement(name),
        "summary": (cls.__doc__ or "").strip().splitlines()[0] if cls.__doc__ else "",
        "options": [{"name": k, "type": types[k], "default": _jsonable(v)} for k, v in defaults.items()],
    }


def _jsonable(value: Any) -> Any:
    return list(value) if isinstance(value, tuple) else value


def catalog(with_profile: bool = False) -> list[dict[str, Any]]:
    """:func:`describe` of every available block; ``with_profile`` adds params and GFLOPs at 8x112 on ResNet-50."""
    entries = [describe(name) for name in blocks.available()]
    if with_profile:
        from .config import Row
        from .profile import profile_row

        for entry in entries:
            prof = profile_row(Row(block=entry["block"]), num_classes=174, frames=8, sizes=[112])
            entry["params"] = prof["params"]
            entry["gflops_8x112"] = round(prof["gflops"]["112"], 3)
    return entries
