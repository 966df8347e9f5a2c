"""The one registry: block name -> block class.

A block is an ``nn.Module`` class with a ``placement`` (where the ResNet calls
it) and keyword-only constructor options; those options are the block's
options in a study row, so errors and ``harness blocks`` read them from the
constructor signature, never from a hand-kept list.
"""
from __future__ import annotations

import difflib
import inspect
import logging
import warnings
from importlib.metadata import entry_points
from typing import Any, Callable

log = logging.getLogger(__name__)

_BLOCKS: dict[str, type] = {}
_ORIGIN: dict[str, str] = {}
ENTRY_POINT_GROUP = "harness.blocks"
_plugins_loaded = False
_loading_origin: str | None = None  # the package whose entry point is being imported


class DuplicateBlock(ValueError):
    """Two packages registered one block name."""


_duplicate: DuplicateBlock | None = None

# Placements a block class may declare (see blocks.resnet.ResNet):
#   "none"      nothing is inserted (TSN)
#   "residual"  called on a bottleneck's residual-branch input, before conv1 (TSM)
#   "conv2"     replaces a bottleneck's 3x3 conv2 (GST)
#   "stage"     inserted after the stem and after layer1..3 (VPS, RF-*)
PLACEMENTS = ("none", "residual", "conv2", "stage")

# Arguments the ResNet passes to every block; they are not user options.
STRUCTURAL = {"channels", "num_frames", "in_channels", "out_channels", "stride"}

# Options the factory itself takes for a placement (not the block constructor), and their types.
PLACEMENT_OPTIONS = {"stage": {"stages": (0, 1, 2, 3)}, "residual": {"every": None}}
PLACEMENT_OPTION_TYPES = {"stages": "tuple[int, ...]", "every": "int | None"}


def register(name: str, origin: str | None = None) -> Callable[[type], type]:
    """Class decorator: ``@register("tsm")``. A name registered twice is an error.

    ``origin`` defaults to "built-in", or to the package whose ``harness.blocks``
    entry point is being loaded.
    """
    origin = origin or _loading_origin or "built-in"

    def deco(cls: type) -> type:
        placement = getattr(cls, "placement", None)
        if placement not in PLACEMENTS:
            raise TypeError(f"block {name!r}: placement must be one of {PLACEMENTS}, got {placement!r}")
        if name in _BLOCKS:
            raise DuplicateBlock(
                f"block {name!r} is registered twice: by {_ORIGIN[name]} and by {origin}"
            )
        _BLOCKS[name] = cls
        _ORIGIN[name] = origin
        return cls

    return deco


def load_plugins() -> None:
    """Import every installed ``harness.blocks`` entry point once.

    A plugin that fails to import is a warning naming its package and the
    error; every block that does not come from it keeps working. Two blocks
    with one name stay an error that names both packages.
    """
    global _plugins_loaded, _loading_origin, _duplicate
    if _duplicate is not None:
        raise _duplicate  # stays an error for every later use, not only the first
    if _plugins_loaded:
        return
    _plugins_loaded = True
    for ep in entry_points(group=ENTRY_POINT_GROUP):
        package = ep.dist.name if ep.dist is not None else ep.value
        _loading_origin = package
        try:
            ep.load()
        except DuplicateBlock as exc:
            _duplicate = exc
            raise
        except Exception as exc:  # noqa: BLE001 - a broken plugin must not break the other blocks
            warnings.warn(f"block plugin {package!r} ({ep.value}) failed to load: {exc!r}", stacklevel=2)
        finally:
            _loading_origin = None


def available() -> list[str]:
    load_plugins()
    return sorted(_BLOCKS)


def get(name: str) -> type:
    load_plugins()
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
    def text(annotation: Any) -> str:
        return annotation if isinstance(annotation, str) else inspect.formatannotation(annotation)

    return {k: text(params[k].annotation) if k in params else PLACEMENT_OPTION_TYPES[k] for k in options(name)}


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
