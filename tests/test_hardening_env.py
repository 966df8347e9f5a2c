"""Environment faults: an unwritable work or results folder, a full disk, a dataset that disappears mid-run.

Each gives one line (``error: <path>: <reason>; <what to do>``, or the
trainer's one ``ERROR`` record), a non-zero exit code and no traceback, and
leaves the last good table or checkpoint as it was.

Permissions are checked for real where they bind (``chmod 555``); as root (CI
containers), where chmod does not stop writes, those cases are skipped and the
same ``PermissionError`` comes from a monkeypatched ``tempfile.mkstemp``. (Root
without CAP_DAC_OVERRIDE runs them: ``setpriv --bounding-set=-dac_override,-dac_read_search
--inh-caps=-dac_override,-dac_read_search -- .venv/bin/python -m pytest ...``.)
A full disk is a monkeypatched write raising ``OSError(ENOSPC)``.
"""
from __future__ import annotations

import errno
import io
import logging
import os
import shutil
import tempfile

import pytest
import torch
from conftest import tiny_train_text, write_study

from harness import checkpoint
from harness.cli import main


def chmod_binds() -> bool:
    """Whether a folder made read-only refuses a write here (it does not for root, who has CAP_DAC_OVERRIDE)."""
    with tempfile.TemporaryDirectory() as folder:
        os.chmod(folder, 0o555)
        try:
            with open(os.path.join(folder, "probe"), "w"):
                return False
        except PermissionError:
            return True
        finally:
            os.chmod(folder, 0o755)


needs_non_root = pytest.mark.skipif(not chmod_binds(), reason="running as root: chmod does not stop writes "
                                    "(the monkeypatched PermissionError test covers the message)")

ENOSPC = OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
EACCES = os.strerror(errno.EACCES)


def error_lines(err: str) -> list[str]:
    assert "Traceback" not in err, err
    return [ln for ln in err.splitlines() if ln.startswith("error:")]


def refuse_mkstemp_in(monkeypatch, folder):
    """``tempfile.mkstemp`` raises PermissionError for ``folder`` (and below), as a read-only folder would."""
    real = tempfile.mkstemp

    def mkstemp(*args, dir=None, **kwargs):  # noqa: A002 - tempfile's own keyword
        if dir is not None and str(os.path.abspath(dir)).startswith(str(folder)):
            raise PermissionError(errno.EACCES, EACCES, str(dir))
        return real(*args, dir=dir, **kwargs)

    monkeypatch.setattr(tempfile, "mkstemp", mkstemp)


# ----------------------------------------------------------------------------- tables


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    """An MLflow store holding one finished invocation of the tiny study (4 trials, 2 epochs each)."""
    from harness.tracking import NewChild, Tracker

    folder = tmp_path_factory.mktemp("store")
    uri = f"sqlite:///{folder / 'mlflow.db'}"
    t = Tracker(uri)
    t.prepare()
    parent = t.start_parent("tiny", "laptop", params={"study": "tiny"}, tags={"harness.seeds": "2"})
    specs = [NewChild(f"tiny/laptop/{row}/seed{s}", f"{row} seed{s}", {"harness.row": row, "harness.seed": str(s)},
                      {"row.block": row.lower()}, {"profile_params": 1e6, "profile_gflops_16": 0.1})
             for row in ("TSN", "TSM") for s in (0, 1)]
    for i, rid in enumerate(t.ensure_children(parent, specs).values()):
        for epoch in (1, 2):
            t.log_epoch(rid, {"epoch": epoch, "val_top1": 10.0 * i + epoch, "val_top5": 50.0})
        t.finish_child(rid, "FINISHED", summary={"best_top1": 10.0 * i + 2, "last_top1": 10.0 * i + 2})
    t.finish(parent, "FINISHED")
    return uri


@pytest.fixture
def tables_dir(tmp_path, monkeypatch, store):
    """cwd with the study file, the store above as MLFLOW_TRACKING_URI, and good tables in ``results/``."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("MLFLOW_TRACKING_URI", store)
    write_study(tmp_path, tmp_path / "synth")
    assert main(["tables", "tiny.yaml", "--out", "results"]) == 0
    return tmp_path / "results"


def snapshot(folder):
    return {p.name: p.read_bytes() for p in sorted(folder.iterdir())}


@needs_non_root
def test_tables_into_a_read_only_folder_is_one_line(tables_dir, capsys):
    capsys.readouterr()
    locked = tables_dir.parent / "locked"
    locked.mkdir(mode=0o555)
    assert main(["tables", "tiny.yaml", "--out", str(locked)]) == 1
    [line] = error_lines(capsys.readouterr().err)
    assert line.startswith(f"error: {locked}/tiny.md: {EACCES}; make it writable")
    assert not list(locked.iterdir())


def test_tables_without_permission_is_one_line_and_keeps_the_old_tables(tables_dir, monkeypatch, capsys):
    before = snapshot(tables_dir)
    capsys.readouterr()
    refuse_mkstemp_in(monkeypatch, tables_dir.resolve())
    assert main(["tables", "tiny.yaml", "--out", "results"]) == 1
    [line] = error_lines(capsys.readouterr().err)
    assert line == (f"error: results/tiny.md: {EACCES}; make it writable or run from another folder; "
                    "the previous tables, if any, are unchanged")
    assert snapshot(tables_dir) == before


def test_a_full_disk_mid_table_keeps_the_previous_set_whole(tables_dir, monkeypatch, capsys, store):
    """The disk fills while the .tex is written, after the .md and .csv: none of the four may change."""
    from harness.tracking import Tracker

    before = snapshot(tables_dir)
    t = Tracker(store)  # a new result in the store, so new tables would differ from the old ones
    parent = t.latest_parent("tiny", "laptop")
    first = next(iter(t.children(parent.run_id).values()))
    t.client.log_metric(first.run_id, "last_top1", 99.0, step=100)
    real = os.fdopen

    class Full(io.BytesIO):
        def write(self, data):
            raise ENOSPC

    def fdopen(fd, *args, **kwargs):
        if ".tiny.tex." in os.readlink(f"/proc/self/fd/{fd}"):
            os.close(fd)
            return Full()
        return real(fd, *args, **kwargs)

    monkeypatch.setattr(os, "fdopen", fdopen)
    capsys.readouterr()
    assert main(["tables", "tiny.yaml", "--out", "results"]) == 1
    [line] = error_lines(capsys.readouterr().err)
    assert line == (f"error: results/tiny.tex: {os.strerror(errno.ENOSPC)}; free disk space; "
                    "the previous tables, if any, are unchanged")
    assert snapshot(tables_dir) == before  # no new .md beside an old .tex, and no temp file left
    monkeypatch.setattr(os, "fdopen", real)
    assert main(["tables", "tiny.yaml", "--out", "results"]) == 0
    after = snapshot(tables_dir)  # with space again, all four are replaced (the test wrote different tables)
    assert after.keys() == before.keys() and all(after[k] != before[k] for k in ("tiny.md", "tiny.csv", "tiny.tex"))


def test_write_atomic_failing_at_the_rename_keeps_the_old_file(tmp_path, monkeypatch):
    from harness.files import write_atomic

    path = write_atomic("old", tmp_path / "t.csv")

    def refuse(src, dst):
        raise ENOSPC

    monkeypatch.setattr(os, "replace", refuse)
    with pytest.raises(OSError, match="No space left") as info:
        write_atomic("new", path)
    assert info.value.filename == str(path)  # the file the user knows, not the temp file
    assert path.read_text() == "old" and [p.name for p in tmp_path.iterdir()] == ["t.csv"]


# ----------------------------------------------------------------------------- harness run


@pytest.fixture
def run_dir(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    write_study(tmp_path, tmp_path / "synth")
    return tmp_path


def assert_nothing_ran(folder):
    import ray

    assert not ray.is_initialized()
    assert not list(folder.rglob("mlflow.db")) and not (folder / "synth").exists()


@pytest.mark.parametrize("folder", ["work", "results"])
def test_run_with_a_file_where_its_folder_goes_stops_before_any_trial(run_dir, capsys, folder):
    (run_dir / folder).write_text("")
    assert main(["run", "tiny.yaml"]) == 2
    [line] = error_lines(capsys.readouterr().err)
    assert line == f"error: {run_dir / folder}: not a folder; a file stands where a folder is needed; move it away"
    assert_nothing_ran(run_dir)


@pytest.mark.parametrize("folder", ["work", "results"])
def test_run_without_write_permission_stops_before_any_trial(run_dir, capsys, monkeypatch, folder):
    refuse_mkstemp_in(monkeypatch, run_dir / folder)
    assert main(["run", "tiny.yaml"]) == 2
    [line] = error_lines(capsys.readouterr().err)
    assert line == f"error: {run_dir / folder}: {EACCES}; make it writable or run from another folder"
    assert_nothing_ran(run_dir)


@needs_non_root
def test_run_in_a_read_only_work_folder_stops_before_any_trial(run_dir, capsys):
    (run_dir / "work").mkdir(mode=0o555)
    assert main(["run", "tiny.yaml"]) == 2
    [line] = error_lines(capsys.readouterr().err)
    assert line.startswith(f"error: {run_dir / 'work'}: {EACCES}")
    assert_nothing_ran(run_dir)


# ----------------------------------------------------------------------------- harness train



@pytest.fixture
def train_dir(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "small.yaml").write_text(tiny_train_text(tmp_path / "synth", epochs=3, videos=32))
    return tmp_path


def after_first_checkpoint(monkeypatch, action):
    """Run ``action()`` once, right after epoch 1's checkpoint and metrics are on disk."""
    from harness.train import loop

    real, calls = loop._save, []

    def save(*args, **kwargs):
        real(*args, **kwargs)
        calls.append(1)
        if len(calls) == 1:
            action()

    monkeypatch.setattr(loop, "_save", save)


def test_a_full_disk_while_checkpointing_keeps_the_last_good_checkpoint(train_dir, monkeypatch, capsys):
    real, calls = torch.save, []

    def save(obj, f, *args, **kwargs):  # epoch 2's checkpoint: half the bytes reach the disk, then it is full
        calls.append(1)
        if len(calls) < 2:
            return real(obj, f, *args, **kwargs)
        buf = io.BytesIO()
        real(obj, buf, *args, **kwargs)
        f.write(buf.getvalue()[: len(buf.getvalue()) // 2])
        raise ENOSPC

    monkeypatch.setattr(checkpoint.torch, "save", save)
    assert main(["train", "small.yaml", "--out", "out"]) == 1
    last = train_dir / "out" / "checkpoints" / "last.pt"
    [line] = error_lines(capsys.readouterr().err)
    assert line == (f"error: out/checkpoints/last.pt: {os.strerror(errno.ENOSPC)}; free disk space; "
                    "fix it, then continue with --resume")
    assert checkpoint.load(last)["epoch"] == 1  # the old file, whole
    assert sorted(p.name for p in last.parent.iterdir()) == ["best.pt", "last.pt"]  # no temp file left
    monkeypatch.setattr(checkpoint.torch, "save", real)
    assert main(["train", "small.yaml", "--out", "out", "--resume"]) == 0
    assert checkpoint.load(last)["epoch"] == 3


class HalfWritten:
    """An open file whose disk fills half-way through the first write."""

    def __init__(self, f):
        self.f = f

    def write(self, data):
        self.f.write(data[: len(data) // 2])
        raise ENOSPC

    def __getattr__(self, name):
        return getattr(self.f, name)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.f.close()


def test_a_full_disk_while_writing_metrics_keeps_the_last_good_metrics(train_dir, monkeypatch, capsys):
    import json

    real, calls = os.fdopen, []

    def fdopen(fd, *args, **kwargs):  # epoch 2's metrics.json: half written, then the disk is full
        f = real(fd, *args, **kwargs)
        if ".metrics.json." in os.readlink(f"/proc/self/fd/{fd}"):
            calls.append(1)
            if len(calls) >= 2:
                return HalfWritten(f)
        return f

    monkeypatch.setattr(os, "fdopen", fdopen)
    assert main(["train", "small.yaml", "--out", "out"]) == 1
    [line] = error_lines(capsys.readouterr().err)
    assert line == (f"error: out/metrics.json: {os.strerror(errno.ENOSPC)}; free disk space; "
                    "fix it, then continue with --resume")
    out = train_dir / "out"
    assert [m["epoch"] for m in json.loads((out / "metrics.json").read_text())] == [1]
    assert sorted(p.name for p in out.iterdir()) == ["checkpoints", "metrics.json"]  # no temp file left


def train_errors(caplog) -> list[logging.LogRecord]:
    return [r for r in caplog.records if r.levelno >= logging.ERROR]


def test_a_dataset_folder_deleted_mid_run_is_one_line_naming_it(train_dir, monkeypatch, caplog):
    synth = train_dir / "synth"
    after_first_checkpoint(monkeypatch, lambda: shutil.rmtree(synth))
    with caplog.at_level(logging.INFO):
        assert main(["train", "small.yaml", "--out", "out"]) == 1  # the data failed mid-run: the work ran
    [record] = train_errors(caplog)
    message = record.getMessage()
    assert record.exc_info is None and "\n" not in message
    assert message.startswith(f"data folder {synth} disappeared during the run ({synth}/videos/")
    assert message.endswith("restore it, then continue with --resume")
    assert checkpoint.load(train_dir / "out" / "checkpoints" / "last.pt")["epoch"] == 1
    # the synth set is regenerated from its seed, so a resume finishes the run from epoch 2
    monkeypatch.undo()
    monkeypatch.chdir(train_dir)
    assert main(["train", "small.yaml", "--out", "out", "--resume"]) == 0
    assert checkpoint.load(train_dir / "out" / "checkpoints" / "last.pt")["epoch"] == 3


def test_a_video_deleted_mid_run_is_one_line_naming_the_file(train_dir, monkeypatch, caplog):
    gone = train_dir / "synth" / "videos" / "3.webm"
    after_first_checkpoint(monkeypatch, gone.unlink)
    with caplog.at_level(logging.INFO):
        assert main(["train", "small.yaml", "--out", "out"]) == 1  # the data failed mid-run: the work ran
    [record] = train_errors(caplog)
    message = record.getMessage()
    assert record.exc_info is None and "\n" not in message
    assert f"first ones: {gone}." in message and "max_bad_fraction=0.01" in message


def test_a_dataset_folder_deleted_under_loader_workers_is_still_one_line(train_dir, monkeypatch, caplog):
    """A DataLoader worker's error reaches the main process wrapped in the worker's traceback; it is unwrapped."""
    text = (train_dir / "small.yaml").read_text().replace("scale_size: 16,", "scale_size: 16, workers: 1,")
    (train_dir / "small.yaml").write_text(text)
    synth = train_dir / "synth"
    after_first_checkpoint(monkeypatch, lambda: shutil.rmtree(synth))
    with caplog.at_level(logging.INFO):
        assert main(["train", "small.yaml", "--out", "out"]) == 1  # the data failed mid-run: the work ran
    [record] = train_errors(caplog)
    assert "\n" not in record.getMessage() and "Traceback" not in record.getMessage()
    assert record.getMessage().startswith(f"data folder {synth} disappeared during the run")
