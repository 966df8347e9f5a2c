"""One-line errors. Config: ``error: <file>[:<line>]: <key>: <what to fix>``, exit code 2.
Environment (disk full, no permission): ``error: <path>: <reason>; <what to do>``."""
from __future__ import annotations

import difflib
import errno
import logging
import sys
from pathlib import Path
from typing import Any

import yaml
from pydantic import ValidationError


def _line_of(path: str | Path, keys: tuple) -> int | None:
    """Line (1-based) of a key path in a YAML file, or of its deepest existing parent."""
    try:
        node = yaml.compose(Path(path).read_text(encoding="utf-8"), Loader=yaml.SafeLoader)
    except (OSError, ValueError, yaml.YAMLError):  # ValueError: not UTF-8
        return None
    line = None
    for key in keys:
        if not isinstance(node, yaml.MappingNode):
            break
        match = next(((k, v) for k, v in node.value if k.value == str(key)), None)
        if match is None:
            break
        line, node = match[0].start_mark.line + 1, match[1]
    return line


def setup_error(exc: BaseException) -> str | None:
    """The line for a broken block-plugin setup (two packages register one name), wherever it surfaced:
    it is about the installed packages, not about a row of the file being read. None for anything else."""
    registry = sys.modules.get("blocks.registry")  # imported by whatever raised it; never imported here
    if registry is None:
        return None
    causes: list[object] = [exc]
    if isinstance(exc, ValidationError):
        causes += [(e.get("ctx") or {}).get("error") for e in exc.errors()]
    return next((str(c) for c in causes if isinstance(c, registry.DuplicateBlock)), None)


def _named_keys(cause: object) -> tuple[Any, ...] | None:
    """The key path a ConfigError (or PreflightError) names, when pydantic wrapped one as ``cause``."""
    keys = getattr(cause, "keys", None)
    return keys if isinstance(keys, tuple) else None


def summary(exc: BaseException) -> str:
    """One line for a config error without a file (a trial's config): ``key: message``, never pydantic's URL."""
    if isinstance(exc, ValidationError):
        err = exc.errors()[0]
        keys = tuple(k for k in err["loc"] if not str(k).startswith("function-"))
        cause = (err.get("ctx") or {}).get("error")
        named = _named_keys(cause)
        if named is not None:  # a ConfigError names the key under the loc
            keys, msg = keys + named, getattr(cause, "message", str(cause))
        else:
            msg = err["msg"].removeprefix("Value error, ")
        return f"{'.'.join(map(str, keys)) or '(top level)'}: {msg}"
    text = str(exc.args[0]) if isinstance(exc, KeyError) and exc.args else str(exc)  # KeyError quotes its str
    return (text.strip().splitlines() or [type(exc).__name__])[0]


def last_line(traceback: str) -> str:
    """The line of a traceback that says what went wrong: its last, skipping pydantic's closing URL."""
    lines = [ln for ln in traceback.strip().splitlines() if ln.strip()]
    lines = [ln for ln in lines if not ln.strip().startswith("For further information visit")] or lines
    return lines[-1] if lines else ""


def _at(path: str | Path, keys: tuple, message: str) -> str:
    """``<file>[:<line>]: [<key>: ]<message>``."""
    line = _line_of(path, keys) if keys else None
    key = f"{'.'.join(map(str, keys))}: " if keys else ""
    return f"{path}{f':{line}' if line else ''}: {key}{message}"


def _unknown_key(title: str, loc: tuple) -> str:
    """What to say about an unknown key: the closest valid one and all of them."""
    from harness import config

    model = getattr(config, title, None)
    valid = config.valid_keys(model, loc[:-1]) if isinstance(model, type) else []
    if not valid:
        return "unknown key; remove it or check its spelling"
    close = difflib.get_close_matches(str(loc[-1]), valid, n=1)
    return f"unknown key; {f'did you mean {close[0]!r}? ' if close else ''}valid keys: {', '.join(valid)}"


def _validation(path: str | Path, exc: ValidationError) -> str:
    errors = exc.errors()
    err = errors[0]
    if err["type"] == "missing":  # a misspelt required key is both missing and unknown: the typo says more
        err = next((e for e in errors if e["type"] == "extra_forbidden" and e["loc"][:-1] == err["loc"][:-1]), err)
    keys = tuple(k for k in err["loc"] if not str(k).startswith("function-"))
    cause = (err.get("ctx") or {}).get("error")
    named = _named_keys(cause)
    if named is not None:  # a ConfigError: the key it names, under the loc
        return _at(path, keys + named, getattr(cause, "message", str(cause)))
    msg = err["msg"].removeprefix("Value error, ")
    if err["type"] == "extra_forbidden":
        msg = _unknown_key(exc.title, keys)
    return _at(path, keys, msg) if keys else f"{path}: (top level): {msg}"


def describe(path: str | Path, exc: BaseException) -> str:
    """The one line for an exception raised while loading a config file."""
    setup = setup_error(exc)
    if setup is not None:
        return setup
    if isinstance(exc, ValidationError):
        return _validation(path, exc)
    keys = _named_keys(exc)
    if keys is not None:  # a ConfigError or PreflightError: a key path and a message
        return _at(path, keys, getattr(exc, "message", str(exc)))
    if isinstance(exc, yaml.MarkedYAMLError) and exc.problem_mark is not None:
        problem = exc.problem or exc.context or "invalid YAML"
        if "python/" in str(problem) or "could not determine a constructor" in str(problem):
            problem = f"{problem}; YAML tags that build Python objects are not allowed"
        return f"{path}:{exc.problem_mark.line + 1}: yaml: {problem}"
    if isinstance(exc, OSError):
        return f"{path}: file: {exc.strerror or exc}"
    first = (str(exc).strip().splitlines() or [""])[0]  # one line, whatever the exception
    return f"{path}: {type(exc).__name__}: {first}"


def fail_config(path: str | Path, exc: BaseException) -> int:
    print(f"error: {describe(path, exc)}", file=sys.stderr)
    return 2


# ----------------------------------------------------------------------------- environment faults

_HINTS: dict[int | None, str] = {  # by errno (None: an OSError raised without one)
    errno.ENOSPC: "free disk space",
    errno.EDQUOT: "free disk space (quota exceeded)",
    errno.EACCES: "make it writable or run from another folder",
    errno.EPERM: "make it writable or run from another folder",
    errno.EROFS: "the filesystem is read-only; run from another folder",
    errno.ENOTDIR: "a file stands where a folder is needed; move it away",
}


def named(exc: OSError, path: str | Path) -> OSError:
    """``exc`` about ``path`` (the file the user knows) instead of the temporary file it happened on."""
    return OSError(exc.errno, exc.strerror or str(exc), str(path))


def describe_environment(exc: OSError) -> str:
    """One line for a disk or permission fault: the path, what the system said, what to do."""
    where = f"{exc.filename}: " if exc.filename else ""
    hint = _HINTS.get(exc.errno)
    return f"{where}{exc.strerror or exc}{f'; {hint}' if hint else ''}"


def fail_environment(exc: OSError, code: int = 1, then: str | None = None) -> int:
    """Print ``error: <path>: <reason>; <what to do>`` (no traceback; ``-v`` logs it) and return ``code``."""
    logging.getLogger(__name__).debug("environment fault", exc_info=exc)
    print(f"error: {describe_environment(exc)}{f'; {then}' if then else ''}", file=sys.stderr)
    return code
