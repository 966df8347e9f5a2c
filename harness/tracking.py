"""MLflow: the one module that talks to it. Runs, params, metrics, artifacts, look-ups.

    harness run studies/table1.yaml          # writes here, through the driver only
    harness tables studies/table1.yaml       # reads here, nothing else
    harness ui                               # serves this store

Layout. One MLflow experiment per study (named after it, of the UI's
model-training kind, with a saved view of its trials: harness.uiview).
Each ``harness run`` invocation is a *parent* run; each trial is a *child*
run under it (``mlflow.parentRunId``), keyed by its trial key
(:mod:`harness.trial`). Every tag, param and metric name is a
constant of :mod:`harness.names`. ``--resume`` re-attaches to the latest
parent run of the same study and profile.

A child run is created when its trial starts, not when the study does, so its
start and end are the trial's own and MLflow's durations mean what they say; a
resumed trial keeps its first start.

Exactly-once. Only the driver writes (Tune callbacks run in the driver, not in
the workers), the database is created before any worker starts, and every
write is keyed: a trial that Ray re-runs after a crash finds its child run by
key, epochs already logged (the latest ``epoch`` metric) are skipped, and a
finished child ignores further results. So a killed-and-resumed study ends
with one child run per trial and one value per epoch per metric.

Store. ``MLFLOW_TRACKING_URI`` when set (a shared ``http://`` server works as
the file store does); else ``sqlite:///<abs>/work/mlflow.db``. A sqlite store
is switched to WAL so the UI can read while the driver writes, and its
artifacts go to ``work/mlartifacts`` beside it.

What it gives up: a parent run killed with SIGKILL stays ``RUNNING`` in the
store until ``--resume`` (or a new run) finishes it; the database cannot know
the driver died.
"""
from __future__ import annotations

import json
import logging
import os
import sqlite3
import subprocess
import tempfile
import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")  # no network here; nothing to phone home
# On an http:// server MLflow prints "View run ... at: URL" to stdout at every run's end (one extra request each):
# dozens of lines amid the driver's own, which prints the runs page once (harness.ui.browse_line).
os.environ.setdefault("MLFLOW_SUPPRESS_PRINTING_URL_TO_STDOUT", "true")

from mlflow import MlflowClient  # noqa: E402
from mlflow.entities import Metric, Param, Run, RunTag, ViewType  # noqa: E402

from harness import names  # noqa: E402
from harness.files import default_uri, sqlite_path  # noqa: E402, F401 - re-exported: where the store is
from harness.trial import TrialIdentity, TrialSpec  # noqa: E402
from harness.uiview import view_tag  # noqa: E402

log = logging.getLogger(__name__)

TERMINAL = ("FINISHED", "FAILED", "KILLED")
DONE = ("FINISHED", "FAILED")  # a child in one of these ignores any further result
# The UI's layout for runs that train models (not its GenAI one: traces, judges, an assistant panel).
MODEL_TRAINING = "custom_model_development"
UI_TAGS = {names.EXPERIMENT_KIND: MODEL_TRAINING, **view_tag()}  # how the UI shows a study's experiment


def git_commit(cwd: str | Path | None = None) -> str:
    """Short HEAD commit, ``+dirty`` when the tree has changes; ``uncommitted`` in a repo without commits.

    Changes under ``results/`` do not count: they are what the harness itself
    writes, so regenerating one table must not mark the next as made by
    uncommitted code.
    """
    def git(*args: str) -> str:
        return subprocess.run(["git", *args], cwd=cwd, capture_output=True, text=True, timeout=10,
                              check=True).stdout.strip()

    try:
        head = git("rev-parse", "--short=12", "HEAD")
    except (OSError, subprocess.SubprocessError):
        return "uncommitted"
    try:
        dirty = bool(git("status", "--porcelain", "--untracked-files=no", "--", ".", ":(exclude)results"))
    except (OSError, subprocess.SubprocessError):
        dirty = False
    return head + ("+dirty" if dirty else "")


def _param_value(v: Any) -> str:
    return v if isinstance(v, str) else json.dumps(v)


def _numeric(metrics: Mapping[str, Any]) -> dict[str, float]:
    return {k: float(v) for k, v in metrics.items()
            if isinstance(v, (int, float)) and not isinstance(v, bool) and v == v}


def _now_ms() -> int:
    return int(time.time() * 1000)


@dataclass(frozen=True)
class NewChild:
    """What a child run is created with: its key, name, tags, params and starting metrics."""

    key: str
    name: str
    tags: Mapping[str, str] = field(default_factory=dict)
    params: Mapping[str, Any] = field(default_factory=dict)
    metrics: Mapping[str, float] = field(default_factory=dict)

    @classmethod
    def of(cls, spec: TrialSpec) -> "NewChild":
        return cls(spec.key, spec.run_name, spec.tags(), spec.params(), spec.metrics)


@dataclass(frozen=True)
class RunRecord:
    """A run as the rest of the harness sees it (MLflow's own types stay in this module)."""

    run_id: str
    name: str
    experiment_id: str
    status: str
    start_time: int
    end_time: int | None
    tags: dict[str, str]
    params: dict[str, str]
    metrics: dict[str, float]  # latest value of each

    @classmethod
    def of(cls, run: Run) -> "RunRecord":
        return cls(run.info.run_id, run.info.run_name or "", run.info.experiment_id, run.info.status,
                   run.info.start_time, run.info.end_time, dict(run.data.tags), dict(run.data.params),
                   dict(run.data.metrics))


@dataclass(frozen=True)
class TrialRun:
    """A child run as the tables read it: the trial's identity (from its tags), its run, its top-1 by epoch."""

    trial: TrialIdentity
    run: RunRecord
    val_top1_history: dict[int, float]  # by epoch

    @property
    def key(self) -> str:
        return self.trial.key

    @property
    def run_id(self) -> str:
        return self.run.run_id

    @property
    def status(self) -> str:
        return self.run.status

    @property
    def finished(self) -> bool:
        return self.run.status == "FINISHED"

    @property
    def tags(self) -> dict[str, str]:
        return self.run.tags

    @property
    def params(self) -> dict[str, str]:
        return self.run.params

    @property
    def metrics(self) -> dict[str, float]:
        return self.run.metrics


@dataclass(frozen=True)
class StudyRuns:
    """A parent run and its trials: everything a table is built from."""

    parent: RunRecord
    trials: list[TrialRun]


class Tracker:
    """The driver's handle on the store: one experiment per study, parent and child runs."""

    def __init__(self, uri: str | None = None) -> None:
        self.uri = uri or default_uri()
        self._db = sqlite_path(self.uri)
        if self._db is not None:
            self._db.parent.mkdir(parents=True, exist_ok=True)
            if not self._db.exists():  # MlflowClient would create (migrate) it in place, not atomically
                _create_sqlite(self._db)
        self.client = MlflowClient(tracking_uri=self.uri)
        self._last_epoch: dict[str, int] = {}
        self._status: dict[str, str] = {}

    # ------------------------------------------------------------------ store and experiment

    def prepare(self) -> None:
        """Create (migrate) the database now, in the driver, before any worker exists."""
        self.client.search_experiments(max_results=1)
        if self._db is not None and self._db.exists():
            with sqlite3.connect(self._db) as con:  # persistent: readers (the UI) never block the writer
                con.execute("PRAGMA journal_mode=WAL")

    def experiment_id(self, study: str, *, create: bool = True) -> str | None:
        """The study's experiment (created, or re-tagged, with the UI's model-training kind and the
        harness's saved view of its trials, :mod:`harness.uiview`, when ``create``)."""
        exp = self.client.get_experiment_by_name(study)
        if exp is not None:
            if create:  # made before these tags, or by an older view
                for key, value in UI_TAGS.items():
                    if exp.tags.get(key) != value:
                        self.client.set_experiment_tag(exp.experiment_id, key, value)
            return str(exp.experiment_id)
        if not create:
            return None
        location = None
        if self._db is not None:  # keep artifacts beside the database, not in the current folder
            location = (self._db.parent / "mlartifacts").resolve().as_uri()
        return str(self.client.create_experiment(study, artifact_location=location, tags={
            names.STUDY: study, **UI_TAGS}))

    # ------------------------------------------------------------------ parent runs

    def latest_parent(self, study: str, profile: str, *, finished: bool = False) -> RunRecord | None:
        """The latest invocation of a study and profile (``finished``: the latest that ended FINISHED)."""
        exp = self.experiment_id(study, create=False)
        if exp is None:
            return None
        where = f"tags.`{names.KIND}` = '{names.PARENT}' and tags.`{names.PROFILE}` = '{_quote(profile)}'"
        if finished:
            where += " and attributes.status = 'FINISHED'"
        runs = self.client.search_runs([exp], filter_string=where, run_view_type=ViewType.ACTIVE_ONLY,
                                       max_results=1, order_by=["attributes.start_time DESC"])
        return RunRecord.of(runs[0]) if runs else None

    def start_parent(self, study: str, profile: str, *, params: Mapping[str, Any],
                     tags: Mapping[str, str]) -> str:
        exp = self.experiment_id(study)
        assert exp is not None  # created above
        name = f"{study} {profile} {time.strftime('%Y-%m-%d %H:%M:%S')}"
        run = self.client.create_run(exp, run_name=name, tags={
            names.KIND: names.PARENT, names.STUDY: study, names.PROFILE: profile, **tags})
        self._log_params(run.info.run_id, params)
        return str(run.info.run_id)

    def run(self, run_id: str) -> RunRecord:
        return RunRecord.of(self.client.get_run(run_id))

    def reopen(self, run_id: str) -> None:
        """Mark a parent (or child) RUNNING again for ``--resume``."""
        self.client.update_run(run_id, status="RUNNING")
        self._status[run_id] = "RUNNING"

    def set_tags(self, run_id: str, tags: Mapping[str, Any]) -> None:
        self.client.log_batch(run_id, tags=[RunTag(k, str(v)) for k, v in tags.items()])

    def log_metrics(self, run_id: str, metrics: Mapping[str, Any], step: int = 0) -> None:
        now = _now_ms()
        items = [Metric(k, v, now, step) for k, v in _numeric(metrics).items()]
        for i in range(0, len(items), 1000):  # MLflow's limit per batch
            self.client.log_batch(run_id, metrics=items[i:i + 1000])

    # ------------------------------------------------------------------ child runs

    def children(self, parent_id: str) -> dict[str, RunRecord]:
        """Child runs of a parent, by trial key."""
        parent = self.client.get_run(parent_id)
        out: dict[str, RunRecord] = {}
        token = None
        while True:
            page = self.client.search_runs(
                [parent.info.experiment_id], filter_string=f"tags.`{names.PARENT_ID}` = '{parent_id}'",
                run_view_type=ViewType.ALL, max_results=1000, page_token=token,
                order_by=["attributes.start_time ASC"])
            for run in page:
                key = run.data.tags.get(names.TRIAL_KEY)
                if key is None:
                    continue
                if key in out:  # would mean a second writer; keep the first and say so
                    log.warning("two child runs for trial %s under %s: %s and %s", key, parent_id,
                                out[key].run_id, run.info.run_id)
                    continue
                out[key] = RunRecord.of(run)
            token = page.token
            if not token:
                return out

    def ensure_children(self, parent_id: str, trials: Iterable[NewChild]) -> dict[str, str]:
        """One child per trial, created RUNNING (its trial is starting) with its params; existing ones are
        reused, not duplicated. The starting metrics (the row's params and GFLOPs) are logged on creation."""
        parent = self.client.get_run(parent_id)
        existing = self.children(parent_id)
        ids: dict[str, str] = {}
        for t in trials:
            held = existing.get(t.key)
            if held is None:
                run = self.client.create_run(parent.info.experiment_id, run_name=t.name, start_time=_now_ms(),
                                             tags={names.PARENT_ID: parent_id, names.KIND: names.TRIAL,
                                                   names.TRIAL_KEY: t.key, **t.tags})
                run_id, status, last = run.info.run_id, "RUNNING", 0
                self._log_params(run_id, t.params)
                if t.metrics:
                    self.log_metrics(run_id, t.metrics)
            else:
                run_id, status, last = held.run_id, held.status, int(held.metrics.get(names.EPOCH, 0))
                if t.params and not held.params:  # a driver killed right after create_run
                    self._log_params(run_id, t.params)
            ids[t.key] = run_id
            self._status[run_id] = status
            self._last_epoch[run_id] = last
        return ids

    def status(self, run_id: str) -> str:
        if run_id not in self._status:
            self._load(run_id)
        return self._status[run_id]

    def last_epoch(self, run_id: str) -> int:
        """The last epoch a child holds, read from the store the first time this handle sees the run."""
        if run_id not in self._last_epoch:
            self._load(run_id)
        return self._last_epoch[run_id]

    def _load(self, run_id: str) -> None:
        run = self.client.get_run(run_id)
        self._status[run_id] = run.info.status
        self._last_epoch[run_id] = int(run.data.metrics.get(names.EPOCH, 0))

    def log_epoch(self, run_id: str, metrics: Mapping[str, Any]) -> bool:
        """Log one epoch's metrics at step ``metrics["epoch"]``; False (and nothing written) if already held."""
        if self.status(run_id) in DONE:
            return False
        epoch = int(metrics[names.EPOCH])
        if epoch <= self.last_epoch(run_id):
            return False
        if self._status.get(run_id) != "RUNNING":
            self.client.update_run(run_id, status="RUNNING")
            self._status[run_id] = "RUNNING"
        now = _now_ms()
        values = {**_numeric(metrics), names.EPOCH: float(epoch)}
        if len(values) > 1000:
            raise ValueError(f"{len(values)} metrics in one epoch; MLflow logs at most 1000 in one batch")
        # One batch: the sql store writes a batch's metrics in one transaction, so a driver killed
        # mid-write leaves all of this epoch or none of it, never half that a resume would log again.
        self.client.log_batch(run_id, metrics=[Metric(k, v, now, epoch) for k, v in values.items()])
        self._last_epoch[run_id] = epoch
        return True

    def finish_child(self, run_id: str, status: str, *, summary: Mapping[str, Any],
                     tags: Mapping[str, Any] | None = None, artifacts: Mapping[str, Any] | None = None) -> bool:
        """Log the trial's summary once and close the child; False if it was already closed."""
        if self.status(run_id) in DONE:
            return False
        step = self.last_epoch(run_id)
        now = _now_ms()
        held = self.client.get_run(run_id).data.metrics  # a driver killed after this batch logged it already
        self.client.log_batch(run_id, metrics=[Metric(k, v, now, step) for k, v in _numeric(summary).items()
                                               if k not in held],
                              tags=[RunTag(k, str(v)) for k, v in dict(tags or {}).items()])
        for name, obj in dict(artifacts or {}).items():
            self.client.log_dict(run_id, obj, name)
        self.finish(run_id, status)
        return True

    def finish(self, run_id: str, status: str) -> None:
        if status not in TERMINAL:
            raise ValueError(f"a run ends FINISHED, FAILED or KILLED, not {status!r}")
        self.client.set_terminated(run_id, status=status)
        self._status[run_id] = status

    # ------------------------------------------------------------------ artifacts

    def log_artifact(self, run_id: str, path: str | Path, artifact_path: str | None = None) -> None:
        self.client.log_artifact(run_id, str(path), artifact_path)

    def log_text(self, run_id: str, text: str, artifact_file: str) -> None:
        self.client.log_text(run_id, text, artifact_file)

    def read_json(self, run_id: str, artifact_file: str) -> Any | None:
        """A JSON artifact of a run (``fusion_matrices.json``), or None when the run has none."""
        if artifact_file not in {a.path for a in self.client.list_artifacts(run_id)}:
            return None
        with tempfile.TemporaryDirectory() as tmp:
            local = self.client.download_artifacts(run_id, artifact_file, tmp)
            return json.loads(Path(local).read_text(encoding="utf-8"))

    # ------------------------------------------------------------------ reading back (tables)

    def read_study(self, study: str, profile: str, parent_id: str | None = None) -> StudyRuns:
        """Everything a table needs, from the store alone: the parent run and each child's trial, state,
        params, latest metrics and ``val_top1`` history by epoch."""
        if parent_id:
            parent: RunRecord | None = RunRecord.of(self.client.get_run(parent_id))
        else:  # a finished invocation over one still running (or killed) elsewhere
            parent = self.latest_parent(study, profile, finished=True) or self.latest_parent(study, profile)
        if parent is None:
            raise LookupError(f"no runs of study {study!r} (profile {profile}) in {self.uri}; "
                              f"run `harness run` first")
        trials = [self._trial_run(run) for run in self.children(parent.run_id).values()]
        return StudyRuns(parent, trials)

    def _trial_run(self, run: RunRecord) -> TrialRun:
        return TrialRun(TrialIdentity.from_tags(run.tags), run, dict(self.metric_history(run.run_id, names.VAL_TOP1)))

    def experiments(self) -> dict[str, str]:
        """Study name -> experiment id, for the experiments this harness created."""
        return {e.name: e.experiment_id for e in self.client.search_experiments(
            filter_string=f"tags.`{names.STUDY}` != ''", max_results=1000)}

    def parents(self, study: str) -> list[RunRecord]:
        exp = self.experiment_id(study, create=False)
        if exp is None:
            return []
        return [RunRecord.of(r) for r in self.client.search_runs(
            [exp], filter_string=f"tags.`{names.KIND}` = '{names.PARENT}'", run_view_type=ViewType.ALL,
            max_results=1000)]

    def runs(self, study: str, *, deleted: bool = False) -> list[RunRecord]:
        """Every run of a study's experiment (``deleted``: also the deleted ones)."""
        exp = self.experiment_id(study, create=False)
        if exp is None:
            return []
        view = ViewType.ALL if deleted else ViewType.ACTIVE_ONLY
        return [RunRecord.of(r) for r in self.client.search_runs([exp], run_view_type=view, max_results=5000)]

    def metric_history(self, run_id: str, metric: str) -> list[tuple[int, float]]:
        """(step, value) of every value a run logged for ``metric``, in logging order."""
        history = self.client.get_metric_history(run_id, metric)
        return [(int(m.step), m.value) for m in sorted(history, key=lambda m: m.timestamp)]

    # ------------------------------------------------------------------ helpers

    def _log_params(self, run_id: str, params: Mapping[str, Any]) -> None:
        items = [Param(k, _param_value(v)[:6000]) for k, v in params.items()]
        for i in range(0, len(items), 90):  # MLflow's limit is 100 params per batch
            self.client.log_batch(run_id, params=items[i:i + 90])


def _create_sqlite(db: Path) -> None:
    """Build a new store under a temporary name and rename it into place, so it appears whole or not at all.

    MLflow's first migration killed half-way (SIGKILL of the driver) leaves a file that no later
    open can upgrade ("table _alembic_tmp_tags already exists"): every ``--resume`` would fail.
    """
    for stale in db.parent.glob(f".{db.name}.*.creating*"):  # left by a killed driver
        if not Path(f"/proc/{stale.name[len(db.name) + 2:].split('.')[0]}").exists():
            stale.unlink(missing_ok=True)
    tmp = db.with_name(f".{db.name}.{os.getpid()}.creating")
    MlflowClient(tracking_uri=f"sqlite:///{tmp}").search_experiments(max_results=1)
    try:
        os.link(tmp, db)  # unlike a rename, never replaces a store another process made meanwhile
    except FileExistsError:
        pass
    finally:
        tmp.unlink()


def _quote(value: str) -> str:
    if "'" in value:
        raise ValueError(f"a single quote is not allowed in a study or profile name: {value!r}")
    return value
