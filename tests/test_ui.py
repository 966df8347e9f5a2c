"""``harness ui`` serves the project's MLflow store; headless Chromium (Debian's) sees a study's runs.

No browser is downloaded: playwright drives /usr/bin/chromium through ``executable_path``.
"""
from __future__ import annotations

import os
import queue
import signal
import subprocess
import sys
import threading
import time
import uuid
from pathlib import Path

import pytest
from conftest import kill_marked

from harness.screenshot import CHROMIUM, FLAGS, free_port


def make_store(folder: Path) -> None:
    """A study with one parent run and two child runs in the default store under ``folder/work``."""
    from harness.tracking import NewChild, Tracker

    t = Tracker(f"sqlite:///{folder / 'work' / 'mlflow.db'}")
    t.prepare()
    parent = t.start_parent("uistudy", "laptop", params={"study": "uistudy"}, tags={})
    t.client.update_run(parent, name="uistudy parent run")
    ids = t.ensure_children(parent, [NewChild(f"uistudy/laptop/{row}/seed0", f"{row} child run",
                                              {"harness.row": row, "harness.seed": "0"}) for row in ("TSN", "TSM")])
    for rid in ids.values():
        t.log_epoch(rid, {"epoch": 1, "val_top1": 50.0})
        t.finish_child(rid, "FINISHED", summary={"best_top1": 50.0})
    t.finish(parent, "FINISHED")


def read_url(proc: subprocess.Popen, timeout: float) -> str:
    """The runs-page URL ``harness ui`` prints once the server answers (read by a thread: no select on a buffer)."""
    lines: queue.Queue[str] = queue.Queue()
    threading.Thread(target=lambda: [lines.put(line) for line in proc.stdout], daemon=True).start()
    deadline, seen = time.monotonic() + timeout, []
    while time.monotonic() < deadline:
        try:
            line = lines.get(timeout=1.0)
        except queue.Empty:
            if proc.poll() is not None:
                break
            continue
        seen.append(line)
        if "/#/experiments/" in line:
            return line.split(": ", 1)[1].strip()
    raise AssertionError(f"harness ui printed no runs URL in {timeout:.0f} s: {''.join(seen)}")


@pytest.mark.slow
def test_ui_serves_the_study_runs_to_headless_chromium(tmp_path):
    if not CHROMIUM.exists():
        pytest.skip("Debian's chromium is not installed at /usr/bin/chromium (apt-get install -y chromium)")
    from playwright.sync_api import sync_playwright

    make_store(tmp_path)
    port, marker = free_port(), uuid.uuid4().hex
    env = {k: v for k, v in os.environ.items() if k != "MLFLOW_TRACKING_URI"}
    env.update(PYTHONUNBUFFERED="1", HARNESS_TEST_MARKER=marker)
    proc = subprocess.Popen([sys.executable, "-m", "harness.cli", "ui", "--port", str(port), "--study", "uistudy"],
                            cwd=tmp_path, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            start_new_session=True)
    try:
        url = read_url(proc, timeout=120)
        assert url.startswith(f"http://127.0.0.1:{port}/#/experiments/") and url.endswith("/runs")
        with sync_playwright() as p:
            browser = p.chromium.launch(executable_path=str(CHROMIUM), headless=True, args=FLAGS)
            try:
                page = browser.new_page(viewport={"width": 1400, "height": 900})
                page.goto(url)
                page.get_by_text("uistudy parent run").first.wait_for(timeout=60_000)
                # child runs are folded under their parent: expand it
                row = page.locator('[role="row"]', has_text="uistudy parent run").first
                row.locator("button").first.click()
                for name in ("TSN child run", "TSM child run"):
                    page.get_by_text(name).first.wait_for(timeout=30_000)
                page.screenshot(path=str(tmp_path / "runs.png"))
            finally:
                browser.close()
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)  # harness ui stops its mlflow server on SIGTERM
            try:
                proc.wait(30)
            except subprocess.TimeoutExpired:
                pass
        kill_marked(marker)
