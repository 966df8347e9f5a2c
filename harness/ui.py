"""``harness ui``: the MLflow UI for the project's tracking store, on 127.0.0.1 by default.

    harness ui                      # http://127.0.0.1:5000/#/experiments/<id>/runs
    harness ui --port 5001 --study table1

Runs ``mlflow ui --backend-store-uri <store> --host H --port P`` as a child
process (an argument list, no shell), waits until it answers, prints the
runs page of each study (the UI otherwise opens on a GenAI overview page),
and stops it on Ctrl-C. Child runs (trials) show folded under their parent
run (one ``harness run`` invocation); expand the parent to see them.

With ``MLFLOW_TRACKING_URI=http://...`` (a shared tracking server) there is
nothing to start: it prints each study's runs page on that server.

Binding another host than 127.0.0.1 exposes every run to that network; the
MLflow server has no authentication.
"""
from __future__ import annotations

import logging
import os
import shutil
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)


def mlflow_command(uri: str, *, host: str, port: int) -> list[str]:
    exe = Path(sys.executable).parent / "mlflow"
    cmd = [str(exe)] if exe.exists() else [shutil.which("mlflow") or "mlflow"]
    # one web worker: the UI serves one person; the default 4 cost ~2 GB on a laptop
    cmd += ["ui", "--backend-store-uri", uri, "--host", host, "--port", str(port), "--workers", "1"]
    from harness.tracking import sqlite_path

    db = sqlite_path(uri)
    if db is not None:  # artifacts beside the database, as harness.tracking writes them
        cmd += ["--default-artifact-root", (db.parent / "mlartifacts").resolve().as_uri()]
    return cmd


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


def runs_url(host: str, port: int, experiment_id: str) -> str:
    return f"http://{host}:{port}/#/experiments/{experiment_id}/runs"


def server_url(uri: str) -> str | None:
    """The base URL of a tracking server store (``MLFLOW_TRACKING_URI=http://...``): its UI is already served
    there, nothing to start. None for a local store."""
    return uri.rstrip("/") if uri.startswith(("http://", "https://")) else None


def browse_line(uri: str, study: str, experiment_id: str | None) -> str:
    """What ``harness run`` prints at its end: the study's runs page on the server, or how to serve a local store."""
    server = server_url(uri)
    if server is not None:
        return f"browse the runs: {server}/#/experiments/{experiment_id}/runs"
    return (f"browse the runs: harness ui --study {study}   "
            f"(then http://127.0.0.1:5000/#/experiments/{experiment_id}/runs)")


def main(args: Any) -> int:
    """``harness ui [--port P] [--host H] [--study NAME]``."""
    from harness.files import WORK
    from harness.tracking import Tracker, default_uri, sqlite_path

    uri = default_uri(WORK)
    db = sqlite_path(uri)
    if db is not None and not db.exists():
        log.error("no MLflow store at %s yet; run `harness run studies/table1.yaml` first", db)
        return 1
    experiments = Tracker(uri).experiments()
    if args.study:
        if args.study not in experiments:
            log.error("no study %r in %s; known: %s", args.study, uri, ", ".join(experiments) or "none")
            return 1
        experiments = {args.study: experiments[args.study]}
    server = server_url(uri)
    if server is not None:  # a tracking server serves its own UI
        print(f"MLflow UI of the tracking server {server}")
        for name, exp_id in experiments.items():
            print(f"  {name}: {server}/#/experiments/{exp_id}/runs")
        return 0
    proc = start(uri, host=args.host, port=args.port)
    # SIGTERM (a service manager, `timeout`) stops the server too, not only Ctrl-C
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    try:
        wait_ready(proc, f"http://{args.host}:{args.port}")
        print(f"MLflow UI for {uri}")
        for name, exp_id in experiments.items():
            print(f"  {name}: {runs_url(args.host, args.port, exp_id)}")
        if not experiments:
            print(f"  no study yet: http://{args.host}:{args.port}/")
        print("Ctrl-C stops it.")
        sys.stdout.flush()
        return proc.wait()
    except KeyboardInterrupt:
        return 0
    except (RuntimeError, TimeoutError) as e:
        log.error("%s", e)
        return 1
    finally:
        stop(proc)
