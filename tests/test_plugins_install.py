"""A plugin installed the way a user installs it (``pip install -e``), and a study run from the folder
holding its source, through Ray: it trains, or it fails before any trial with the reason.

The plugin goes into a temporary venv whose ``.pth`` file adds this environment's site-packages, so
the harness, torch and Ray are shared and nothing is installed into the test environment; pip builds
the editable wheel offline with the setuptools installed here. The checks of what the Ray workers see
(:func:`harness.plugins.compare`) and of a trial's config error are tested on their own, without Ray.
"""
import shutil
import subprocess
import sys
import sysconfig
from pathlib import Path

import pytest

from harness.plugins import check_workers, compare

from conftest import clean_env, study_runs, tiny_train_text, write_study

GATE = Path(__file__).parent / "plugins" / "gate-block"
GATE_ROWS = {"TSN": "tsn", "Gate": "{block: temporal_gate, kernel: 3}"}


def user_venv(folder: Path) -> Path:
    """A venv that sees this environment's packages; its python."""
    venv = folder / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True, timeout=120)
    python = venv / "bin" / "python"
    site = subprocess.run([python, "-c", "import sysconfig; print(sysconfig.get_path('purelib'))"],
                          check=True, capture_output=True, text=True).stdout.strip()
    here = sysconfig.get_path("purelib")
    Path(site, "_harness_env.pth").write_text(f"import site; site.addsitedir({here!r})\n")
    return python


def pip_install_editable(python: Path, project: Path) -> None:
    proc = subprocess.run([python, "-m", "pip", "install", "--no-index", "--no-deps", "--no-build-isolation",
                           "--quiet", "-e", str(project)], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]


def run_study(python: Path, folder: Path, *flags: str, dry_run: bool = False) -> subprocess.CompletedProcess:
    return subprocess.run([python, *flags, "-m", "harness.cli", "run", "tiny.yaml", "--max-concurrent", "2",
                           *(["--dry-run"] if dry_run else [])],
                          cwd=folder, env=clean_env(), capture_output=True, text=True, timeout=600)


SHADOW_WARNING = "the Ray workers would import 'gate_block' from "


@pytest.mark.slow
def test_a_src_layout_plugin_trains_in_a_study_run_from_the_folder_holding_it(tmp_path, synth_root):
    python = user_venv(tmp_path)
    project = tmp_path / "gate_block"  # the project folder named like its package: the case that can shadow
    shutil.copytree(GATE, project)
    pip_install_editable(python, project)
    write_study(tmp_path, synth_root, epochs=1, seeds=1, rows=GATE_ROWS)
    assert SHADOW_WARNING not in run_study(python, tmp_path, "-P", dry_run=True).stderr
    proc = run_study(python, tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "plugin blocks temporal_gate: the Ray workers register them as the driver does" in proc.stderr
    _, _, children = study_runs(tmp_path)
    assert {k: r.status for k, r in children.items()} == {
        "tiny/laptop/TSN/seed0": "FINISHED", "tiny/laptop/Gate/seed0": "FINISHED"}
    assert children["tiny/laptop/Gate/seed0"].tags["harness.block"] == "temporal_gate"


@pytest.mark.slow
def test_a_flat_layout_shadowed_by_the_start_folder_fails_before_any_trial_with_the_reason(tmp_path, synth_root):
    python = user_venv(tmp_path)
    project = tmp_path / "gate_block"  # gate_block/gate_block/__init__.py, run from tmp_path
    (project / "gate_block").mkdir(parents=True)
    shutil.copy(GATE / "pyproject.toml", project)
    shutil.copy(GATE / "src" / "gate_block" / "__init__.py", project / "gate_block")
    pip_install_editable(python, project)
    study = write_study(tmp_path, synth_root, epochs=1, seeds=1, rows=GATE_ROWS)
    line = next(n for n, text in enumerate(study.read_text().splitlines(), 1) if text.startswith("  Gate:"))

    # -P: the start folder is not on the driver's import path, as under the `harness` console script;
    # Ray still puts it on the workers' path, where gate_block/ is an empty namespace package.
    dry = run_study(python, tmp_path, "-P", dry_run=True)  # no Ray: a warning that predicts it
    assert dry.returncode == 0 and f"{SHADOW_WARNING}{project}, a folder without __init__.py" in dry.stderr
    proc = run_study(python, tmp_path, "-P")
    assert proc.returncode == 2, proc.stderr[-3000:]
    error = proc.stderr.strip().splitlines()[-1]
    assert error.startswith(f"error: tiny.yaml:{line}: rows.Gate.block: block 'temporal_gate' of package "
                            f"'gate-block' (imported here from {project / 'gate_block' / '__init__.py'}) "
                            "is missing in the Ray workers: "), error
    assert f"'gate_block' was imported from {project}, a folder without __init__.py (a namespace package)" in error
    assert f"Ray puts {tmp_path}, the folder `harness run` started in, on the workers' import path" in error
    assert "move the package under src/" in error
    assert not (tmp_path / "work").exists() and not (tmp_path / "results").exists()  # no trial, no MLflow run

    # Without -P the driver sees the shadow too: the study fails to load, and says why.
    proc = run_study(python, tmp_path)
    assert proc.returncode == 2
    error = proc.stderr.strip().splitlines()[-1]
    assert error.startswith(f"error: tiny.yaml:{line}: rows.Gate: unknown block 'temporal_gate'.")
    assert "Plugins that failed to load: gate-block (temporal_gate = gate_block): registered no block" in error
    assert not (tmp_path / "work").exists()


# ----------------------------------------------------------------------------- what the workers see, unit

HERE = {"error": None, "cwd": "/home/me",
        "blocks": {"tsn": "built-in", "tam": "mytam"},
        "plugins": [{"package": "mytam", "entry_point": "tam = mytam", "block": "tam", "module": "mytam",
                     "location": "/home/me/mytam/mytam/__init__.py", "error": None}]}


def workers(**change) -> dict:
    return {**HERE, "cwd": "/tmp/ray/session/worker", **change}


def test_workers_that_register_the_block_as_the_driver_pass():
    assert compare(HERE, workers(), "tam") is None


def test_a_namespace_folder_in_the_start_folder_names_package_place_and_fix():
    shadowed = {**HERE["plugins"][0], "location": "/home/me/mytam",
                "error": "registered no block 'tam': 'mytam' was imported from /home/me/mytam, a folder ..."}
    msg = compare(HERE, workers(blocks={"tsn": "built-in"}, plugins=[shadowed]), "tam", where=" (node n1)")
    assert msg.startswith("block 'tam' of package 'mytam' (imported here from /home/me/mytam/mytam/__init__.py) "
                          "is missing in the Ray workers (node n1): registered no block 'tam'")
    assert msg.endswith("(Ray puts /home/me, the folder `harness run` started in, on the workers' import path)")


def test_a_package_missing_from_the_workers_environment():
    msg = compare(HERE, workers(blocks={"tsn": "built-in"}, plugins=[]), "tam")
    assert "'mytam' is not installed in the workers' Python environment" in msg and "pip install mytam" in msg


def test_the_same_name_from_another_package_in_the_workers():
    msg = compare(HERE, workers(blocks={"tsn": "built-in", "tam": "other-tam"}), "tam")
    assert "there it comes from 'other-tam'" in msg


def test_a_registry_error_in_the_workers_is_passed_on():
    msg = compare(HERE, workers(error="block 'tam' is registered twice: by mytam and by x; ..."), "tam")
    assert msg.startswith("the Ray workers cannot load the block plugins: block 'tam' is registered twice")


def test_a_study_of_built_in_blocks_starts_no_ray_for_the_check(tmp_path):
    import ray

    from harness.config import load_study

    check_workers(load_study(write_study(tmp_path, tmp_path / "synth")))
    assert not ray.is_initialized()


def test_a_trial_whose_worker_lacks_the_block_ends_failed_once_with_the_reason(tmp_path, monkeypatch):
    """Not raised (Ray would retry it `max_failures` times): one closing report, FAILED, the reason in one line."""
    from harness.config import Row, load_train
    from harness.trial import TrialSpec
    from harness.tune import fitting

    path = tmp_path / "train.yaml"
    path.write_text(tiny_train_text(tmp_path / "synth", epochs=1, videos=8))
    # A config the driver validated, whose block this worker's registry does not have (as when shadowed).
    config = load_train(path).model_copy(update={"row": Row.model_construct(block="temporal_gat")})
    spec = TrialSpec(key="s/laptop/Gate/seed0", study="s", profile="laptop", row="Gate", seed=0, label="Gate",
                     config=config)
    # outside a Ray worker: these two would otherwise start a local Ray in this process
    monkeypatch.setattr(fitting.ray, "get_runtime_context", lambda: type("C", (), {"get_node_id": lambda s: "n"})())
    monkeypatch.setattr(fitting.ray, "get_gpu_ids", lambda: [])
    reports = []
    fitting.run_trial(spec, tmp_path / "fit", lambda metrics, **kw: reports.append(metrics), None, None)
    assert len(reports) == 1 and reports[0]["final"] == 1 and reports[0]["status"] == "FAILED"
    reason = reports[0]["reason"]
    assert reason.startswith("config: unknown block 'temporal_gat'. Available: ") and "\n" not in reason
    assert not (tmp_path / "fit").exists()  # nothing was trained


def test_the_error_line_of_a_trial_skips_pydantics_url():
    from harness.errors import last_line

    text = "Traceback...\npydantic_core.ValidationError: 1 validation error\nrow\n  Value error, unknown block\n" \
           "    For further information visit https://errors.pydantic.dev/2.14/v/value_error\n"
    assert last_line(text) == "  Value error, unknown block"
    assert last_line("ValueError: bad\n") == "ValueError: bad"
