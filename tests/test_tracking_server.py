"""A real MLflow tracking server over HTTP, the store a team shares: ``mlflow server`` with its own sqlite
backend and a served artifact folder on 127.0.0.1, ``MLFLOW_TRACKING_URI=http://...``, a tiny study killed at its
first epoch line and resumed, its tables rebuilt by ``harness tables``, and every trial one child run with its
artifacts. Nothing of it touches a local ``work/mlflow.db``.

    mlflow server --backend-store-uri sqlite:///DB --artifacts-destination DIR --host 127.0.0.1 --port P

(artifacts are served by default, ``--serve-artifacts``: new experiments get ``mlflow-artifacts:/`` and clients
upload through the server, so no client needs the artifact folder mounted.)
"""
from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
import uuid
from collections import Counter
from pathlib import Path

import pandas as pd
import pytest
from conftest import EPOCH_LINE, Driver, clean_env, harness, kill_marked, kill_on, write_study


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def answers(url: str) -> bool:
    try:
        with urllib.request.urlopen(f"{url}/api/2.0/mlflow/experiments/search?max_results=1", timeout=2) as r:
            return r.status == 200
    except (urllib.error.URLError, OSError):
        return False


@pytest.fixture
def mlflow_server(tmp_path):
    """``mlflow server`` in its own session; its URL once its REST API answers (polled, no fixed wait)."""
    port = free_port()
    exe = Path(sys.executable).parent / "mlflow"
    store = tmp_path / "server"
    store.mkdir()
    log = open(store / "server.log", "wb")  # noqa: SIM115 - closed below
    proc = subprocess.Popen([str(exe), "server", "--backend-store-uri", f"sqlite:///{store / 'mlflow.db'}",
                             "--artifacts-destination", str(store / "artifacts"), "--host", "127.0.0.1",
                             "--port", str(port), "--workers", "1"],
                            stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
                            env={**clean_env(), "MLFLOW_DISABLE_TELEMETRY": "true"})
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 180
        while not answers(url):
            assert proc.poll() is None, f"mlflow server exited: {(store / 'server.log').read_text()[-2000:]}"
            assert time.monotonic() < deadline, "mlflow server did not answer within 180 s"
            time.sleep(0.5)
        yield url, store
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGTERM)
            try:
                proc.wait(30)
            except subprocess.TimeoutExpired:
                pass
        try:  # its job consumers (huey) can outlive the main process: the rest of its group, by the group id
            os.killpg(proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        proc.wait(30)
        log.close()


@pytest.mark.slow
def test_a_study_on_an_mlflow_server_is_killed_resumed_and_rebuilt(tmp_path, synth_root, mlflow_server):
    from harness.tracking import Tracker

    url, store = mlflow_server
    folder = tmp_path / "project"
    folder.mkdir()
    epochs = 2
    write_study(folder, synth_root, epochs=epochs, seeds=1)
    marker = uuid.uuid4().hex
    env = clean_env(HARNESS_TEST_MARKER=marker, MLFLOW_TRACKING_URI=url)
    try:
        driver = Driver(["run", "tiny.yaml"], folder, env, folder / "driver-0.log", hold=(EPOCH_LINE, 1))
        assert kill_on(driver, marker) == "trials", f"see {driver.log}"
        r = harness(["run", "tiny.yaml", "--resume"], folder, env=env)
        assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-3000:]
    finally:
        kill_marked(marker)
    assert "View run" not in r.stdout, "MLflow's own link at every run's end is off"
    assert f"browse the runs: {url}/#/experiments/" in r.stdout, "the runs page is the server's"
    ui = harness(["ui", "--study", "tiny"], folder, env=env)  # the server serves its UI: nothing to start
    assert ui.returncode == 0 and f"runs:    {url}/#/experiments/" in ui.stdout, ui.stdout + ui.stderr
    assert "Ctrl-C" not in ui.stdout, "nothing was started, nothing to stop"
    assert not (folder / "work" / "mlflow.db").exists(), "nothing went to a local store"

    t = Tracker(url)
    [parent] = t.parents("tiny")
    assert parent.status == "FINISHED"
    runs = [r for r in t.runs("tiny", deleted=True) if "harness.trial_key" in r.tags]
    keys = {f"tiny/laptop/{row}/seed0" for row in ("TSN", "TSM")}
    assert Counter(r.tags["harness.trial_key"] for r in runs) == Counter(keys), "one child run per trial"
    for run in runs:
        key = run.tags["harness.trial_key"]
        assert run.status == "FINISHED" and run.tags["mlflow.parentRunId"] == parent.run_id, key
        steps = [step for step, _ in t.metric_history(run.run_id, "val_top1")]
        assert sorted(steps) == list(range(1, epochs + 1)), (key, steps)
        assert {a.path for a in t.client.list_artifacts(run.run_id)} >= {"trial.yaml", "predictions.json"}, key
        predictions = t.read_json(run.run_id, "predictions.json")  # downloaded through the server
        assert predictions and json.dumps(predictions)
    results = {Path(a.path).name for a in t.client.list_artifacts(parent.run_id, "results")}
    assert {"tiny.md", "tiny.csv", "tiny.tex", "tiny.png"} <= results, results
    # the server keeps the files in its own artifact folder, not the client's
    assert list((store / "artifacts").rglob("trial.yaml")) and list((store / "artifacts").rglob("tiny.md"))

    kept = pd.read_csv(folder / "results" / "tiny.csv").drop(columns=["date"])
    for p in (folder / "results").iterdir():
        p.unlink()
    r = harness(["tables", "tiny.yaml"], folder, env=clean_env(MLFLOW_TRACKING_URI=url))
    assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-3000:]
    pd.testing.assert_frame_equal(pd.read_csv(folder / "results" / "tiny.csv").drop(columns=["date"]), kept)
