"""``harness ui``: the MLflow UI for the project's tracking store, on 127.0.0.1 by default.

    harness ui                      # each study: its runs page and the compare page of its latest trials
    harness ui --study table1       # the same for one study, and opens its compare page in a browser

Runs ``mlflow ui --backend-store-uri <store> --host H --port P`` as a child
process (an argument list, no shell), waits until it answers, prints each
study's links, and stops it on Ctrl-C. The links open MLflow 3.17 the way a
training user wants it:

* ``workflowType=machine_learning`` in every link: the model-training layout.
  MLflow 3.17 takes the layout from the link or from a switch it remembers
  per browser (GenAI by default), not from the experiment's
  ``mlflow.experimentKind`` tag.
* the runs link opens the study's saved view (:mod:`harness.uiview`): trials
  grouped by table line, with row, seed, block, params, GFLOPs and top-1 as
  columns; the chart button next to the table shows the rows' charts.
* the compare link lists the trials of the study's latest ``harness run``
  side by side (parallel coordinates, params, metrics).

On a browser's first visit to a server on localhost, MLflow 3.17 opens its
assistant over a third of the page and picks the GenAI layout. Nothing on the
server turns either off, so the server runs as an ``mlflow.app`` plugin
(:func:`server_app`) whose page sets two first-visit defaults in the
browser's storage: model-training layout, assistant not opened. A choice the
user made is kept. Without the plugin registered (an install older than
this), the plain ``mlflow ui`` runs and the links still set the layout.

With ``MLFLOW_TRACKING_URI=http://...`` (a shared tracking server) there is
nothing to start: it prints each study's runs page on that server.

Binding another host than 127.0.0.1 exposes every run to that network; the
MLflow server has no authentication.
"""
from __future__ import annotations

import json
import logging
import os
import shutil
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Mapping
from dataclasses import dataclass
from importlib.metadata import entry_points
from pathlib import Path
from typing import Any

from harness.uiview import TRIALS_VIEW

log = logging.getLogger(__name__)

APP_NAME = "harness"  # the mlflow.app entry point (pyproject.toml) naming server_app
MODEL_TRAINING = "workflowType=machine_learning"


# ----------------------------------------------------------------------------- the server


def mlflow_command(uri: str, *, host: str, port: int) -> list[str]:
    exe = Path(sys.executable).parent / "mlflow"
    cmd = [str(exe)] if exe.exists() else [shutil.which("mlflow") or "mlflow"]
    # one web worker: the UI serves one person; the default 4 cost ~2 GB on a laptop
    cmd += ["ui", "--backend-store-uri", uri, "--host", host, "--port", str(port), "--workers", "1"]
    if entry_points(group="mlflow.app", name=APP_NAME):
        cmd += ["--app-name", APP_NAME]
    from harness.tracking import sqlite_path

    db = sqlite_path(uri)
    if db is not None:  # artifacts beside the database, as harness.tracking writes them
        cmd += ["--default-artifact-root", (db.parent / "mlartifacts").resolve().as_uri()]
    return cmd


# MLflow's own storage keys (``<key>_v<version>``, JSON values), set only where the browser holds none.
FIRST_VISIT = {"mlflow.workflowType_v1": json.dumps("machine_learning"),
               "mlflow.assistant.fab.autoOpenedOnFirstLoad_v1": "true"}
FIRST_VISIT_SCRIPT = ("<script>/* harness ui: first-visit defaults */ for (const [k, v] of Object.entries("
                      f"{json.dumps(FIRST_VISIT)})) if (localStorage.getItem(k) === null) localStorage.setItem(k, v);"
                      "</script>").encode()


def with_first_visit(html: bytes) -> bytes:
    """MLflow's page with the first-visit script run before its own (the page loads its code deferred)."""
    return html.replace(b"<head>", b"<head>" + FIRST_VISIT_SCRIPT, 1)


class FirstVisit:
    """ASGI wrapper of the MLflow server: its page (``GET /``) gets :func:`with_first_visit`, all else passes."""

    def __init__(self, app: Any) -> None:
        self.app = app

    async def __call__(self, scope: dict, receive: Any, send: Any) -> None:
        if scope["type"] != "http" or scope["method"] != "GET" or scope["path"] != "/":
            return await self.app(scope, receive, send)
        # the whole page, uncompressed and never "304 not modified", so the script can go in
        dropped = (b"accept-encoding", b"if-none-match", b"if-modified-since")
        scope = {**scope, "headers": [(k, v) for k, v in scope["headers"] if k.lower() not in dropped]}
        start: dict = {}
        body: list[bytes] = []

        async def keep(message: dict) -> None:
            if message["type"] == "http.response.start":
                start.update(message)
            else:
                body.append(message.get("body", b""))

        await self.app(scope, receive, keep)
        page = with_first_visit(b"".join(body))
        headers = [(k, v) for k, v in start.get("headers", []) if k.lower() != b"content-length"]
        await send({**start, "headers": headers + [(b"content-length", str(len(page)).encode())]})
        await send({"type": "http.response.body", "body": page})


def server_app() -> FirstVisit:
    """The ``mlflow.app`` factory ``mlflow ui --app-name harness`` runs: MLflow's server, first-visit defaults."""
    from mlflow.server.fastapi_app import app

    return FirstVisit(app)


def start(uri: str, *, host: str = "127.0.0.1", port: int = 5000, log_file: Path | None = None) -> subprocess.Popen:
    """Start the UI server; stop it with :func:`stop`."""
    out = open(log_file, "ab") if log_file else subprocess.DEVNULL  # noqa: SIM115 - owned by the child
    env = {**os.environ, "MLFLOW_DISABLE_TELEMETRY": "true"}
    return subprocess.Popen(mlflow_command(uri, host=host, port=port), stdout=out, stderr=subprocess.STDOUT,
                            env=env, start_new_session=True)


def wait_ready(proc: subprocess.Popen, base_url: str, timeout: float = 90.0) -> None:
    """Block until the server answers its REST API (~10-15 s here); raise if it died or timed out."""
    deadline = time.monotonic() + timeout
    url = f"{base_url}/api/2.0/mlflow/experiments/search?max_results=1"
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"mlflow ui exited with code {proc.returncode} before it answered")
        try:
            with urllib.request.urlopen(url, timeout=2) as r:
                if r.status == 200:
                    return
        except (urllib.error.URLError, OSError):
            pass
        time.sleep(0.5)
    raise TimeoutError(f"mlflow ui did not answer {url} within {timeout:.0f} s")


def stop(proc: subprocess.Popen, timeout: float = 15.0) -> None:
    """SIGTERM the server's process group (it forks workers), then SIGKILL if it lingers."""
    if proc.poll() is not None:
        return
    try:
        os.killpg(proc.pid, signal.SIGTERM)
        proc.wait(timeout)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(timeout)
    except ProcessLookupError:
        pass


# ----------------------------------------------------------------------------- the links


def runs_url(base: str, experiment_id: str, *, charts: bool = False) -> str:
    """The study's runs page in its saved view of the trials (``charts``: the chart view of it)."""
    mode = "&compareRunsMode=CHART" if charts else ""
    return f"{base}/#/experiments/{experiment_id}/runs?{MODEL_TRAINING}&viewStateShareKey={TRIALS_VIEW}{mode}"


def compare_url(base: str, experiment_id: str, run_ids: list[str]) -> str:
    """MLflow's compare page of these runs (their ids as a JSON list, quotes escaped so terminals link it whole)."""
    def ids(values: list[str]) -> str:
        return urllib.parse.quote(json.dumps(values, separators=(",", ":")), safe="[],")

    return f"{base}/#/compare-runs?runs={ids(run_ids)}&experiments={ids([experiment_id])}&{MODEL_TRAINING}"


@dataclass(frozen=True)
class StudyLinks:
    study: str
    runs: str
    compare: str | None  # None before the study's first trial


def study_links(tracker: Any, base: str, studies: Mapping[str, str]) -> list[StudyLinks]:
    """Each study's links (``studies``: name -> experiment id), read from the store through ``tracker``
    (a :class:`harness.tracking.Tracker`); the compare page holds the trials of the latest invocation."""
    out = []
    for study, exp_id in studies.items():
        parents = tracker.parents(study)
        latest = max(parents, key=lambda p: p.start_time, default=None)
        trials = [r.run_id for r in tracker.children(latest.run_id).values()] if latest else []
        out.append(StudyLinks(study, runs_url(base, exp_id), compare_url(base, exp_id, trials) if trials else None))
    return out


def graphical_browser(env: Mapping[str, str], platform: str) -> bool:
    """Whether ``webbrowser`` would open a window, not a text browser or nothing: never under CI."""
    if env.get("CI"):
        return False
    return platform in ("darwin", "win32") or bool(env.get("DISPLAY") or env.get("WAYLAND_DISPLAY"))


# ----------------------------------------------------------------------------- harness ui


def server_url(uri: str) -> str | None:
    """The base URL of a tracking server store (``MLFLOW_TRACKING_URI=http://...``): its UI is already served
    there, nothing to start. None for a local store."""
    return uri.rstrip("/") if uri.startswith(("http://", "https://")) else None


def browse_line(uri: str, study: str, experiment_id: str | None) -> str:
    """What ``harness run`` prints at its end: the study's runs page on the server, or how to serve a local store."""
    server = server_url(uri)
    if server is not None:
        return f"browse the runs: {runs_url(server, str(experiment_id))}"
    return f"browse the runs: harness ui --study {study}   (then {runs_url('http://127.0.0.1:5000', str(experiment_id))})"


def main(args: Any) -> int:
    """``harness ui [--port P] [--host H] [--study NAME] [--no-browser]``."""
    from harness.files import WORK
    from harness.tracking import Tracker, default_uri, sqlite_path

    uri = default_uri(WORK)
    db = sqlite_path(uri)
    if db is not None and not db.exists():
        log.error("no MLflow store at %s yet; run `harness run studies/table1.yaml` first", db)
        return 1
    tracker = Tracker(uri)
    experiments = chosen_studies(tracker, args.study)
    if experiments is None:
        return 1
    server = server_url(uri)
    if server is not None:  # a tracking server serves its own UI: nothing to start
        links = study_links(tracker, server, experiments)
        print_links(uri, server, links, serving=False)
        if args.study and not args.no_browser:
            open_in_browser(links[0].compare)
        return 0
    proc = start(uri, host=args.host, port=args.port)
    # SIGTERM (a service manager, `timeout`) stops the server too, not only Ctrl-C
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    try:
        base = f"http://{args.host}:{args.port}"
        wait_ready(proc, base)
        links = study_links(tracker, base, experiments)
        print_links(uri, base, links)
        if args.study and not args.no_browser:
            open_in_browser(links[0].compare)
        return proc.wait()
    except KeyboardInterrupt:
        return 0
    except (RuntimeError, TimeoutError) as e:
        log.error("%s", e)
        return 1
    finally:
        stop(proc)


def chosen_studies(tracker: Any, study: str | None) -> dict[str, str] | None:
    """Study name -> experiment id (one study with ``--study``; None, said, when it is not in the store).
    Each gets the harness's experiment tags now: a study run before the saved view existed has it then."""
    experiments = tracker.experiments()
    if study:
        if study not in experiments:
            log.error("no study %r in %s; known: %s", study, tracker.uri, ", ".join(experiments) or "none")
            return None
        experiments = {study: experiments[study]}
    for name in experiments:
        tracker.experiment_id(name)
    return experiments


def open_in_browser(url: str | None) -> None:
    """Open ``url`` where a graphical browser exists (over SSH or under CI ``webbrowser`` would pick a text one)."""
    if url and graphical_browser(os.environ, sys.platform):
        import webbrowser

        webbrowser.open(url)


def print_links(uri: str, base: str, links: list[StudyLinks], *, serving: bool = True) -> None:
    print(f"MLflow UI for {uri}" if serving else f"MLflow UI of the tracking server {base}")
    for link in links:
        print(f"  {link.study}")
        print(f"    runs:    {link.runs}")
        print(f"    compare: {link.compare or 'no trial yet'}")
    if not links:
        print(f"  no study yet: {base}/")
    if serving:
        print("Ctrl-C stops it.")
    sys.stdout.flush()
