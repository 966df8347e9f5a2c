"""``harness ui``: the links it prints, the first-visit defaults of its server, and what a user sees in
Debian's headless Chromium after a real tiny study (issue 24).

No browser is downloaded: playwright drives /usr/bin/chromium through ``executable_path``.
"""
from __future__ import annotations

import asyncio
import json
import queue
import re
import signal
import subprocess
import sys
import threading
import time
import urllib.parse
import uuid
from contextlib import contextmanager
from pathlib import Path

import pytest
from conftest import clean_env, harness, kill_marked, study_runs, write_study

from harness import names, ui, uiview
from harness.screenshot import CHROMIUM, DRAWN, FLAGS, free_port

BASE = "http://127.0.0.1:5000"
TOLERANCE_S = 3.0  # "within a few seconds": Ray's timestamps are whole seconds, the driver's callbacks lag a little


def make_store(folder: Path) -> None:
    """A study with one parent run and two child runs, and a study with no run, in ``folder/work``."""
    from harness.tracking import NewChild, Tracker

    t = Tracker(f"sqlite:///{folder / 'work' / 'mlflow.db'}")
    t.prepare()
    parent = t.start_parent("uistudy", "laptop", params={"study": "uistudy"}, tags={})
    ids = t.ensure_children(parent, [NewChild(f"uistudy/laptop/{row}/seed0", f"{row} seed0",
                                              {names.ROW: row, names.SEED: "0"}) for row in ("TSN", "TSM")])
    for rid in ids.values():
        t.log_epoch(rid, {"epoch": 1, "val_top1": 50.0})
        t.finish_child(rid, "FINISHED", summary={"best_top1": 50.0})
    t.finish(parent, "FINISHED")
    t.experiment_id("empty")


def query(url: str) -> dict[str, str]:
    return dict(urllib.parse.parse_qsl(url.split("?", 1)[1]))


# ----------------------------------------------------------------------------- fast


def test_links_open_the_saved_view_and_compare_the_latest_trials(tmp_path):
    from harness.tracking import Tracker

    make_store(tmp_path)
    t = Tracker(f"sqlite:///{tmp_path / 'work' / 'mlflow.db'}")
    studies = t.experiments()
    links = {link.study: link for link in ui.study_links(t, BASE, studies)}
    runs, compare = links["uistudy"].runs, links["uistudy"].compare
    assert runs.startswith(f"{BASE}/#/experiments/{studies['uistudy']}/runs?")
    assert query(runs) == {"workflowType": "machine_learning", "viewStateShareKey": uiview.TRIALS_VIEW}
    assert compare.startswith(f"{BASE}/#/compare-runs?")
    trials = [r.run_id for r in t.runs("uistudy") if r.tags.get(names.KIND) == names.TRIAL]
    q = query(compare)
    assert sorted(json.loads(q["runs"])) == sorted(trials) and json.loads(q["experiments"]) == [studies["uistudy"]]
    assert q["workflowType"] == "machine_learning" and '"' not in compare  # a terminal links it whole
    assert links["empty"].compare is None


def test_every_study_experiment_holds_the_trials_view(tmp_path):
    from harness.tracking import Tracker

    make_store(tmp_path)
    t = Tracker(f"sqlite:///{tmp_path / 'work' / 'mlflow.db'}")
    tags = t.client.get_experiment_by_name("uistudy").tags
    assert tags[names.EXPERIMENT_KIND] == "custom_model_development"
    envelope = json.loads(tags[names.SAVED_VIEW.format(key=uiview.TRIALS_VIEW)])
    state = json.loads(envelope["state"])
    assert envelope["name"] == uiview.TRIALS_VIEW_NAME
    for column in (names.ROW, names.SEED, names.BLOCK, names.PROFILE_PARAMS, "profile_gflops_112", names.LAST_TOP1):
        assert any(f"`{column}`" in c for c in state["selectedColumns"]), column
    assert state["groupBy"]["groupByKeys"] == [{"mode": "tag", "groupByData": names.LABEL}]
    assert {c["type"] for c in state["compareRunCharts"]} == {"BAR", "LINE", "SCATTER"}


def test_first_visit_script_goes_into_the_page_only():
    page = b"<!doctype html><html><head><title>MLflow</title></head><body></body></html>"

    async def mlflow(scope, receive, send):
        body = page if scope["path"] == "/" else b"{}"
        await send({"type": "http.response.start", "status": 200,
                    "headers": [(b"content-length", str(len(body)).encode()), (b"content-type", b"text/html")]})
        await send({"type": "http.response.body", "body": body})

    def get(path: str) -> tuple[dict, bytes]:
        sent: list[dict] = []

        async def send(message):
            sent.append(message)

        scope = {"type": "http", "method": "GET", "path": path, "headers": [(b"accept-encoding", b"gzip")]}
        asyncio.run(ui.FirstVisit(mlflow)(scope, None, send))
        return dict(sent[0]["headers"]), b"".join(m.get("body", b"") for m in sent[1:])

    headers, body = get("/")
    assert body.startswith(b"<!doctype html><html><head><script>") and body.endswith(page[-30:])
    assert int(headers[b"content-length"]) == len(body)
    for key in ui.FIRST_VISIT:
        assert key.encode() in body
    assert get("/ajax-api/2.0/mlflow/runs/search")[1] == b"{}"


def test_the_server_runs_with_the_first_visit_app():
    cmd = ui.mlflow_command("sqlite:////x/mlflow.db", host="127.0.0.1", port=5000)
    assert cmd[cmd.index("--app-name") + 1] == ui.APP_NAME  # registered by `pip install -e .` (pyproject.toml)


@pytest.mark.parametrize("env, platform, opens", [
    ({}, "linux", False), ({"DISPLAY": ":0"}, "linux", True), ({"WAYLAND_DISPLAY": "w"}, "linux", True),
    ({}, "darwin", True), ({"DISPLAY": ":0", "CI": "true"}, "linux", False), ({"CI": "1"}, "darwin", False)])
def test_a_browser_opens_only_where_there_is_a_screen(env, platform, opens):
    assert ui.graphical_browser(env, platform) is opens


# ----------------------------------------------------------------------------- Chromium, after a real study


def trials_own_times(folder: Path) -> dict[str, tuple]:
    """Each trial's child run and its own start, end and duration (s), from Ray's results of its epochs:
    the first epoch's start (its report's time less the epoch's length) and the last epoch's report."""
    _, _, children = study_runs(folder)
    out = {}
    for run in children.values():
        path = next(folder.glob(f"work/ray/tiny/*/*_{run.tags[names.TRIAL_ID]}/result.json"))
        epochs = [r for r in map(json.loads, path.read_text().splitlines()) if names.EPOCH in r]
        first, last = epochs[0], epochs[-1]
        out[run.name] = (run, first["timestamp"] - first["time_this_iter_s"], last["timestamp"], last["time_total_s"])
    return out


def seconds(duration: str) -> float:
    """MLflow's duration text ("850ms", "8.8s", "1.2min", "2.0h") in seconds."""
    value, unit = re.fullmatch(r"([\d.]+)(ms|s|min|h|d)", duration.strip()).groups()
    return float(value) * {"ms": 1e-3, "s": 1, "min": 60, "h": 3600, "d": 86400}[unit]


def read_links(proc: subprocess.Popen, timeout: float) -> dict[str, str]:
    """The links ``harness ui`` prints once its server answers (read by a thread: no select on a buffer)."""
    lines: queue.Queue[str] = queue.Queue()
    threading.Thread(target=lambda: [lines.put(line) for line in proc.stdout], daemon=True).start()
    deadline, seen, links = time.monotonic() + timeout, [], {}
    while time.monotonic() < deadline and not (seen and seen[-1].startswith("Ctrl-C")):
        try:
            seen.append(lines.get(timeout=1.0))
        except queue.Empty:
            if proc.poll() is not None:
                break
            continue
        if m := re.match(r"\s+(runs|compare):\s+(http\S+)", seen[-1]):
            links[m[1]] = m[2]
    assert {"runs", "compare"} <= set(links), f"harness ui printed no links in {timeout:.0f} s: {''.join(seen)}"
    return links


@contextmanager
def ui_server(folder: Path, port: int):
    """``harness ui --study tiny`` on ``port``, stopped (and everything it started) on exit."""
    marker = uuid.uuid4().hex
    env = clean_env(HARNESS_TEST_MARKER=marker, CI="1")  # CI: never a browser window from a test
    env = {k: v for k, v in env.items() if k not in ("DISPLAY", "WAYLAND_DISPLAY")}
    proc = subprocess.Popen([sys.executable, "-m", "harness.cli", "ui", "--port", str(port), "--study", "tiny"],
                            cwd=folder, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            start_new_session=True)
    try:
        yield proc
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)  # harness ui stops its mlflow server on SIGTERM
            try:
                proc.wait(30)
            except subprocess.TimeoutExpired:
                pass
        kill_marked(marker)


def check_first_visit(page, base: str, exp_id: str) -> None:
    """A fresh browser on the experiment's own page (no link parameters): model-training layout, no assistant."""
    page.goto(f"{base}/#/experiments/{exp_id}")
    page.get_by_text("tiny laptop").first.wait_for(timeout=90_000)  # the runs table of the parent run
    assert "workflowType=genai" not in page.url and "/runs" in page.url
    nav = " ".join(page.locator("nav").all_inner_texts())
    assert "Judges" not in nav and "Sessions" not in nav  # the GenAI layout's side bar
    assert page.get_by_placeholder("Ask a question").count() == 0  # the assistant panel's input


def check_runs(page, url: str, own: dict[str, tuple]) -> None:
    """The saved view: trials grouped by row, the columns of the issue, durations that are the trials' own."""
    page.goto(url)
    for name in own:
        page.locator('[role="row"]', has_text=name).first.wait_for(timeout=90_000)
    for row in ("TSN", "TSM"):
        assert page.locator('[role="row"]', has_text=f"Group: {row}").count() >= 1
    headers = page.locator('[role="columnheader"]').all_inner_texts()
    for column in ("harness.row", "harness.seed", "harness.block", "profile_params", "profile_gflops_112",
                   "last_top1", "Duration"):
        assert column in headers, (column, headers)
    for name, (_, _, _, duration) in own.items():
        row_id = page.locator('[role="row"]', has_text=name).first.get_attribute("row-id")
        shown = page.locator(f'[role="row"][row-id="{row_id}"] [col-id="duration"]').first.inner_text()
        assert abs(seconds(shown) - duration) < TOLERANCE_S, (name, shown, duration)


def check_charts(page) -> None:
    """One click on the chart view: the view's section of row charts, drawn with data."""
    page.locator('label:has(input[value="CHART"])').click()
    page.get_by_text("rows: mean over seeds").wait_for(timeout=60_000)
    page.wait_for_function(f"{DRAWN}.length > 0", timeout=90_000)


def check_compare(page, url: str, own: dict[str, tuple]) -> None:
    page.goto(url)
    page.get_by_text(f"Comparing {len(own)} Runs").wait_for(timeout=90_000)
    for name in own:
        assert page.get_by_text(name, exact=True).count() >= 1
    page.locator(".js-plotly-plot").first.wait_for(timeout=60_000)  # parallel coordinates of params and metrics


@pytest.mark.slow
def test_after_a_real_study_chromium_shows_the_trials_charts_and_true_durations(tmp_path, synth_root):
    if not CHROMIUM.exists():
        pytest.skip("Debian's chromium is not installed at /usr/bin/chromium (apt-get install -y chromium)")
    from playwright.sync_api import sync_playwright

    write_study(tmp_path, synth_root, epochs=2, seeds=1)
    r = harness(["run", "tiny.yaml"], tmp_path)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-5000:]
    own = trials_own_times(tmp_path)
    for name, (run, start, end, _) in own.items():  # MLflow's start and end are the trial's own
        assert abs(run.start_time / 1000 - start) < TOLERANCE_S, (name, run.start_time / 1000 - start)
        assert abs(run.end_time / 1000 - end) < TOLERANCE_S, (name, run.end_time / 1000 - end)
    port = free_port()
    with ui_server(tmp_path, port) as proc, sync_playwright() as p:
        links = read_links(proc, timeout=180)
        exp_id = links["runs"].split("/#/experiments/")[1].split("/")[0]
        browser = p.chromium.launch(executable_path=str(CHROMIUM), headless=True, args=FLAGS)
        try:
            page = browser.new_page(viewport={"width": 1400, "height": 900})  # a new profile: a first visit
            check_first_visit(page, f"http://127.0.0.1:{port}", exp_id)
            check_runs(page, links["runs"], own)
            check_charts(page)
            check_compare(page, links["compare"], own)
        finally:
            browser.close()
