"""One lifecycle for every study: plan, prepare, track, run on Ray, publish.

    harness run studies/table1.yaml                   # laptop profile, local Ray, ~10 min on 2 cores
    harness run studies/table1.yaml --dry-run         # validate, profile, print the plan; no Ray, no files
    harness run studies/table1.yaml --resume          # continue the latest invocation after a crash or Ctrl-C
    harness run studies/table1.yaml --profile paper --address HOST:6379 --storage /shared/ray

Order of work: resolve the profile (paths made absolute, so a worker in another
folder reads the same data), plan the trials (the kind's plan: rows x seeds,
or a search), generate the synthetic data once (before any worker could race
for it) and fingerprint every data copy, create the MLflow store and the
parent run (or reopen it with ``--resume``), then start Ray and run the trials;
each trial's child run is written by the driver's Tune callback. At the end
the parent is closed and the kind's report is rebuilt from MLflow.

Ctrl-C is a pause: the parent run is marked KILLED with ``harness.interrupted``,
the exit code is 130, and ``--resume`` continues (finished trials are not run
again, running ones continue from their last checkpoint).
"""
from __future__ import annotations

import hashlib
import json
import logging
import sys
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from harness import device, names, stats
from harness.config import Data, Study
from harness.data.fingerprint import fingerprint
from harness.data.synth import ensure_synth
from harness.files import WORK
from harness.protocol import Protocol
from harness.study.kinds import Kind
from harness.study.plan import Launch, Plan, RunOptions, data_key
from harness.tracking import DONE, RunRecord, Tracker, default_uri, git_commit
from harness.ui import browse_line

if TYPE_CHECKING:  # Ray is imported when trials run, not for a dry run
    from harness.tune.callback import MlflowCallback

log = logging.getLogger(__name__)

DataKey = tuple[str, str, str | None]


def execute(study: Study, kind: Kind, plan: Plan, opts: RunOptions) -> int:
    """Track, run, publish. Returns 0 when every trial finished, 1 otherwise, 130 when interrupted."""
    start = time.perf_counter()
    trace = prepare(plan.data())
    tracker = Tracker(default_uri(WORK))
    tracker.prepare()  # the database exists before any worker starts
    commit = git_commit()

    def stamp(data: Data) -> dict[str, str]:  # what every trial's child run is tagged with
        return {**trace(data), **_commit_tags(commit)}

    parent = open_parent(tracker, plan, opts, commit)
    planned = plan.total  # before the seeds of earlier waves: --until-resolved's default budget is 3x this
    before = tracker.children(parent.run_id)
    launch = attach(plan, tracker, parent, opts, stamp)
    tracker.set_tags(parent.run_id, _summary_tags(plan, trace))
    try:
        if launch is not None:
            run_on_ray(plan, opts, launch)
        else:
            log.info("every trial of %s (%s) is already finished in MLflow", study.name, opts.profile)
        ran_waves = opts.until_resolved and waves(plan, tracker, parent.run_id, opts, stamp,
                                                  budget=opts.max_trials or 3 * planned)
    except KeyboardInterrupt:
        return interrupted(study, kind, tracker, parent.run_id, opts, before=before)
    close_lost_trials(tracker, parent.run_id)
    spent = time.perf_counter() - start if launch is not None or ran_waves else 0.0
    return publish(study, kind, tracker, parent.run_id, opts, wall_s=parent.wall_before + spent)


def attach(plan: Plan, tracker: Tracker, parent: Parent, opts: RunOptions,
           stamp: Callable[[Data], dict[str, str]]) -> Launch | None:
    """What is left to run under the parent, and how: the trials not yet done (a resume reopens the errored
    ones and restores Tune's saved experiment when it can); None when nothing is left."""
    children = tracker.children(parent.run_id)
    plan.cover(children)  # seeds an earlier --until-resolved wave added
    reopen_errored(tracker, children.values())
    children = tracker.children(parent.run_id)
    todo = frozenset(t.key for t in plan.trials if not _done(children.get(t.key)))
    specs = {t.key: t for t in plan.trials}
    retag_resumed(tracker, {k: children[k] for k in todo if k in children},
                  {k: stamp(specs[k].config.data) for k in todo})
    sampled = not plan.trials  # a search: Optuna samples its trials while it runs
    if not (todo if not sampled else not parent.finished_before):
        return None
    experiment = parent.experiment
    restore = parent.resumed and _can_restore(experiment)
    if parent.resumed and not restore:
        experiment = new_experiment(plan.study, opts)
        tracker.set_tags(parent.run_id, {names.RAY_EXPERIMENT: experiment})
        log.info("no Ray experiment state to restore; the unfinished trials start afresh under the same parent")
    log.info("%s: %d of %d trials to run, Ray experiment %s, MLflow %s (parent %s)", plan.study.name,
             len(todo) if not sampled else plan.total, plan.total, experiment, tracker.uri, parent.run_id)
    return Launch(experiment, _callback(tracker, parent.run_id, plan.total), restore, opts.max_concurrent, stamp,
                  todo)


def run_on_ray(plan: Plan, opts: RunOptions, how: Launch) -> None:
    from harness.tune.session import session

    with session(opts.address):
        t0 = time.perf_counter()
        plan.launch(how)
        log.info("Ray Tune finished in %.1f s", time.perf_counter() - t0)


def _callback(tracker: Tracker, parent_id: str, total: int) -> MlflowCallback:
    from harness.tune.callback import MlflowCallback

    return MlflowCallback(tracker.uri, parent_id, total=total)


def _can_restore(experiment: str) -> bool:
    from harness.tune.experiment import can_restore

    return can_restore(experiment)


# ----------------------------------------------------------------------------- data


def prepare(datas: Iterable[Data]) -> Callable[[Data], dict[str, str]]:
    """Generate the synthetic sets the plan reads (once, here, before any worker could race to generate
    them) and fingerprint each distinct data copy; returns a trial's trace tags given its data."""
    datas = list(datas)
    for data in {d.root: d for d in datas if d.format == "synth"}.values():
        t0 = time.perf_counter()
        ensure_synth(data)
        log.info("synthetic data ready at %s (%.1f s)", data.root, time.perf_counter() - t0)
    prints = data_fingerprints(datas)
    return lambda data: trace_tags(data, prints)


def trace_tags(data: Data, prints: Mapping[DataKey, dict[str, str]]) -> dict[str, str]:
    """How a trial on ``data`` is measured and on what: its protocol name and its data's fingerprint tags."""
    return {names.PROTOCOL: Protocol.from_data(data).name, **prints.get(data_key(data), {})}


def data_fingerprints(datas: Iterable[Data]) -> dict[DataKey, dict[str, str]]:
    """Fingerprint of each distinct data copy, as tags, by :func:`harness.study.plan.data_key`.

    ``harness.data_fingerprint`` hashes the train and val fingerprints
    (``harness.data.fingerprint``, 16 clips each: 0.05-0.1 s per split on
    the laptop Table 1 set, measured), so one value says "same data" for a table; the per-split values are
    what ``harness data fingerprint --split val|train`` prints. A copy that
    cannot be read is tagged ``unavailable`` (the trials will fail on it anyway).
    """
    out: dict[DataKey, dict[str, str]] = {}
    for data in datas:
        key = data_key(data)
        if key in out:
            continue
        t0 = time.perf_counter()
        try:
            splits = {split: fingerprint(data, split) for split in ("train", "val")}
        except Exception as exc:  # noqa: BLE001 - recorded, not fatal: training reports the data error
            log.warning("data fingerprint of %s unavailable: %s", data.root, exc)
            out[key] = {names.FINGERPRINT: "unavailable"}
            continue
        both = hashlib.sha256(f"{splits['train']['fingerprint']}:{splits['val']['fingerprint']}".encode())
        out[key] = {names.FINGERPRINT: both.hexdigest()[:16],
                    names.FINGERPRINT_TRAIN: splits["train"]["fingerprint"],
                    names.FINGERPRINT_VAL: splits["val"]["fingerprint"],
                    names.DECODER: splits["val"]["decoder"]}
        log.info("data fingerprint %s for %s (%.2f s)", out[key][names.FINGERPRINT], data.root,
                 time.perf_counter() - t0)
    return out


def _summary_tags(plan: Plan, trace: Callable[[Data], dict[str, str]]) -> dict[str, str]:
    """The parent's protocol and fingerprint tags: every value its trials carry, joined."""
    tags = [trace(d) for d in plan.data()]
    return {k: ", ".join(sorted({t[k] for t in tags if k in t})) for k in (names.PROTOCOL, names.FINGERPRINT)}


def _commit_tags(commit: str) -> dict[str, str]:
    return {names.COMMIT: commit, names.GIT_COMMIT: commit.removesuffix("+dirty")}


# ----------------------------------------------------------------------------- the parent run


@dataclass(frozen=True)
class Parent:
    run_id: str
    experiment: str  # the Ray Tune experiment (folder or URI)
    resumed: bool
    finished_before: bool  # a resumed parent that had ended FINISHED
    wall_before: float  # seconds of earlier invocations that ran to their end


def new_experiment(study: Study, opts: RunOptions) -> str:
    """A fresh Ray experiment under ``--storage`` (default ``work/ray/<study>``), named by profile and time."""
    root = opts.storage.rstrip("/") if opts.storage else str((WORK / "ray" / study.name).resolve())
    if "://" not in root:
        root = str(Path(root).expanduser().resolve())
    return f"{root}/{opts.profile}-{time.strftime('%Y%m%d-%H%M%S')}"


def open_parent(tracker: Tracker, plan: Plan, opts: RunOptions, commit: str) -> Parent:
    """The invocation's parent run: reopened with ``--resume``, else a new one with the resolved study."""
    study = plan.study
    found = tracker.latest_parent(study.name, opts.profile) if opts.resume else None
    if opts.resume and found is None:
        log.warning("--resume: no earlier run of %s (%s) in %s; starting a new one", study.name, opts.profile,
                    tracker.uri)
    if found is not None:
        tracker.reopen(found.run_id)
        tracker.set_tags(found.run_id, {names.INTERRUPTED: "0"})
        log.info("resuming parent run %s (%s)", found.run_id, found.name)
        return Parent(found.run_id, found.tags.get(names.RAY_EXPERIMENT, ""), True, found.status == "FINISHED",
                      float(found.tags.get(names.WALL_S, 0)))
    run_id = start_parent(tracker, plan, opts, commit)
    experiment = new_experiment(study, opts)
    tracker.set_tags(run_id, {names.RAY_EXPERIMENT: experiment})
    return Parent(run_id, experiment, False, False, 0.0)


def start_parent(tracker: Tracker, plan: Plan, opts: RunOptions, commit: str) -> str:
    """A new parent run: the plan's params and metrics, and the resolved study as an artifact."""
    import yaml

    study = plan.study
    resolved = study.model_dump(mode="json")
    resolved["profiles"] = {plan.profile_name: plan.profile.model_dump(mode="json")}
    run_id = tracker.start_parent(study.name, plan.profile_name, params=plan.parent_params(), tags={
        **_commit_tags(commit), names.SEEDS: str(plan.profile.seeds), names.STUDY_FILE: opts.study_path,
        names.MACHINE: device.describe()})
    tracker.log_text(run_id, yaml.safe_dump(resolved, sort_keys=False), names.STUDY_YAML)
    if plan.parent_metrics():
        tracker.log_metrics(run_id, plan.parent_metrics())
    return run_id


def _done(run: RunRecord | None) -> bool:
    """Whether a child needs no more training: FINISHED, or FAILED for a reason a rerun would repeat (NaN)."""
    return run is not None and run.status in DONE and run.tags.get(names.ERROR) != "1"


def reopen_errored(tracker: Tracker, runs: Iterable[RunRecord]) -> None:
    """Trials that errored before are retried by a resume (Tune's ``resume_errored``): their children reopen."""
    for run in runs:
        if run.tags.get(names.ERROR) == "1" and run.status == "FAILED":
            tracker.reopen(run.run_id)
            tracker.set_tags(run.run_id, {names.ERROR: "0"})


def retag_resumed(tracker: Tracker, runs: Mapping[str, RunRecord], now: Mapping[str, dict[str, str]]) -> None:
    """A resumed trial reads the data as they are now (``now``: its trace tags today, by trial key): one that
    trained some epochs on other data gets both fingerprints (``old+new``), which the tables flag; one not
    yet started takes today's."""
    for key, run in runs.items():
        before, today = run.tags.get(names.FINGERPRINT), now.get(key, {}).get(names.FINGERPRINT)
        if before is None or today is None or today in before.split("+"):
            continue
        if int(run.metrics.get(names.EPOCH, 0)) == 0:
            tracker.set_tags(run.run_id, now[key])
            continue
        log.warning("%s: the data changed since this trial started (fingerprint %s, now %s); "
                    "its result mixes both", key, before, today)
        tracker.set_tags(run.run_id, {names.FINGERPRINT: f"{before}+{today}"})


def close_lost_trials(tracker: Tracker, parent_id: str) -> None:
    """Children whose trial no Ray experiment holds any more (sampled after the last saved state when the
    driver was killed; Tune re-samples in their place) end KILLED, tagged, and stay out of the tables."""
    for key, run in tracker.children(parent_id).items():
        if run.status not in ("FINISHED", "FAILED", "KILLED"):
            log.warning("%s: its trial was lost with the killed driver; marked KILLED", key)
            tracker.set_tags(run.run_id, {names.LOST: "1"})
            tracker.finish(run.run_id, "KILLED")


# ----------------------------------------------------------------------------- --until-resolved


def waves(plan: Plan, tracker: Tracker, parent_id: str, opts: RunOptions, trace: Callable[[Data], dict[str, str]],
          *, budget: int) -> bool:
    """Add seeds to the rows of unresolved orderings, one wave at a time, until every ordering resolves, the
    rest cannot (more than harness.stats.MAX_SEEDS seeds), or the study has ``budget`` trials. Each wave and
    why it ran are kept on the parent run (``harness.waves``) for the table. True if a wave ran."""
    from harness.tables.statistics import orderings

    ran = False
    history = json.loads(tracker.run(parent_id).tags.get(names.WAVES, "[]"))
    while True:
        table = finished_top1(tracker, parent_id, plan)
        judged = orderings(plan.study, table)
        have = {row: sum(t.row == row for t in plan.trials) for row in table}
        extra = stats.next_seeds(judged.comparisons, have, budget) if judged else {}
        open_ = [f"{c.a} vs {c.b}" for c in judged.comparisons if not c.resolved] if judged else []
        if not extra:
            hopeless = judged is not None and all(c.seeds_needed is None for c in judged.comparisons
                                                  if not c.resolved)
            stop = ("every ordering resolved" if not open_ else f"the unresolved ones would need more than "
                    f"{stats.MAX_SEEDS} seeds a row" if hopeless else f"the budget of {budget} trials is spent")
            history.append({"stop": stop, "unresolved": open_})
            tracker.set_tags(parent_id, {names.WAVES: json.dumps(history)})
            log.info("--until-resolved: %s", stop)
            return ran
        new = plan.add_seeds(extra)
        history.append({"added": extra, "unresolved": open_})
        experiment = new_experiment(plan.study, opts)
        tracker.set_tags(parent_id, {names.WAVES: json.dumps(history), names.RAY_EXPERIMENT: experiment})
        log.info("--until-resolved wave %d: %s more seed(s) for %s (unresolved: %s)", len(history),
                 sum(extra.values()), ", ".join(f"{r} +{n}" for r, n in extra.items()), "; ".join(open_))
        run_on_ray(plan, opts, Launch(experiment, _callback(tracker, parent_id, plan.total), False,
                                      opts.max_concurrent, trace, frozenset(t.key for t in new)))
        ran = True


def finished_top1(tracker: Tracker, parent_id: str, plan: Plan) -> dict[str, dict[int, float]]:
    """row -> seed -> last top-1 of the plan's finished trials."""
    table: dict[str, dict[int, float]] = {t.row: {} for t in plan.trials}
    specs = {t.key: t for t in plan.trials}
    for key, run in tracker.children(parent_id).items():
        top1 = run.metrics.get(names.LAST_TOP1)
        if key in specs and run.status == "FINISHED" and top1 is not None:
            table[specs[key].row][specs[key].seed] = top1
    return table


# ----------------------------------------------------------------------------- the end


def interrupted(study: Study, kind: Kind, tracker: Tracker, parent_id: str, opts: RunOptions, *,
                before: dict[str, RunRecord]) -> int:
    """Ctrl-C: the parent is paused (KILLED, tagged interrupted), the tables are rewritten only when a
    trial finished in this invocation, and the user is told how to continue; exit code 130."""
    tracker.set_tags(parent_id, {names.INTERRUPTED: "1"})
    tracker.finish(parent_id, "KILLED")
    was_done = {k for k, r in before.items() if r.status == "FINISHED"}
    now_done = {k for k, r in tracker.children(parent_id).items() if r.status == "FINISHED"}
    if now_done - was_done:
        kind.report(study, opts.profile, tracker, parent_id, opts.out_dir)
    cmd = f"harness run {opts.study_path}" + (f" --profile {opts.profile}" if opts.profile != "laptop" else "")
    cmd += "".join(f" --{flag} {value}" for flag, value in (("address", opts.address), ("storage", opts.storage))
                   if value)  # a resume must find the same cluster and trial storage
    print(f"interrupted: nothing lost; continue with `{cmd} --resume`", file=sys.stderr)
    return 130


def publish(study: Study, kind: Kind, tracker: Tracker, parent_id: str, opts: RunOptions, *, wall_s: float) -> int:
    """Close the parent run (FAILED if a trial did not finish), write the report from MLflow, attach and print it."""
    children = tracker.children(parent_id)
    bad = sorted(k for k, r in children.items() if r.status != "FINISHED" and names.LOST not in r.tags)
    if bad:
        log.error("%d trial(s) did not finish: %s", len(bad), ", ".join(bad))
    tracker.set_tags(parent_id, {names.WALL_S: f"{wall_s:.1f}"})
    tracker.finish(parent_id, "FAILED" if bad else "FINISHED")
    report = kind.report(study, opts.profile, tracker, parent_id, opts.out_dir)
    for p in report.paths.values():
        tracker.log_artifact(parent_id, p, names.RESULTS_ARTIFACTS)
    tracker.log_metrics(parent_id, report.summary)  # each row's top-1 and GFLOPs: the chart view compares rows
    print()
    print(report.text)
    exp_id = tracker.experiment_id(study.name, create=False)
    print(f"wall time {wall_s:.0f} s; results: {', '.join(str(p) for p in report.paths.values())}")
    print(browse_line(tracker.uri, study.name, exp_id))
    sys.stdout.flush()
    return 1 if bad else 0
