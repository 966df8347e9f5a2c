"""Screenshots of a study in the MLflow UI as ``harness ui`` serves it, taken with Debian's headless Chromium.

    python -m harness.screenshot --study table1          # docs/mlflow-runs.png and docs/mlflow-charts.png

Starts the UI server on the project's store (127.0.0.1, a free port), opens
the study's runs link (its trials grouped by row, with their columns) and
the chart view of it in a new Chromium profile, a user's first visit,
driven by Playwright (no browser download: ``/usr/bin/chromium`` from
``apt-get install chromium``), and saves each page as a PNG once its trials
and charts are drawn.
"""
from __future__ import annotations

import argparse
import socket
import sys
from pathlib import Path
from typing import TYPE_CHECKING

from . import ui

if TYPE_CHECKING:  # playwright is a test extra, imported when a screenshot is taken
    from playwright.sync_api import Page

CHROMIUM = Path("/usr/bin/chromium")
# Chromium's background services try hosts this network refuses; keep it to the page.
FLAGS = ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run", "--disable-background-networking",
         "--disable-component-update", "--disable-sync"]
# charts drawn with data: plotly plots holding a mark (a point or a bar)
DRAWN = "[...document.querySelectorAll('.js-plotly-plot')].filter(p => p.querySelector('.points path, .bars .point'))"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def capture(study: str, runs_png: Path, charts_png: Path, *, work: Path = Path("work")) -> list[Path]:
    from playwright.sync_api import sync_playwright

    from .tracking import Tracker, default_uri

    uri = default_uri(work)
    tracker = Tracker(uri)
    experiments = tracker.experiments()
    if study not in experiments:
        raise LookupError(f"no study {study!r} in {uri}; run `harness run` first")
    exp_id = experiments[study]
    tracker.experiment_id(study)  # an older experiment gets the saved view now
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    proc = ui.start(uri, port=port)
    try:
        ui.wait_ready(proc, base)
        with sync_playwright() as p:
            browser = p.chromium.launch(executable_path=str(CHROMIUM), headless=True, args=FLAGS)
            try:
                page = browser.new_page(viewport={"width": 1400, "height": 1340})  # Table 1's 20 trials, 10 rows
                shoot_runs(page, ui.runs_url(base, exp_id), runs_png)
                page.set_viewport_size({"width": 1400, "height": 1000})
                shoot_charts(page, charts_png)
            finally:
                browser.close()
    finally:
        ui.stop(proc)
    return [runs_png, charts_png]


def shoot_runs(page: Page, url: str, out: Path) -> None:
    """The trials table: saved once a trial row shows its last top-1."""
    page.goto(url)
    page.locator('[role="row"]', has_text="Group:").first.wait_for(timeout=90_000)
    page.locator('[role="gridcell"][col-id="metrics.`last_top1`"]').first.wait_for(timeout=60_000)
    save(page, out)


def shoot_charts(page: Page, out: Path) -> None:
    """The chart view, one click away from the table: saved once the view's three charts are drawn."""
    page.locator('label:has(input[value="CHART"])').click()
    page.wait_for_function(f"{DRAWN}.length >= 3", timeout=90_000)
    save(page, out)


def save(page: Page, out: Path) -> None:
    out.parent.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(out))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--study", default="table1")
    parser.add_argument("--out", default="docs/mlflow-runs.png", help="the trials table")
    parser.add_argument("--charts", default="docs/mlflow-charts.png", help="the chart view")
    args = parser.parse_args(argv)
    if not CHROMIUM.exists():
        print("error: /usr/bin/chromium is missing; apt-get install -y chromium", file=sys.stderr)
        return 2
    try:
        paths = capture(args.study, Path(args.out), Path(args.charts))
    except LookupError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print("\n".join(str(p) for p in paths))
    return 0


if __name__ == "__main__":
    sys.exit(main())
