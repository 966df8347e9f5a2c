"""``harness run`` end to end on a tiny study: Ray Tune trials, MLflow runs, tables read back from MLflow.

The slow tests run the real driver (``python -m harness.cli run``) in a
subprocess. Trials are tiny: width 4, 16x16 input, 4 frames, 32 clips. A
killed driver and its resume: tests/test_hardening_crash.py.
"""
from __future__ import annotations

import subprocess
import sys

import pytest
from conftest import clean_env, harness, study_runs, write_study

KEYS = {f"tiny/laptop/{row}/seed{s}" for row in ("TSN", "TSM") for s in (0, 1)}


# ----------------------------------------------------------------------------- fast


def test_dry_run_starts_no_ray_and_writes_nothing(tmp_path, synth_root):
    study = write_study(tmp_path, tmp_path / "synth")
    before = sorted(p for p in tmp_path.rglob("*"))
    code = ("import sys; from harness.cli import main; rc = main(['run', 'tiny.yaml', '--dry-run']); "
            "print('IMPORTED', 'ray' in sys.modules, 'mlflow' in sys.modules); sys.exit(rc)")
    r = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, env=clean_env(), capture_output=True,
                       text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    assert "IMPORTED False False" in r.stdout
    assert "2 rows x 2 seeds = 4 trials" in r.stdout
    for key in KEYS:
        assert key in r.stdout
    assert sorted(p for p in tmp_path.rglob("*")) == before, "a dry run wrote files"
    assert study.exists()


def test_unknown_key_in_study_is_an_error_naming_it(tmp_path):
    write_study(tmp_path, tmp_path / "synth", learning_rate="0.1")
    r = harness(["run", "tiny.yaml", "--dry-run"], tmp_path, timeout=60)
    assert r.returncode == 2
    assert "learning_rate" in r.stderr and "unknown key" in r.stderr


# ----------------------------------------------------------------------------- slow


@pytest.mark.slow
def test_run_writes_parent_and_child_runs_and_tables_from_mlflow(tmp_path, synth_root):
    write_study(tmp_path, synth_root, epochs=2, seeds=2)
    r = harness(["run", "tiny.yaml"], tmp_path)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-5000:]
    assert "harness ui" in r.stdout and "| TSM" in r.stdout

    t, parents, children = study_runs(tmp_path)
    assert len(parents) == 1 and parents[0].status == "FINISHED"
    parent = parents[0]
    assert parent.tags["harness.profile"] == "laptop" and "harness.git_commit" in parent.tags
    assert set(children) == KEYS
    for key, run in children.items():
        assert run.status == "FINISHED", key
        tags, params, metrics = run.tags, run.params, run.metrics
        assert tags["harness.trial_key"] == key and tags["mlflow.parentRunId"] == parent.run_id
        assert f"tiny/laptop/{tags['harness.row']}/seed{tags['harness.seed']}" == key
        assert "harness.git_commit" in tags and tags["harness.node_id"]
        assert tags["harness.protocol"] == parent.tags["harness.protocol"]  # issue 14: traced per trial
        assert tags["harness.data_fingerprint"] == parent.tags["harness.data_fingerprint"] != "unavailable"
        assert params["recipe.epochs"] == "2" and params["row.block"] in ("tsn", "tsm")
        assert params["data.root"] == str(synth_root)  # resolved config, flattened
        assert metrics["profile_params"] > 20e6 and metrics["profile_gflops_112"] > 0  # no paper profile:
        assert metrics["profile_frames"] == 8  # the paper's 8 frames at 112 px, not the laptop's 4 at 16
        steps = sorted(step for step, _ in t.metric_history(run.run_id, "val_top1"))
        assert steps == [1, 2]
    artifacts = {a.path for a in t.client.list_artifacts(parent.run_id)}
    assert "study.resolved.yaml" in artifacts and "results" in artifacts

    import pandas as pd

    csv = pd.read_csv(tmp_path / "results" / "tiny.csv").set_index("row")
    for row in ("TSN", "TSM"):
        last = [children[f"tiny/laptop/{row}/seed{s}"].metrics["val_top1"] for s in (0, 1)]
        assert csv.loc[row, "top1_mean"] == pytest.approx(sum(last) / 2, abs=1e-3)
        assert csv.loc[row, "seeds"] == 2
    # the tables come from MLflow alone: rebuild them without the run's results
    first = (tmp_path / "results" / "tiny.csv").read_text()
    for f in (tmp_path / "results").iterdir():
        f.unlink()
    r = harness(["tables", "tiny.yaml"], tmp_path, timeout=120)
    assert r.returncode == 0, r.stderr
    assert (tmp_path / "results" / "tiny.csv").read_text() == first
    assert (tmp_path / "results" / "tiny.md").exists() and (tmp_path / "results" / "tiny.png").exists()


@pytest.mark.slow
def test_until_resolved_runs_waves_within_its_budget_and_the_table_says_why(tmp_path, synth_root):
    """End to end through Ray: the planned seeds, then waves for unresolved orderings, never past --max-trials;
    the table reports each row's seeds and why the waves stopped (the loop's logic has its own exact test in
    tests/test_tables_statistics.py, on planted numbers)."""
    import json

    write_study(tmp_path, synth_root, epochs=1, seeds=2)
    r = harness(["run", "tiny.yaml", "--until-resolved", "--max-trials", "6"], tmp_path, timeout=600)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-5000:]
    t, [parent], children = study_runs(tmp_path)
    history = json.loads(parent.tags["harness.waves"])
    assert "stop" in history[-1] and 4 <= len(children) <= 6
    added = sum(n for wave in history[:-1] for n in wave["added"].values())
    assert len(children) == 4 + added and all(run.status == "FINISHED" for run in children.values())
    md = (tmp_path / "results" / "tiny.md").read_text()
    assert "Seeds added by `--until-resolved`:" in md and f"stopped: {history[-1]['stop']}" in md
