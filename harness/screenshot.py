"""A screenshot of a study's runs in the MLflow UI, taken with Debian's headless Chromium.

    python -m harness.screenshot --study table1 --out docs/mlflow-runs.png

Starts ``mlflow ui`` on the project's store (127.0.0.1, a free port), opens the
study's runs page in headless Chromium driven by Playwright (no browser
download: ``/usr/bin/chromium`` from ``apt-get install chromium``), unfolds the
newest parent run so its trials show, and saves the page as a PNG.
"""
from __future__ import annotations

import argparse
import socket
import sys
from pathlib import Path

from . import ui

CHROMIUM = Path("/usr/bin/chromium")
# Chromium's background services try hosts this network refuses; keep it to the page.
FLAGS = ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run", "--disable-background-networking",
         "--disable-component-update", "--disable-sync"]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def capture(study: str, out: Path, *, work: Path = Path("work")) -> Path:
    from playwright.sync_api import sync_playwright

    from .tracking import Tracker, default_uri

    uri = default_uri(work)
    exp_id = Tracker(uri).experiments()[study]
    port = free_port()
    proc = ui.start(uri, port=port)
    try:
        ui.wait_ready(proc, f"http://127.0.0.1:{port}")
        with sync_playwright() as p:
            browser = p.chromium.launch(executable_path=str(CHROMIUM), headless=True, args=FLAGS)
            try:
                page = browser.new_page(viewport={"width": 1400, "height": 900})
                page.goto(ui.runs_url("127.0.0.1", port, exp_id))
                parent = page.locator('[role="row"]', has_text=study).first
                parent.wait_for(timeout=60_000)
                parent.locator("button").first.click()  # unfold the trials of the newest invocation
                page.wait_for_timeout(2_000)
                out.parent.mkdir(parents=True, exist_ok=True)
                page.screenshot(path=str(out))
            finally:
                browser.close()
    finally:
        ui.stop(proc)
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--study", default="table1")
    parser.add_argument("--out", default="docs/mlflow-runs.png")
    args = parser.parse_args(argv)
    if not CHROMIUM.exists():
        print("error: /usr/bin/chromium is missing; apt-get install -y chromium", file=sys.stderr)
        return 2
    print(capture(args.study, Path(args.out)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
