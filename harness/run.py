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
    return sorted(sizes) or [next(iter(study.profiles.values())).data.size]


def profile_rows(study: Study, sizes: list[int], frames: int) -> dict[str, dict[str, Any]]:
    """Params and GFLOPs of every row on its paper backbone (``harness.profile``)."""
    from harness.profile import profile_row

    out = {}
    for name, row in study.rows.items():
        start = time.perf_counter()
        out[name] = profile_row(row, num_classes=study.num_classes, frames=frames, sizes=sizes)
        log.info("profiled %-20s %6.2f M params  %s GFLOPs  (%.1f s)", name, out[name]["params"] / 1e6,
                 " / ".join(f"{out[name]['gflops'][str(s)]:.2f}@{s}" for s in sizes), time.perf_counter() - start)
    return out


def profile_metrics(prof: dict[str, Any]) -> dict[str, float]:
    """A row's profile as MLflow metrics (numbers the tables read back)."""
    out = {"profile_params": prof["params"]}
    out.update({f"profile_gflops_{s}": v for s, v in prof["gflops"].items()})
    for k in ("fusion_params", "ir_interactions"):
        if prof.get(k) is not None:
            out[f"profile_{k}"] = prof[k]
    return out


def _plan_text(study: Study, profile_name: str, profile: Profile, trials: list[Trial],
               profiles: dict[str, dict], sizes: list[int], max_concurrent: int | None) -> str:
    import pandas as pd

    rows = []
    for t in trials:
        p = profiles[t.row]
        rows.append({"trial": t.key, "block": t.config.row.block,
                     "options": ", ".join(f"{k}={v}" for k, v in t.config.row.options.items()) or "-",
                     "paper params (M)": round(p["params"] / 1e6, 2),
                     **{f"GFLOPs@{s}": round(p["gflops"][str(s)], 2) for s in sizes}})
    r, d = profile.recipe, profile.data
    head = (f"{study.name}: {len(study.rows)} rows x {profile.seeds} seeds = {len(trials)} trials, "
            f"profile {profile_name}\n"
            f"backbone {profile.backbone.arch} (width {profile.backbone.width}), data {d.format} at {d.root} "
            f"({d.frames} frames, {d.size}px), {r.epochs} epochs, batch {r.batch_size}, lr {r.lr} {r.schedule}, "
            f"{r.threads} thread(s)\nper trial: {profile.resources.cpu:g} CPU, {profile.resources.gpu:g} GPU; "
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
    trials = plan(study, args.profile, profile)
    sizes = profile_sizes(study)
    frames = study.profiles["paper"].data.frames if "paper" in study.profiles else profile.data.frames
    profiles = profile_rows(study, sizes, frames)
    if args.dry_run:
        print(_plan_text(study, args.profile, profile, trials, profiles, sizes, args.max_concurrent))
        print("\n--dry-run: nothing trained, no Ray started, nothing written.")
        return 0
    return execute(study, args.profile, profile, trials, profiles, study_path=args.study,
                   address=args.address, max_concurrent=args.max_concurrent, resume=args.resume)


def execute(study: Study, profile_name: str, profile: Profile, trials: list[Trial], profiles: dict[str, dict],
            *, study_path: str | Path, address: str | None = None, max_concurrent: int | None = None,
            resume: bool = False, max_failures: int = 2) -> int:
    """Track, run, tabulate. Returns 0 when every trial finished, 1 otherwise."""
    import yaml

    from harness import tables
    from harness.tracking import COMMIT, GIT_COMMIT, RAY_EXPERIMENT, Tracker, default_uri, flatten, git_commit

    start = time.perf_counter()
    synth = {t.config.data.root: t.config.data for t in trials if t.config.data.format == "synth"}
    for root, data in synth.items():  # once, here, before any worker could race to generate it
        from harness.data.synth import ensure_synth

        t0 = time.perf_counter()
        ensure_synth(data)
        log.info("synthetic data ready at %s (%.1f s)", root, time.perf_counter() - t0)

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
        resolved = study.model_dump(mode="json")
        resolved["profiles"] = {profile_name: profile.model_dump(mode="json")}
        parent_id = tracker.start_parent(
            study.name, profile_name,
            params={"study": study.name, "profile": profile_name, "trials": len(trials),
                    **flatten(profile.model_dump(mode="json"))},
            tags={COMMIT: commit, GIT_COMMIT: commit.removesuffix("+dirty"), "harness.seeds": str(profile.seeds),
                  "harness.study_file": str(study_path)})
        tracker.log_text(parent_id, yaml.safe_dump(resolved, sort_keys=False), "study.resolved.yaml")
        exp_path = storage / f"{profile_name}-{time.strftime('%Y%m%d-%H%M%S')}"
        tracker.set_tags(parent_id, {RAY_EXPERIMENT: str(exp_path)})

    children = tracker.ensure_children(parent_id, [{
        "key": t.key, "name": f"{t.label} seed{t.seed}",
        "tags": {**t.tags, COMMIT: commit, GIT_COMMIT: commit.removesuffix("+dirty")},
        "params": flatten(t.config.model_dump(mode="json")),
        "metrics": profile_metrics(profiles[t.row])} for t in trials])
    for t in trials:  # a trial config per child, the file `harness train` reads
        if tracker.status(children[t.key]) == "SCHEDULED":
            tracker.log_text(children[t.key], yaml.safe_dump(t.config.model_dump(mode="json"), sort_keys=False),
                             "trial.yaml")
    existing = tracker.children(parent_id)
    for key, run in existing.items():  # trials that errored before are retried by this resume
        if run.data.tags.get("harness.error") == "1" and run.info.status == "FAILED":
            tracker.reopen(run.info.run_id)
            tracker.set_tags(run.info.run_id, {"harness.error": "0"})
    todo = [t for t in trials if existing[t.key].info.status not in ("FINISHED", "FAILED")
            or existing[t.key].data.tags.get("harness.error") == "1"]

    from harness import tune as tuning

    restore = resume and tuning.can_restore(exp_path)
    if resume and not restore and todo:
        exp_path = storage / f"{profile_name}-{time.strftime('%Y%m%d-%H%M%S')}"
        tracker.set_tags(parent_id, {RAY_EXPERIMENT: str(exp_path)})
        log.info("no Ray experiment state to restore; running the %d unfinished trials afresh", len(todo))
    status = "FINISHED"
    if todo:
        log.info("%s: %d of %d trials to run, Ray experiment %s, MLflow %s (parent %s)", study.name, len(todo),
                 len(trials), exp_path, tracker.uri, parent_id)
        owned = tuning.connect(address)
        try:
            callback = tuning.MlflowCallback(tracker.uri, parent_id, total=len(trials))
            t0 = time.perf_counter()
            tuning.run_trials([t.spec() for t in todo], storage=exp_path.parent, name=exp_path.name,
                              resources=profile.resources.model_dump(), callback=callback,
                              max_concurrent=max_concurrent, max_failures=max_failures, restore=restore)
            log.info("Ray Tune finished in %.1f s", time.perf_counter() - t0)
        except KeyboardInterrupt:
            tracker.finish(parent_id, "KILLED")
            log.error("interrupted; continue with: harness run %s --profile %s --resume", study_path, profile_name)
            return 130
        finally:
            if owned:
                tuning.shutdown()
    else:
        log.info("every trial of %s (%s) is already finished in MLflow", study.name, profile_name)

    final = tracker.children(parent_id)
    bad = sorted(k for k, r in final.items() if r.info.status != "FINISHED")
    if bad:
        status = "FAILED"
        log.error("%d trial(s) did not finish: %s", len(bad), ", ".join(bad))
    tracker.set_tags(parent_id, {"harness.wall_s": f"{time.perf_counter() - start:.1f}"})
    tracker.finish(parent_id, status)
    paths = tables.write(study, profile_name, tracker, parent_id=parent_id)
    for p in paths.values():
        tracker.log_artifact(parent_id, p, "results")
    print()
    print(paths["md"].read_text(encoding="utf-8"))
    exp_id = tracker.experiment_id(study.name, create=False)
    print(f"wall time {time.perf_counter() - start:.0f} s; tables: {', '.join(str(p) for p in paths.values())}")
    print(f"browse the runs: harness ui   (then http://127.0.0.1:5000/#/experiments/{exp_id}/runs)")
    sys.stdout.flush()
    return 0 if status == "FINISHED" else 1
