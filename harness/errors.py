"""One-line config errors: ``error: <file>[:<line>]: <key>: <what to fix>``, exit code 2."""
from __future__ import annotations

import sys
from pathlib import Path

import yaml
from pydantic import ValidationError


def _line_of(path: str | Path, keys: tuple) -> int | None:
    """Line (1-based) of a key path in a YAML file, or of its deepest existing parent."""
    try:
        node = yaml.compose(Path(path).read_text(encoding="utf-8"), Loader=yaml.SafeLoader)
    except (OSError, yaml.YAMLError):
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


def describe(path: str | Path, exc: BaseException) -> str:
    """The one line for an exception raised while loading a config file."""
    if isinstance(exc, ValidationError):
        err = exc.errors()[0]
        keys = tuple(k for k in err["loc"] if not str(k).startswith("function-after"))
        key = ".".join(str(k) for k in keys) or "(top level)"
        msg = err["msg"].removeprefix("Value error, ")
        if err["type"] == "extra_forbidden":
            msg = f"unknown key; remove it or check its spelling"
        line = _line_of(path, keys)
        return f"{path}{f':{line}' if line else ''}: {key}: {msg}"
    keys = getattr(exc, "keys", None)
    if isinstance(keys, tuple):  # a PreflightError: a key path and a message
        line = _line_of(path, keys)
        return f"{path}{f':{line}' if line else ''}: {'.'.join(map(str, keys))}: {exc}"
    if isinstance(exc, yaml.MarkedYAMLError) and exc.problem_mark is not None:
        problem = exc.problem or exc.context or "invalid YAML"
        if "python/" in str(problem) or "could not determine a constructor" in str(problem):
            problem = f"{problem}; YAML tags that build Python objects are not allowed"
        return f"{path}:{exc.problem_mark.line + 1}: yaml: {problem}"
    if isinstance(exc, OSError):
        return f"{path}: file: {exc.strerror or exc}"
    return f"{path}: {type(exc).__name__}: {exc}"


def fail_config(path: str | Path, exc: BaseException) -> int:
    print(f"error: {describe(path, exc)}", file=sys.stderr)
    return 2
