"""``harness run``: a study's rows x seeds as Ray Tune trials, tracked in MLflow, then its tables.

    harness run studies/table1.yaml                   # laptop profile, local Ray, ~10 min on 2 cores
    harness run studies/table1.yaml --dry-run         # validate, profile, print the plan; no Ray, no files
    harness run studies/table1.yaml --resume          # continue the latest invocation after a crash
    harness run studies/table1.yaml --profile paper --address HOST:6379

Order of work: validate the study, resolve the profile into one ``TrainConfig``
per trial (relative paths made absolute, so a worker in another folder reads
the same data), profile every row on the paper backbone, generate the
synthetic set once (before any worker could race for it), create the MLflow
store, a parent run and one child run per trial, then start Ray and run the
trials; the tables and the plot are rebuilt from MLflow at the end.

A trial's key is ``<study>/<profile>/<row>/seed<k>``: the same trial gets the
same key in every invocation, which is what lets ``--resume`` and Ray's retries
update a trial's own record instead of adding one.
"""
from __future__ import annotations

import logging
import os
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from harness.config import Profile, Study, TrainConfig, trial_config

log = logging.getLogger(__name__)

WORK = Path("work")
FINGERPRINT, PROTOCOL = "harness.data_fingerprint", "harness.protocol"  # tags on every child run (and the parent)


@dataclass(frozen=True)
class Trial:
    """One row x seed (x regime, for probes) of a study under one profile."""

    key: str
    row: str
    seed: int
    config: TrainConfig
    tags: dict[str, str] = field(default_factory=dict)
    regime: str | None = None

    @property
    def label(self) -> str:
        """The table line this trial belongs to: the row, or ``row@regime`` in a probe."""
        return self.row if self.regime is None else f"{self.row}@{self.regime}"

    def spec(self) -> dict[str, Any]:
        """What travels to the Ray worker: JSON only."""
        return {"key": self.key, "row": self.label, "seed": self.seed, "tags": self.tags,
                "train": self.config.model_dump(mode="json")}


def trial_key(study: str, profile: str, row: str, seed: int, regime: str | None = None) -> str:
    return f"{study}/{profile}/{row}/seed{seed}" if regime is None else f"{study}/{profile}/{row}/{regime}/seed{seed}"


def _absolute(value: str | None) -> str | None:
    """A relative path made absolute against the current folder; ``${VAR}`` left for its error."""
    if value is None or "${" in value or "://" in value:
        return value
    return str(Path(value).expanduser().resolve())


def resolve_profile(study: Study, name: str, seeds: int | None = None) -> Profile:
    if name not in study.profiles:
        raise ValueError(f"study {study.name!r} has no profile {name!r}; it has {', '.join(study.profiles)}")
    prof = study.profiles[name].model_copy(deep=True)
    if seeds is not None:
        if seeds < 1:
            raise ValueError(f"--seeds must be at least 1, got {seeds}")
        prof.seeds = seeds
    prof.data.root = _absolute(prof.data.root)
    prof.data.annotations = _absolute(prof.data.annotations)
    prof.backbone.pretrained = _absolute(prof.backbone.pretrained)
    return prof


def plan(study: Study, profile_name: str, profile: Profile) -> list[Trial]:
    """Every row x seed (x regime), seed-major: all rows of seed 0 first, so a partial run covers the table.

    A trial's config is :func:`harness.config.trial_config` of the study with
    the resolved profile: the profile's recipe plus the row's recipe keys.
    """
    resolved = study.model_copy(update={"profiles": {**study.profiles, profile_name: profile}})
    regimes: dict[str | None, Any] = dict(study.regimes or {None: None})
    trials = []
    for seed in range(profile.seeds):
        for row_name, row in study.rows.items():
            for regime_name, regime in regimes.items():
                cfg = trial_config(resolved, profile_name, row_name, seed)
                tags = {"harness.study": study.name, "harness.profile": profile_name, "harness.row": row_name,
                        "harness.seed": str(seed), "harness.block": row.block}
                if regime is not None:
                    cfg = cfg.model_copy(update={"data": regime.data(cfg.data, regime_name)})
                    tags["harness.regime"] = regime_name
                key = trial_key(study.name, profile_name, row_name, seed, regime_name)
                trials.append(Trial(key, row_name, seed, cfg, tags, regime_name))
    return trials


def profile_sizes(study: Study) -> list[int]:
    """Input sides to profile: the paper profile's size, plus the sizes the paper's CSV quotes GFLOPs at."""
    sizes = set()
    if "paper" in study.profiles:
        sizes.add(study.profiles["paper"].data.size)
    if study.paper and Path(study.paper).exists():
        import pandas as pd

        cols = pd.read_csv(study.paper, nrows=0).columns
        sizes |= {int(c.rsplit("_", 1)[1]) for c in cols if c.startswith("paper_gflops_") and c[13:].isdigit()}
    from harness.profile import PAPER_SIZE

    return sorted(sizes) or [PAPER_SIZE]


def profile_rows(study: Study, sizes: list[int], profile: str = "paper") -> dict[str, dict[str, Any]]:
    """Params and GFLOPs of every row on its paper backbone (``harness.profile``).

    Each row at its paper setting (:func:`harness.profile.paper_input`: the
    paper profile with the row's data keys, else the paper's 8 frames at 112
    px, whatever ``profile`` trains at): its frames, and its own side besides
    ``sizes`` (Table 4's rows are 8 or 16 frames at 112 or 224).
    """
    from harness.profile import paper_input, profile_row

    out = {}
    for name, row in study.rows.items():
        start = time.perf_counter()
        frames, size = paper_input(study, name)  # the paper's setting, never the laptop's tiny input
        row_sizes = sorted({*sizes, size})
        out[name] = profile_row(row, num_classes=study.num_classes, frames=frames, sizes=row_sizes)
        log.info("profiled %-20s %6.2f M params  %s GFLOPs at %d frames  (%.1f s)", name,
                 out[name]["params"] / 1e6, " / ".join(f"{out[name]['gflops'][str(s)]:.2f}@{s}" for s in row_sizes),
                 frames, time.perf_counter() - start)
    return out


def profile_metrics(prof: dict[str, Any]) -> dict[str, float]:
    """A row's profile as MLflow metrics (numbers the tables read back)."""
    out = {"profile_params": prof["params"]}
    if prof.get("frames") is not None:  # the frames its GFLOPs are counted at
        out["profile_frames"] = prof["frames"]
    out.update({f"profile_gflops_{s}": v for s, v in prof["gflops"].items()})
    for k in ("fusion_params", "ir_interactions"):
        if prof.get(k) is not None:
            out[f"profile_{k}"] = prof[k]
    return out


def check_lr_scaling(trials: list[Trial]) -> list[str]:
    """Warn, once per distinct recipe, when a batch differs from the recipe's reference batch at an unscaled lr.

    TSM #96: batch 20 at the lr chosen for batch 64 gave 41.6 top-1 against
    45.6. With ``scale_lr`` (the default) the lr follows the batch linearly
    (``Recipe.effective_lr``); with ``scale_lr: false`` it does not, and that
    is worth a warning. Returns the messages logged at WARNING level.
    """
    rows: dict[tuple, list[str]] = {}
    for t in trials:
        r = t.config.recipe
        if r.reference_batch is not None and r.batch_size != r.reference_batch:
            rows.setdefault((r.batch_size, r.reference_batch, r.lr, r.scale_lr), []).append(t.label)
    every = set(t.label for t in trials)
    warnings = []
    for (batch, ref, lr, scaled), labels in rows.items():
        names = "every row" if set(labels) == every and len(every) > 1 else ", ".join(dict.fromkeys(labels))
        if scaled:
            log.info("lr scaled linearly to batch %d: %g x %d/%d = %g (%s)", batch, lr, batch, ref,
                     lr * batch / ref, names)
            continue
        msg = (f"batch {batch} differs from the recipe's reference_batch {ref}, and scale_lr is false: "
               f"the lr stays {lr:g}, chosen for batch {ref}, for {names} (linear scaling would give "
               f"{lr * batch / ref:g}; set recipe.scale_lr: true, or the batch back to {ref})")
        log.warning("%s", msg)
        warnings.append(msg)
    return warnings


def recipe_params(profile: Profile) -> dict[str, Any]:
    """The resolved recipe as MLflow params: what a trial really trains with, beyond the raw keys.

    ``recipe.global_batch_size`` is the batch per optimizer step (``batch_size``,
    split over ``resources.workers`` when data-parallel); ``recipe.effective_lr`` the lr after
    linear scaling; ``recipe.pretrain`` the ImageNet checkpoint or ``none``.
    The harness has no partial-BN option: every BN layer trains, so there is no
    key for it. ``provenance.<key>`` says where each recipe value comes from
    (``unstated`` where the profile does not say, as in laptop profiles).
    """
    r = profile.recipe
    out: dict[str, Any] = {"recipe.global_batch_size": r.batch_size, "recipe.effective_lr": r.effective_lr,
                           "recipe.epochs": r.epochs, "recipe.schedule": r.schedule,
                           "recipe.pretrain": profile.backbone.pretrained or "none"}
    out.update({f"provenance.{k}": profile.provenance.get(k, "unstated") for k in type(r).model_fields})
    return out


def data_fingerprints(trials: list[Trial]) -> dict[tuple, dict[str, str]]:
    """Fingerprint of each distinct data copy the trials read, as tags, by :func:`data_key`.

    ``harness.data_fingerprint`` hashes the train and val fingerprints
    (``harness.data.fingerprint``, 16 clips each: 0.05-0.1 s per split on
    the laptop Table 1 set, measured), so one value says "same data" for a table; the per-split values are
    what ``harness data fingerprint --split val|train`` prints. A copy that
    cannot be read is tagged ``unavailable`` (the trials will fail on it anyway).
    """
    import hashlib

    from harness.data.fingerprint import fingerprint

    out: dict[tuple, dict[str, str]] = {}
    for t in trials:
        key = data_key(t.config.data)
        if key in out:
            continue
        t0 = time.perf_counter()
        try:
            splits = {split: fingerprint(t.config.data, split) for split in ("train", "val")}
        except Exception as exc:  # noqa: BLE001 - recorded, not fatal: training reports the data error
            log.warning("data fingerprint of %s unavailable: %s", t.config.data.root, exc)
            out[key] = {FINGERPRINT: "unavailable"}
            continue
        both = hashlib.sha256(f"{splits['train']['fingerprint']}:{splits['val']['fingerprint']}".encode())
        out[key] = {FINGERPRINT: both.hexdigest()[:16],
                    f"{FINGERPRINT}.train": splits["train"]["fingerprint"],
                    f"{FINGERPRINT}.val": splits["val"]["fingerprint"],
                    "harness.data_decoder": splits["val"]["decoder"]}
        log.info("data fingerprint %s for %s (%.2f s)", out[key][FINGERPRINT], t.config.data.root,
                 time.perf_counter() - t0)
    return out


def data_key(data: Any) -> tuple:
    """What a fingerprint depends on: the reader and where it reads (not frames or size)."""
    return data.format, data.root, data.annotations


def trace_tags(trial: Trial, fingerprints: dict[tuple, dict[str, str]]) -> dict[str, str]:
    """Tags that say how a trial's top-1 was measured and on which data: protocol name and data fingerprint."""
    from harness.protocol import Protocol

    return {PROTOCOL: Protocol.from_data(trial.config.data).name,
            **fingerprints.get(data_key(trial.config.data), {})}


def start_parent_run(tracker: Any, study: Study, profile_name: str, profile: Profile, trials: list[Trial],
                     *, study_path: str | Path, commit: str) -> str:
    """The invocation's MLflow parent run: the resolved study, recipe (:func:`recipe_params`) and provenance."""
    import yaml

    from harness.tracking import COMMIT, GIT_COMMIT, flatten

    resolved = study.model_dump(mode="json")
    resolved["profiles"] = {profile_name: profile.model_dump(mode="json")}
    params = {"study": study.name, "profile": profile_name, "trials": len(trials),
              **flatten(profile.model_dump(mode="json", exclude={"provenance"})), **recipe_params(profile)}
    parent_id = tracker.start_parent(
        study.name, profile_name, params=params,
        tags={COMMIT: commit, GIT_COMMIT: commit.removesuffix("+dirty"), "harness.seeds": str(profile.seeds),
              "harness.study_file": str(study_path)})
    tracker.log_text(parent_id, yaml.safe_dump(resolved, sort_keys=False), "study.resolved.yaml")
    return parent_id


def child_specs(trials: list[Trial], profiles: dict[str, dict], trace: dict[str, dict[str, str]],
                commit: str) -> list[dict[str, Any]]:
    """What :meth:`harness.tracking.Tracker.ensure_children` creates per trial: tags, params, profile metrics."""
    from harness.tracking import COMMIT, GIT_COMMIT, flatten

    return [{"key": t.key, "name": f"{t.label} seed{t.seed}",
             "tags": {**t.tags, **trace[t.key], COMMIT: commit, GIT_COMMIT: commit.removesuffix("+dirty")},
             "params": {**flatten(t.config.model_dump(mode="json")),
                        "recipe.effective_lr": t.config.recipe.effective_lr},
             "metrics": profile_metrics(profiles[t.row])} for t in trials]


def retag_resumed(tracker: Any, runs: dict[str, Any], trace: dict[str, dict[str, str]]) -> None:
    """A resumed trial reads the data as they are now: a trial not yet started takes today's fingerprint;
    one that trained some epochs on other data gets both (``old+new``), which the tables flag."""
    from harness.tracking import LAST_EPOCH

    for key, run in runs.items():
        before, now = run.data.tags.get(FINGERPRINT), trace[key].get(FINGERPRINT)
        if before is None or now is None or now in before.split("+"):
            continue
        if int(run.data.metrics.get(LAST_EPOCH, 0)) == 0:
            tracker.set_tags(run.info.run_id, trace[key])
            continue
        log.warning("%s: the data changed since this trial started (fingerprint %s, now %s); "
                    "its result mixes both", key, before, now)
        tracker.set_tags(run.info.run_id, {FINGERPRINT: f"{before}+{now}"})


def _lr_origin(r: Any) -> str:
    """`` (= 0.01 x 16/64)`` when the lr was scaled to the batch, else nothing."""
    return f" (= {r.lr:g} x {r.batch_size}/{r.reference_batch})" if r.effective_lr != r.lr else ""


def _plan_text(study: Study, profile_name: str, profile: Profile, trials: list[Trial],
               profiles: dict[str, dict], sizes: list[int], max_concurrent: int | None) -> str:
    import pandas as pd

    from harness.protocol import Protocol

    rows = []
    for t in trials:
        p = profiles[t.row]
        rows.append({"trial": t.key, "block": t.config.row.block,
                     "options": ", ".join(f"{k}={v}" for k, v in t.config.row.options.items()) or "-",
                     "paper params (M)": round(p["params"] / 1e6, 2), "profile frames": p.get("frames"),
                     **{f"GFLOPs@{s}": round(p["gflops"][str(s)], 2) for s in sizes}})
    r, d = profile.recipe, profile.data
    regimes = f" x {len(study.regimes)} regimes" if study.regimes else ""
    head = (f"{study.name}: {len(study.rows)} rows{regimes} x {profile.seeds} seeds = {len(trials)} trials, "
            f"profile {profile_name}\n"
            f"backbone {profile.backbone.arch} (width {profile.backbone.width}), data {d.format} at {d.root} "
            f"({d.frames} frames, {d.size}px; test protocol {Protocol.from_data(d).name}), {r.epochs} epochs, "
            f"batch {r.batch_size}, lr {r.effective_lr:g}{_lr_origin(r)} {r.schedule}, "
            f"{r.threads} thread(s)\nper trial: {profile.resources.cpu:g} CPU, {profile.resources.gpu:g} GPU"
            + (f" per worker x {profile.resources.workers} data-parallel workers" if profile.resources.workers > 1
               else "") + "; "
            f"concurrency: {max_concurrent or 'as many as the cluster fits'}\n")
    return head + "\n" + pd.DataFrame(rows).to_markdown(index=False)


def main(args: Any) -> int:
    """``harness run STUDY [--profile P] [--seeds N] [--address A] [--max-concurrent N] [--resume] [--dry-run]``."""
    from harness.config import load_study
    from harness.errors import fail_config

    try:
        study = load_study(args.study)
        profile = resolve_profile(study, args.profile, args.seeds)
        from harness.preflight import check_profile, local_resources

        on_cluster = args.address or os.environ.get("RAY_ADDRESS")
        cpus, gpus = (None, None) if on_cluster else local_resources()
        check_profile(profile, args.profile, cluster_cpus=cpus, cluster_gpus=gpus)
    except Exception as exc:  # noqa: BLE001 - a config error is one line and exit 2
        return fail_config(args.study, exc)
    from harness.plugins import PluginError, check_workers

    try:  # before any trial: a plugin block the Ray workers cannot import is a config error, with the reason
        check_workers(study, args.address, dry_run=args.dry_run)
    except PluginError as exc:
        return fail_config(args.study, exc)
    from harness.errors import fail_environment
    from harness.preflight import check_writable
    from harness.tables import RESULTS

    try:  # before any trial: a results folder found unwritable after days of training costs the days
        for folder in () if args.dry_run else (WORK, RESULTS):
            check_writable(folder)
    except OSError as exc:
        return fail_environment(exc, 2)
    if study.kind == "search":  # sampled trials, not a grid: harness.search plans, runs and tabulates them
        from harness import search

        return search.main(args, study, profile)
    trials = plan(study, args.profile, profile)
    check_lr_scaling(trials)
    sizes = profile_sizes(study)
    profiles = profile_rows(study, sizes, args.profile)
    if args.dry_run:
        print(_plan_text(study, args.profile, profile, trials, profiles, sizes, args.max_concurrent))
        print("\n--dry-run: nothing trained, no Ray started, nothing written.")
        return 0
    try:
        return execute(study, args.profile, profile, trials, profiles, study_path=args.study,
                       address=args.address, max_concurrent=args.max_concurrent, resume=args.resume)
    except OSError as exc:  # a disk that filled up or turned read-only during the run
        return fail_environment(exc, 1, then=f"fix it, then continue with: harness run {args.study} "
                                             f"--profile {args.profile} --resume")


def reopen_errored(tracker: Any, runs: dict[str, Any]) -> None:
    """Trials that errored before are retried by a resume (Tune's ``resume_errored``): their children reopen."""
    for run in runs.values():
        if run.data.tags.get("harness.error") == "1" and run.info.status == "FAILED":
            tracker.reopen(run.info.run_id)
            tracker.set_tags(run.info.run_id, {"harness.error": "0"})


def interrupted(tracker: Any, parent_id: str, study_path: str | Path, profile_name: str) -> int:
    """Ctrl-C: the parent run is marked KILLED and the user told how to continue; exit code 130."""
    tracker.finish(parent_id, "KILLED")
    log.error("interrupted; continue with: harness run %s --profile %s --resume", study_path, profile_name)
    return 130


def execute(study: Study, profile_name: str, profile: Profile, trials: list[Trial], profiles: dict[str, dict],
            *, study_path: str | Path, address: str | None = None, max_concurrent: int | None = None,
            resume: bool = False, max_failures: int = 2) -> int:
    """Track, run, tabulate. Returns 0 when every trial finished, 1 otherwise."""
    import yaml

    from harness.tracking import RAY_EXPERIMENT, Tracker, default_uri, git_commit

    start = time.perf_counter()
    synth = {t.config.data.root: t.config.data for t in trials if t.config.data.format == "synth"}
    for root, data in synth.items():  # once, here, before any worker could race to generate it
        from harness.data.synth import ensure_synth

        t0 = time.perf_counter()
        ensure_synth(data)
        log.info("synthetic data ready at %s (%.1f s)", root, time.perf_counter() - t0)

    fingerprints = data_fingerprints(trials)  # after the synth data exist; once per distinct data copy
    trace = {t.key: trace_tags(t, fingerprints) for t in trials}

    tracker = Tracker(default_uri(WORK))
    tracker.prepare()  # the database exists before any worker starts
    commit = git_commit()
    parent = tracker.latest_parent(study.name, profile_name) if resume else None
    if resume and parent is None:
        log.warning("--resume: no earlier run of %s (%s) in %s; starting a new one",
                    study.name, profile_name, tracker.uri)
    storage = (WORK / "ray" / study.name).resolve()
    if parent is not None:
        parent_id = parent.info.run_id
        exp_path = Path(parent.data.tags.get(RAY_EXPERIMENT, ""))
        tracker.reopen(parent_id)
        log.info("resuming parent run %s (%s)", parent_id, parent.info.run_name)
    else:
        parent_id = start_parent_run(tracker, study, profile_name, profile, trials, study_path=study_path,
                                     commit=commit)
        exp_path = storage / f"{profile_name}-{time.strftime('%Y%m%d-%H%M%S')}"
        tracker.set_tags(parent_id, {RAY_EXPERIMENT: str(exp_path)})
    tracker.set_tags(parent_id, {k: ", ".join(sorted({tags[k] for tags in trace.values()}))
                                 for k in (PROTOCOL, FINGERPRINT)})

    children = tracker.ensure_children(parent_id, child_specs(trials, profiles, trace, commit))
    for t in trials:  # a trial config per child, the file `harness train` reads
        if tracker.status(children[t.key]) == "SCHEDULED":
            tracker.log_text(children[t.key], yaml.safe_dump(t.config.model_dump(mode="json"), sort_keys=False),
                             "trial.yaml")
    existing = tracker.children(parent_id)
    reopen_errored(tracker, existing)
    todo = [t for t in trials if existing[t.key].info.status not in ("FINISHED", "FAILED")
            or existing[t.key].data.tags.get("harness.error") == "1"]
    if parent is not None:
        retag_resumed(tracker, {t.key: existing[t.key] for t in todo}, trace)

    from harness import tune as tuning

    restore = resume and tuning.can_restore(exp_path)
    if resume and not restore and todo:
        exp_path = storage / f"{profile_name}-{time.strftime('%Y%m%d-%H%M%S')}"
        tracker.set_tags(parent_id, {RAY_EXPERIMENT: str(exp_path)})
        log.info("no Ray experiment state to restore; running the %d unfinished trials afresh", len(todo))
    if todo:
        log.info("%s: %d of %d trials to run, Ray experiment %s, MLflow %s (parent %s)", study.name, len(todo),
                 len(trials), exp_path, tracker.uri, parent_id)
        try:
            with tuning.session(address):
                callback = tuning.MlflowCallback(tracker.uri, parent_id, total=len(trials))
                t0 = time.perf_counter()
                tuning.run_trials([t.spec() for t in todo], storage=exp_path.parent, name=exp_path.name,
                                  resources=profile.resources.model_dump(), callback=callback,
                                  max_concurrent=max_concurrent, max_failures=max_failures, restore=restore)
                log.info("Ray Tune finished in %.1f s", time.perf_counter() - t0)
        except KeyboardInterrupt:
            return interrupted(tracker, parent_id, study_path, profile_name)
    else:
        log.info("every trial of %s (%s) is already finished in MLflow", study.name, profile_name)

    bad = sorted(k for k, r in tracker.children(parent_id).items() if r.info.status != "FINISHED")
    return publish(study, profile_name, tracker, parent_id, bad=bad, wall_s=time.perf_counter() - start)


def publish(study: Study, profile_name: str, tracker: Any, parent_id: str, *, bad: list[str], wall_s: float) -> int:
    """Close the parent run (FAILED if any trial in ``bad``), write the tables from MLflow, attach and print them."""
    from harness import tables

    if bad:
        log.error("%d trial(s) did not finish: %s", len(bad), ", ".join(bad))
    tracker.set_tags(parent_id, {"harness.wall_s": f"{wall_s:.1f}"})
    tracker.finish(parent_id, "FAILED" if bad else "FINISHED")
    paths = tables.write(study, profile_name, tracker, parent_id=parent_id)
    for p in paths.values():
        tracker.log_artifact(parent_id, p, "results")
    print()
    print(paths["md"].read_text(encoding="utf-8"))
    exp_id = tracker.experiment_id(study.name, create=False)
    print(f"wall time {wall_s:.0f} s; results: {', '.join(str(p) for p in paths.values())}")
    print(f"browse the runs: harness ui   (then http://127.0.0.1:5000/#/experiments/{exp_id}/runs)")
    sys.stdout.flush()
    return 1 if bad else 0
