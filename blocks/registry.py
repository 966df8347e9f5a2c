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
import os
import sys
import types
import typing
import warnings
from importlib.metadata import EntryPoint, entry_points
from typing import TYPE_CHECKING, Any, Callable, Literal, TypeVar, Union

if TYPE_CHECKING:
    from torch import nn

log = logging.getLogger(__name__)

BlockT = TypeVar("BlockT", bound="nn.Module")  # @register hands back the class it was given, type and all
_BLOCKS: dict[str, type[nn.Module]] = {}
_ORIGIN: dict[str, str] = {}
ENTRY_POINT_GROUP = "harness.blocks"
_plugins_loaded = False
_loading_origin: str | None = None  # the package whose entry point is being imported
_PLUGINS: list[dict[str, Any]] = []  # one report per entry point (see plugins())


class DuplicateBlock(ValueError):
    """Two packages registered one block name."""


class OptionError(TypeError):
    """An unknown block option, or a value without the annotated type; ``option`` names it."""

    def __init__(self, message: str, option: str):
        super().__init__(message)
        self.option = option


_duplicate: DuplicateBlock | None = None

# Placements a block class may declare (see blocks.resnet.ResNet):
#   "none"      nothing is inserted (TSN)
#   "residual"  called on a bottleneck's residual-branch input, before conv1 (TSM)
#   "pre_conv2" called between conv1 (+bn1, relu) and conv2 of a bottleneck, on its width (TAM, TEA, TIN)
#   "conv2"     replaces a bottleneck's 3x3 conv2 (GST)
#   "stage"     inserted after the stem and after layer1..3 (VPS, RF-*)
PLACEMENTS = ("none", "residual", "pre_conv2", "conv2", "stage")

# Arguments the ResNet passes to every block; they are not user options.
STRUCTURAL = {"channels", "num_frames", "in_channels", "out_channels", "stride"}

# Options the factory itself takes for a placement (not the block constructor), and their types.
PLACEMENT_OPTIONS: dict[str, dict[str, Any]] = {"stage": {"stages": (0, 1, 2, 3)}, "residual": {"every": None}}
PLACEMENT_OPTION_TYPES = {"stages": "tuple[int, ...]", "every": "int | None"}
PLACEMENT_OPTION_HINTS = {"stages": tuple[int, ...], "every": int | None}


def register(name: str, origin: str | None = None) -> Callable[[type[BlockT]], type[BlockT]]:
    """Class decorator: ``@register("tsm")``. A name registered twice is an error.

    ``origin`` defaults to "built-in", or to the package whose ``harness.blocks``
    entry point is being loaded.
    """
    origin = origin or _loading_origin or "built-in"

    def deco(cls: type[BlockT]) -> type[BlockT]:
        declared = getattr(cls, "placement", None)
        if declared not in PLACEMENTS:
            raise TypeError(f"block {name!r}: placement must be one of {PLACEMENTS}, got {declared!r}")
        if name in _BLOCKS:
            raise DuplicateBlock(f"block {name!r} is registered twice: by {_ORIGIN[name]} and by {origin}; "
                                 + _duplicate_fix(_ORIGIN[name], origin))
        _BLOCKS[name] = cls
        _ORIGIN[name] = origin
        return cls

    return deco


def _duplicate_fix(first: str, second: str) -> str:
    plugins = [p for p in (first, second) if p != "built-in"]
    return (f"uninstall one of them (pip uninstall {' or '.join(plugins)}) or rename the block "
            "in its @blocks.register(...)")


def load_plugins() -> None:
    """Import every installed ``harness.blocks`` entry point once.

    A plugin that fails to import, or that imports but does not register the
    block its entry point is named after, is a warning naming its package and
    the reason (:func:`plugins` keeps the report); every block that does not
    come from it keeps working. Two blocks with one name stay an error that
    names both packages.
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
        error = None
        try:
            ep.load()
        except DuplicateBlock as exc:
            _duplicate = exc
            raise
        except Exception as exc:  # noqa: BLE001 - a broken plugin must not break the other blocks
            error = f"failed to import: {exc!r}"
        finally:
            _loading_origin = None
        if error is None and _ORIGIN.get(ep.name) != package:
            error = _not_registered(ep, package)
        _PLUGINS.append({"package": package, "entry_point": f"{ep.name} = {ep.value}", "block": ep.name,
                         "module": ep.module, "location": _location(ep.module), "error": error})
        if error is not None:
            warnings.warn(f"block plugin {package!r} ({ep.name} = {ep.value}): {error}", stacklevel=2)


def plugins() -> list[dict[str, Any]]:
    """What each ``harness.blocks`` entry point gave: package, entry point, the block it promises (its name),
    the module and where it was imported from, and ``error`` (None when the block is registered)."""
    load_plugins()
    return [dict(p) for p in _PLUGINS]


def _location(module: str) -> str | None:
    """Where an imported module came from: its file, or the folders of a namespace package."""
    mod = sys.modules.get(module)
    if mod is None:
        return None
    file = getattr(mod, "__file__", None)
    return file or os.pathsep.join(getattr(mod, "__path__", []))


def _not_registered(ep: EntryPoint, package: str) -> str:
    """Why an entry point that imported fine did not register its block."""
    mod = sys.modules.get(ep.module)
    if mod is not None and getattr(mod, "__file__", None) is None and hasattr(mod, "__path__"):
        # The shadowing case: a folder named like the package, without __init__.py, found on the import
        # path (e.g. the plugin's project folder in the working folder) wins over the installed package.
        return (f"registered no block {ep.name!r}: {ep.module!r} was imported from {_location(ep.module)}, "
                "a folder without __init__.py (a namespace package) that shadows the installed package; "
                "run from another folder, or move the package under src/ (docs/adding-a-block.md)")
    owner = _ORIGIN.get(ep.name)
    found = f" (the name is {owner}'s)" if owner else ""
    return (f"{ep.module!r} (imported from {_location(ep.module)}) registered no block {ep.name!r}{found}; "
            "name the entry point after the block its module registers")


def available() -> list[str]:
    load_plugins()
    return sorted(_BLOCKS)


def get(name: str) -> type[nn.Module]:
    load_plugins()
    if name not in _BLOCKS:
        close = difflib.get_close_matches(name, _BLOCKS, n=1)
        hint = f" Did you mean {close[0]!r}?" if close else ""
        failed = [f"{p['package']} ({p['entry_point']}): {p['error']}" for p in _PLUGINS if p["error"]]
        broken = f" Plugins that failed to load: {'; '.join(failed)}" if failed else ""
        raise KeyError(f"unknown block {name!r}.{hint} Available: {', '.join(available())}.{broken}")
    return _BLOCKS[name]


def placement(name: str) -> str:
    """Where the ResNet calls block ``name``: one of :data:`PLACEMENTS`, as its class says (checked by
    :func:`register`; ``nn.Module`` itself has no such attribute, hence the look-up by name)."""
    return getattr(get(name), "placement")


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
    opts.update(PLACEMENT_OPTIONS.get(placement(name), {}))
    return opts


def option_types(name: str) -> dict[str, str]:
    """Annotations of a block's constructor options, as written in its signature."""
    cls = get(name)
    params = inspect.signature(cls.__init__).parameters
    def text(annotation: Any) -> str:
        return annotation if isinstance(annotation, str) else inspect.formatannotation(annotation)

    return {k: text(params[k].annotation) if k in params else PLACEMENT_OPTION_TYPES[k] for k in options(name)}


def check(name: str, opts: dict[str, Any]) -> None:
    """Raise on an unknown block or option, or a value of the wrong type; the message says what is valid."""
    valid = options(name)
    for key in opts:
        if key not in valid:
            close = difflib.get_close_matches(key, valid, n=1)
            hint = f" Did you mean {close[0]!r}?" if close else ""
            raise OptionError(
                f"block {name!r} has no option {key!r}.{hint} Valid options: "
                + (", ".join(f"{k}={v!r}" for k, v in valid.items()) or "none"), key)
    check_types(name, opts)
    validate = getattr(get(name), "validate_options", None)
    if validate is not None:
        validate({**valid, **opts})


def check_types(name: str, opts: dict[str, Any]) -> None:
    """Raise :class:`OptionError` for a value that does not match its annotation (a string for an int)."""
    cls = get(name)
    try:
        hints = typing.get_type_hints(cls.__init__)
    except Exception:  # noqa: BLE001 - an annotation we cannot resolve is not checked, never an error
        hints = {}
    hints = {**PLACEMENT_OPTION_HINTS, **hints}
    for key, value in opts.items():
        if key in hints and not _matches(value, hints[key]):
            raise OptionError(
                f"block {name!r} option {key} must be {option_types(name)[key]}, got {type(value).__name__} "
                f"{value!r} (declared at {_declared_at(cls)})", key)


def _matches(value: Any, hint: Any) -> bool:
    """Whether a value read from YAML fits an annotation; annotations this does not know are trusted."""
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if hint is Any:
        return True
    if hint is None or hint is type(None):
        return value is None
    if origin in (Union, types.UnionType):
        return any(_matches(value, a) for a in args)
    if origin is Literal:
        return value in args
    if origin in (tuple, list):  # YAML gives lists for both
        if not isinstance(value, (list, tuple)):
            return False
        if origin is tuple and args and args[-1] is not Ellipsis:
            return len(value) == len(args) and all(_matches(v, a) for v, a in zip(value, args))
        return all(_matches(v, args[0]) for v in value) if args else True
    if hint is float:  # an int is a float; a bool is neither an int nor a float here
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    if hint is int:
        return isinstance(value, int) and not isinstance(value, bool)
    if isinstance(hint, type):
        return isinstance(value, hint)
    return True


def _declared_at(cls: type[nn.Module]) -> str:
    """``file:line`` of a block's constructor, relative to the working folder when inside it."""
    try:
        file, line = inspect.getsourcefile(cls.__init__), inspect.getsourcelines(cls.__init__)[1]
    except (OSError, TypeError):
        return f"{cls.__module__}.{cls.__qualname__}"
    rel = os.path.relpath(file) if file and not os.path.relpath(file).startswith("..") else file
    return f"{rel}:{line}"
