"""The one registry: block name -> block class.

A block is an ``nn.Module`` class with a ``placement`` (where the ResNet calls
it) and keyword-only constructor options; those options are the block's
options in a study row, so errors and ``harness blocks`` read them from the
constructor signature, never from a hand-kept list.
"""
from __future__ import annotations

import difflib
import inspect
from typing import Any, Callable

_BLOCKS: dict[str, type] = {}
_ORIGIN: dict[str, str] = {}

# Placements a block class may declare (see blocks.resnet.ResNet):
#   "none"      nothing is inserted (TSN)
#   "residual"  called on a bottleneck's residual-branch input, before conv1 (TSM)
#   "conv2"     replaces a bottleneck's 3x3 conv2 (GST)
#   "stage"     inserted after the stem and after layer1..3 (VPS, RF-*)
PLACEMENTS = ("none", "residual", "conv2", "stage")

# Arguments the ResNet passes to every block; they are not user options.
STRUCTURAL = {"channels", "num_frames", "in_channels", "out_channels", "stride"}

# Options the factory itself takes for a placement (not the block constructor).
PLACEMENT_OPTIONS = {"stage": {"stages": (0, 1, 2, 3)}, "residual": {"every": None}}


def register(name: str, origin: str = "built-in") -> Callable[[type], type]:
    """Class decorator: ``@register("tsm")``. A name registered twice is an error."""

    def deco(cls: type) -> type:
        placement = getattr(cls, "placement", None)
        if placement not in PLACEMENTS:
            raise TypeError(f"block {name!r}: placement must be one of {PLACEMENTS}, got {placement!r}")
        if name in _BLOCKS:
            raise ValueError(
                f"block {name!r} is registered twice: by {_ORIGIN[name]} and by {origin}"
            )
        _BLOCKS[name] = cls
        _ORIGIN[name] = origin
        return cls

    return deco


def available() -> list[str]:
    return sorted(_BLOCKS)


def get(name: str) -> type:
    if name not in _BLOCKS:
        close = difflib.get_close_matches(name, _BLOCKS, n=1)
        hint = f" Did you mean {close[0]!r}?" if close else ""
        raise KeyError(f"unknown block {name!r}.{hint} Available: {', '.join(available())}")
    return _BLOCKS[name]


def origin(name: str) -> str:
    get(name)
    return _ORIGIN[name]


def options(name: str) -> dict[str, Any]:
    """User options of a block with their defaults (constructor keywords + placement options)."""
    cls = get(name)
    opts = {
        p.name: p.default
        for p in inspect.signature(cls.__init__).parameters.values()
        if p.name != "self" and p.name not in STRUCTURAL and p.kind is not p.VAR_KEYWORD
    }
    opts.update(PLACEMENT_OPTIONS.get(cls.placement, {}))
    return opts


def option_types(name: str) -> dict[str, str]:
    """Annotations of a block's constructor options, as written in its signature."""
    cls = get(name)
    params = inspect.signature(cls.__init__).parameters
    return {k: str(params[k].annotation) if k in params else "tuple[int, ...]" for k in options(name)}


def check(name: str, opts: dict[str, Any]) -> None:
    """Raise on an unknown block or option; the message lists what is valid."""
    valid = options(name)
    for key in opts:
        if key not in valid:
            close = difflib.get_close_matches(key, valid, n=1)
            hint = f" Did you mean {close[0]!r}?" if close else ""
            raise TypeError(
                f"block {name!r} has no option {key!r}.{hint} Valid options: "
                + (", ".join(f"{k}={v!r}" for k, v in valid.items()) or "none")
            )
    validate = getattr(get(name), "validate_options", None)
    if validate is not None:
        validate({**valid, **opts})
