"""Where the harness writes, and the one way it writes: whole files or nothing.

``WORK`` (git-ignored) holds the MLflow store, Ray's trial storage and training
folders; ``RESULTS`` the tables. Both are relative to the current folder, as
the README's commands are.

Every file a crash must not leave half-written (checkpoints, tables, figures,
metrics) goes through :func:`write_atomic`: a temporary file in the same
folder, flushed and fsynced, then renamed over the target. A reader sees the
old file or the new one, never a torn one, even after a power cut.
"""
from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import BinaryIO

from harness.errors import named

WORK = Path("work")
RESULTS = Path("results")


def default_uri(work_dir: str | Path = WORK) -> str:
    """The MLflow store: ``MLFLOW_TRACKING_URI`` if set, else the project's sqlite file under the git-ignored
    work dir. Here, not in :mod:`harness.tracking`, so that naming the store does not import MLflow."""
    env = os.environ.get("MLFLOW_TRACKING_URI")
    if env:
        return env
    return f"sqlite:///{(Path(work_dir).resolve() / 'mlflow.db').as_posix()}"


def sqlite_path(uri: str) -> Path | None:
    """The database file of a ``sqlite:///`` URI (None for other stores)."""
    if not uri.startswith("sqlite:///"):
        return None
    path = uri.removeprefix("sqlite:///")
    return Path(path if path.startswith("/") else Path.cwd() / path)


def write_atomic(data: str | bytes | Callable[[BinaryIO], object], path: str | Path) -> Path:
    """Write ``data`` (text, bytes, or a function that writes to the open file) to ``path`` all or nothing.

    An ``OSError`` (a full disk) names ``path``, the file the user knows, not the temporary file.
    """
    path = Path(path)
    tmp: str | None = None
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
        with os.fdopen(fd, "wb") as f:
            if callable(data):
                data(f)
            else:
                f.write(data.encode("utf-8") if isinstance(data, str) else data)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, 0o644)  # mkstemp makes 0600; results and checkpoints are for everyone to read
        os.replace(tmp, path)
    except BaseException as e:
        if tmp is not None:
            Path(tmp).unlink(missing_ok=True)
        if isinstance(e, OSError):
            raise named(e, path) from e
        raise
    return path


def copy_atomic(src: str | Path, dst: str | Path) -> Path:
    """Copy a finished file (``last.pt`` -> ``best.pt``) with the same all-or-nothing rule."""
    def copy(f: BinaryIO) -> None:
        with open(src, "rb") as s:
            shutil.copyfileobj(s, f)

    return write_atomic(copy, dst)
