"""MLflow: the one module that talks to it. Runs, params, metrics, artifacts, look-ups.

    harness run studies/table1.yaml          # writes here, through the driver only
    harness tables studies/table1.yaml       # reads here, nothing else
    harness ui                               # serves this store

Layout. One MLflow experiment per study (named after it). Each ``harness run``
invocation is a *parent* run (tag ``harness.kind=parent``); each trial (row x
seed) is a *child* run under it (``mlflow.parentRunId``), keyed by a
deterministic trial key ``<study>/<profile>/<row>/seed<k>`` stored as the tag
``harness.trial_key``. ``--resume`` re-attaches to the latest parent run of the
same study and profile.

Exactly-once. Only the driver writes (Tune callbacks run in the driver, not in
the workers), the database is created before any worker starts, and every
write is keyed: a trial that Ray re-runs after a crash finds its child run by
key, epochs already logged (the latest ``epoch`` metric) are skipped, and a
finished child ignores further results. So a killed-and-resumed study ends
with one child run per trial and one value per epoch per metric.

Store. ``MLFLOW_TRACKING_URI`` when set; else ``sqlite:///<abs>/work/mlflow.db``
(``work/`` is git-ignored, relative to the current folder). A sqlite store is
switched to WAL so the UI can read while the driver writes, and its artifacts
go to ``work/mlartifacts`` beside it.

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
import time
from pathlib import Path
from typing import Any, Iterable, Mapping

os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")  # no network here; nothing to phone home

from mlflow import MlflowClient  # noqa: E402
from mlflow.entities import Metric, Param, RunTag, ViewType  # noqa: E402

log = logging.getLogger(__name__)

KIND, STUDY, PROFILE, TRIAL_KEY = "harness.kind", "harness.study", "harness.profile", "harness.trial_key"
ROW, SEED, COMMIT, RAY_EXPERIMENT = "harness.row", "harness.seed", "harness.git_commit", "harness.ray_experiment"
PARENT_ID, RUN_NAME, GIT_COMMIT = "mlflow.parentRunId", "mlflow.runName", "mlflow.source.git.commit"
LAST_EPOCH = "epoch"  # the metric whose latest value says which epochs a child already holds
TERMINAL = ("FINISHED", "FAILED", "KILLED")


def default_uri(work_dir: str | Path = "work") -> str:
    """``MLFLOW_TRACKING_URI`` if set, else the project's sqlite file under the git-ignored work dir."""
    env = os.environ.get("MLFLOW_TRACKING_URI")
    if env:
        return env
    return f"sqlite:///{(Path(work_dir).resolve() / 'mlflow.db').as_posix()}"


def sqlite_path(uri: str) -> Path | None:
    """The database file of a ``sqlite:///`` URI (None for other stores)."""
    if not uri.startswith("sqlite:///"):
        return None
    path = uri.removeprefix("sqlite:///")
    return Path(path if path.startswith("/") else Path.cwd() / path)


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


def flatten(d: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    """``{"recipe": {"lr": 0.1}}`` -> ``{"recipe.lr": 0.1}``; lists stay values."""
    out: dict[str, Any] = {}
    for k, v in d.items():
        if isinstance(v, Mapping) and v and all(isinstance(x, str) for x in v):
            out.update(flatten(v, f"{prefix}{k}."))
        else:
            out[f"{prefix}{k}"] = v
    return out


def _param_value(v: Any) -> str:
    return v if isinstance(v, str) else json.dumps(v)


def _numeric(metrics: Mapping[str, Any]) -> dict[str, float]:
    return {k: float(v) for k, v in metrics.items()
            if isinstance(v, (int, float)) and not isinstance(v, bool) and v == v}


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
        exp = self.client.get_experiment_by_name(study)
        if exp is not None:
            return exp.experiment_id
        if not create:
            return None
        location = None
        if self._db is not None:  # keep artifacts beside the database, not in the current folder
            location = (self._db.parent / "mlartifacts").resolve().as_uri()
        return self.client.create_experiment(study, artifact_location=location,
                                             tags={"harness.study": study})

    # ------------------------------------------------------------------ parent runs

    def latest_parent(self, study: str, profile: str, *, finished: bool = False) -> Any | None:
        """The latest invocation of a study and profile (``finished``: the latest that ended FINISHED)."""
        exp = self.experiment_id(study, create=False)
        if exp is None:
            return None
        where = f"tags.`{KIND}` = 'parent' and tags.`{PROFILE}` = '{_quote(profile)}'"
        if finished:
            where += " and attributes.status = 'FINISHED'"
        runs = self.client.search_runs([exp], filter_string=where, run_view_type=ViewType.ACTIVE_ONLY,
                                       max_results=1, order_by=["attributes.start_time DESC"])
        return runs[0] if runs else None

    def start_parent(self, study: str, profile: str, *, params: Mapping[str, Any],
                     tags: Mapping[str, str]) -> str:
        exp = self.experiment_id(study)
        name = f"{study} {profile} {time.strftime('%Y-%m-%d %H:%M:%S')}"
        run = self.client.create_run(exp, run_name=name, tags={
            KIND: "parent", STUDY: study, PROFILE: profile, **tags})
        self._log_params(run.info.run_id, params)
        return run.info.run_id

    def reopen(self, run_id: str) -> None:
        """Mark a parent (or child) RUNNING again for ``--resume``."""
        self.client.update_run(run_id, status="RUNNING")

    def set_tags(self, run_id: str, tags: Mapping[str, Any]) -> None:
        self.client.log_batch(run_id, tags=[RunTag(k, str(v)) for k, v in tags.items()])

    # ------------------------------------------------------------------ child runs

    def children(self, parent_id: str) -> dict[str, Any]:
        """Child runs of a parent, by trial key."""
        parent = self.client.get_run(parent_id)
        out: dict[str, Any] = {}
        token = None
        while True:
            page = self.client.search_runs(
                [parent.info.experiment_id], filter_string=f"tags.`{PARENT_ID}` = '{parent_id}'",
                run_view_type=ViewType.ALL, max_results=1000, page_token=token,
                order_by=["attributes.start_time ASC"])
            for run in page:
                key = run.data.tags.get(TRIAL_KEY)
                if key is None:
                    continue
                if key in out:  # would mean a second writer; keep the first and say so
                    log.warning("two child runs for trial %s under %s: %s and %s", key, parent_id,
                                out[key].info.run_id, run.info.run_id)
                    continue
                out[key] = run
            token = page.token
            if not token:
                return out

    def ensure_children(self, parent_id: str, trials: Iterable[Mapping[str, Any]]) -> dict[str, str]:
        """One child per trial, created SCHEDULED with its params; existing ones are reused, not duplicated.

        Each trial is ``{"key", "name", "tags", "params", "metrics"}``; ``metrics``
        (the profile's params and GFLOPs) are logged at step 0 on creation only.
        """
        parent = self.client.get_run(parent_id)
        existing = self.children(parent_id)
        ids: dict[str, str] = {}
        for t in trials:
            run = existing.get(t["key"])
            if run is None:
                run = self.client.create_run(parent.info.experiment_id, run_name=t["name"], tags={
                    PARENT_ID: parent_id, KIND: "trial", TRIAL_KEY: t["key"], **t.get("tags", {})})
                self.client.update_run(run.info.run_id, status="SCHEDULED")
                self._log_params(run.info.run_id, t.get("params", {}))
                now = _now_ms()
                metrics = [Metric(k, v, now, 0) for k, v in _numeric(t.get("metrics", {})).items()]
                if metrics:
                    self.client.log_batch(run.info.run_id, metrics=metrics)
                status, last = "SCHEDULED", 0
            else:
                status = run.info.status
                last = int(run.data.metrics.get(LAST_EPOCH, 0))
                if t.get("params") and not run.data.params:  # a driver killed right after create_run
                    self._log_params(run.info.run_id, t["params"])
            ids[t["key"]] = run.info.run_id
            self._status[run.info.run_id] = status
            self._last_epoch[run.info.run_id] = last
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
        self._last_epoch[run_id] = int(run.data.metrics.get(LAST_EPOCH, 0))

    def log_epoch(self, run_id: str, metrics: Mapping[str, Any]) -> bool:
        """Log one epoch's metrics at step ``metrics["epoch"]``; False (and nothing written) if already held."""
        if self.status(run_id) in ("FINISHED", "FAILED"):
            return False
        epoch = int(metrics["epoch"])
        if epoch <= self.last_epoch(run_id):
            return False
        if self._status.get(run_id) != "RUNNING":
            self.client.update_run(run_id, status="RUNNING")
            self._status[run_id] = "RUNNING"
        now = _now_ms()
        values = {**_numeric(metrics), LAST_EPOCH: float(epoch)}
        if len(values) > 1000:
            raise ValueError(f"{len(values)} metrics in one epoch; MLflow logs at most 1000 in one batch")
        # One batch: the sql store writes a batch's metrics in one transaction, so a driver killed
        # mid-write leaves all of this epoch or none of it, never half that a resume would log again.
        self.client.log_batch(run_id, metrics=[Metric(k, v, now, epoch) for k, v in values.items()])
        self._last_epoch[run_id] = epoch
        return True

    def finish_child(self, run_id: str, status: str, *, summary: Mapping[str, Any],
                     tags: Mapping[str, Any] = (), artifacts: Mapping[str, Any] = ()) -> bool:
        """Log the trial's summary once and close the child; False if it was already closed."""
        if self.status(run_id) in ("FINISHED", "FAILED"):
            return False
        step = self.last_epoch(run_id)
        now = _now_ms()
        held = self.client.get_run(run_id).data.metrics  # a driver killed after this batch logged it already
        self.client.log_batch(run_id, metrics=[Metric(k, v, now, step) for k, v in _numeric(summary).items()
                                               if k not in held],
                              tags=[RunTag(k, str(v)) for k, v in dict(tags).items()])
        for name, obj in dict(artifacts).items():
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
        import tempfile

        names = {a.path for a in self.client.list_artifacts(run_id)}
        if artifact_file not in names:
            return None
        with tempfile.TemporaryDirectory() as tmp:
            local = self.client.download_artifacts(run_id, artifact_file, tmp)
            return json.loads(Path(local).read_text(encoding="utf-8"))

    # ------------------------------------------------------------------ reading back (tables)

    def read_study(self, study: str, profile: str, parent_id: str | None = None) -> dict[str, Any]:
        """Everything a table needs, from the store alone.

        Returns ``{"parent": {...}, "trials": [{...}, ...]}``: the parent's id,
        status, start time and tags; per child its key, row, seed, status, tags,
        params, latest metrics and the ``val_top1`` history by epoch.
        """
        if parent_id:
            parent = self.client.get_run(parent_id)
        else:  # a finished invocation over one still running (or killed) elsewhere
            parent = self.latest_parent(study, profile, finished=True) or self.latest_parent(study, profile)
        if parent is None:
            raise LookupError(f"no runs of study {study!r} (profile {profile}) in {self.uri}; "
                              f"run `harness run` first")
        trials = []
        for key, run in self.children(parent.info.run_id).items():
            history = self.client.get_metric_history(run.info.run_id, "val_top1")
            trials.append({
                "key": key, "run_id": run.info.run_id, "status": run.info.status,
                "row": run.data.tags.get(ROW), "seed": int(run.data.tags.get(SEED, -1)),
                "tags": dict(run.data.tags), "params": dict(run.data.params),
                "metrics": dict(run.data.metrics),
                "val_top1_history": {int(m.step): m.value for m in sorted(history, key=lambda m: m.timestamp)},
            })
        return {"parent": {"run_id": parent.info.run_id, "experiment_id": parent.info.experiment_id,
                           "status": parent.info.status, "start_time": parent.info.start_time,
                           "end_time": parent.info.end_time, "tags": dict(parent.data.tags),
                           "params": dict(parent.data.params)},
                "trials": trials}

    def experiments(self) -> dict[str, str]:
        """Study name -> experiment id, for the experiments this harness created."""
        return {e.name: e.experiment_id for e in self.client.search_experiments(
            filter_string="tags.`harness.study` != ''", max_results=1000)}

    def parents(self, study: str) -> list[Any]:
        exp = self.experiment_id(study, create=False)
        if exp is None:
            return []
        return list(self.client.search_runs([exp], filter_string=f"tags.`{KIND}` = 'parent'",
                                            run_view_type=ViewType.ALL, max_results=1000))

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


def _now_ms() -> int:
    return int(time.time() * 1000)

