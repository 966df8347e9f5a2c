"""Plugin blocks as the Ray workers see them, checked by the driver before any trial.

    harness run my-study.yaml      # harness.run calls check_workers(study, address) before the trials

Why: Ray puts the driver's working folder on its workers' import path. A folder
there named like a plugin's package (the plugin's project folder, in a flat
layout installed with ``pip install -e``) is imported by the workers as an
empty namespace package instead of the installed package, so they register no
block, while the driver, which validated the study, does. Every trial would
then fail on "unknown block", and be retried for it. Here one tiny Ray task
per node imports the plugin entry points as a trial does (same Ray job, same
working folder) and reports what it registered and where each module came
from; a block a row needs that the workers lack is a config error naming the
package, where the workers imported it from, and the fix.

``--dry-run`` starts no Ray: it only predicts the shadowing case (a WARNING).
What it gives up: a study whose rows all use built-in blocks is not checked
(no Ray is started for it), a node that joins the cluster after the check is
not checked either, and a checked run starts Ray twice (the check's, then the
trials'): a few seconds.
"""
from __future__ import annotations

import logging
import os
import sys
from importlib.machinery import PathFinder
from pathlib import Path
from typing import Any

from .config import Study
from .preflight import PreflightError

log = logging.getLogger(__name__)

BUILT_IN = "built-in"


class PluginError(PreflightError):
    """A row's plugin block that the Ray workers cannot build; ``keys`` points at the row's ``block``."""


def survey() -> dict[str, Any]:
    """This process's view of the blocks: name -> package, one report per entry point, or the registry's error.

    Runs in the driver and, as a Ray task, in the workers (JSON-able, so it travels back).
    """
    import blocks

    try:
        names = blocks.available()
    except ValueError as exc:  # two packages register one name: that is the whole answer
        return {"error": str(exc), "blocks": {}, "plugins": [], "cwd": os.getcwd()}
    return {"error": None, "blocks": {n: blocks.origin(n) for n in names}, "plugins": blocks.plugins(),
            "cwd": os.getcwd()}


def plugin_rows(study: Study) -> dict[str, str]:
    """Rows whose block comes from a plugin, and that block (what the workers must see)."""
    import blocks

    return {name: row.block for name, row in study.rows.items() if blocks.origin(row.block) != BUILT_IN}


def check_workers(study: Study, address: str | None = None, *, dry_run: bool = False,
                  timeout: float = 120.0) -> None:
    """Raise :class:`PluginError` when a Ray worker cannot build a plugin block that a row uses.

    Starts Ray (or joins ``address``) for the check only when a row uses a
    plugin block, and shuts down a Ray it started. ``dry_run``: no Ray; a
    WARNING for each plugin package the start folder would shadow in the workers.
    """
    needed = plugin_rows(study)
    if not needed:
        return
    if dry_run:
        for warning in shadowed(set(needed.values())):
            log.warning("%s", warning)
        return
    import time

    from harness.tune.session import on_every_node, session

    start = time.perf_counter()
    with session(address):
        views = on_every_node(survey, timeout)
    if not views:
        log.warning("could not ask the Ray workers which blocks they register; not checked")
        return
    here = survey()
    for node, there in views.items():
        for row, block in needed.items():
            problem = compare(here, there, block, where=f" (node {node})" if len(views) > 1 else "")
            if problem is not None:
                raise PluginError(("rows", row, "block"), problem)
    log.info("plugin blocks %s: the Ray workers register them as the driver does (checked in %.1f s)",
             ", ".join(sorted(set(needed.values()))), time.perf_counter() - start)


def shadowed(block_names: set[str], start: str | Path | None = None) -> list[str]:
    """What the Ray workers would get wrong, predicted without Ray: plugin packages of these blocks that,
    with the start folder first on the import path (as Ray puts it), resolve to a namespace folder there."""
    import blocks

    start = Path(start or os.getcwd()).resolve()
    out = []
    for report in blocks.plugins():
        if report["block"] not in block_names:
            continue
        top = report["module"].split(".")[0]
        spec = PathFinder.find_spec(top, [str(start), *sys.path])
        places = list(spec.submodule_search_locations or []) if spec is not None and spec.origin is None else []
        if any(Path(p).resolve() == start / top for p in places):
            out.append(f"block {report['block']!r} of package {report['package']!r}: the Ray workers would import "
                       f"{top!r} from {start / top}, a folder without __init__.py in the folder you run from, "
                       "instead of the installed package (Ray puts that folder on their import path), and find "
                       "no block; run from another folder, or move the package under src/ (docs/adding-a-block.md)")
    return out


def compare(here: dict[str, Any], there: dict[str, Any], block: str, where: str = "") -> str | None:
    """Why the workers (``there``, on node ``where``) cannot build ``block`` as the driver (``here``) does, or None."""
    package = here["blocks"].get(block)
    if there["error"]:
        return f"the Ray workers{where} cannot load the block plugins: {there['error']}"
    if there["blocks"].get(block) == package:
        return None
    imported = next((p["location"] for p in here["plugins"] if p["package"] == package), None)
    head = (f"block {block!r} of package {package!r} (imported here from {imported}) is missing in the "
            f"Ray workers{where}")
    if block in there["blocks"]:
        return f"{head}: there it comes from {there['blocks'][block]!r}; uninstall one of the two packages"
    report = next((p for p in there["plugins"] if p["package"] == package), None)
    if report is None:
        return (f"{head}: {package!r} is not installed in the workers' Python environment; install it "
                f"there too (pip install {package}), in the environment that runs the harness")
    return f"{head}: {report['error'] or 'its module registers no such block'}{_in_start_folder(report, here['cwd'])}"


def _in_start_folder(report: dict[str, Any], cwd: str) -> str:
    """The likely cause, said when the module the workers imported lies in the folder the run started from."""
    places = (report.get("location") or "").split(os.pathsep)
    if not any(p and Path(p).resolve().parent == Path(cwd).resolve() for p in places):
        return ""
    return f" (Ray puts {cwd}, the folder `harness run` started in, on the workers' import path)"
