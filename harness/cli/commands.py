"""What each sub-command does with its arguments: read the files, call one domain function with typed
arguments, print, and turn failures into one line and an exit code (0 ok, 1 the work failed, 2 unusable
input or environment, 130 interrupted)."""
from __future__ import annotations

import argparse
import json
import logging
import os
import sys
from pathlib import Path
from typing import TYPE_CHECKING

from harness.errors import describe, fail_config, fail_environment

if TYPE_CHECKING:
    from collections.abc import Collection

    from harness.config import Profile, Study, TrainConfig
    from harness.study.plan import Plan

log = logging.getLogger(__name__)


# ----------------------------------------------------------------------------- harness run


def run(args: argparse.Namespace) -> int:
    """``harness run STUDY [--profile P] [--seeds N] [--address A] [--max-concurrent N] [--storage S]
    [--resume] [--dry-run [--gpus N] [--throughput X]]``."""
    from harness.config import load_study, trained_archs
    from harness.preflight import PreflightError, check_writable, problems
    from harness.study.kinds import KINDS
    from harness.study.plan import RunOptions, resolve_profile

    opts = RunOptions(study_path=args.study, profile=args.profile, seeds=args.seeds, address=args.address,
                      max_concurrent=args.max_concurrent, resume=args.resume, storage=args.storage,
                      until_resolved=args.until_resolved, max_trials=args.max_trials)
    on_cluster = args.address or os.environ.get("RAY_ADDRESS")
    try:  # what the file says and what it points at, in a second: before the rows are profiled
        study = load_study(args.study)
        profile = resolve_profile(study, args.profile, args.seeds)
        cpus, gpus = _resources(on_cluster)
        archs = trained_archs(study, args.profile)
        found = problems(profile, args.profile, cluster_cpus=cpus, cluster_gpus=gpus, cluster=on_cluster,
                         archs=archs)
        # a dry run costs a plan for another machine: missing data or resources here are warnings then
        later = [p for p in found if args.dry_run and p.kind in ("data", "resources")]
        blocking = [p for p in found if p not in later]
        if blocking:
            raise blocking[0].error()
        # the ImageNet files by SHA-256 (a partial download fails here, not in every trial); not for a dry run
        weights = [] if args.dry_run else _weights(profile, args.profile, archs)
        kind = KINDS[study.kind]
        plan = kind.plan(study, args.profile, profile)
        if args.until_resolved and (not plan.trials or study.regimes):
            raise ValueError("--until-resolved adds seeds to the rows of a table study; this study's trials are "
                             "sampled (a search) or planned as rows x regimes (a probe)")
        if args.max_trials is not None and args.max_trials < plan.total:
            raise ValueError(f"--max-trials {args.max_trials} is below the {plan.total} trials the study plans")
    except Exception as exc:  # noqa: BLE001 - a config error is one line and exit 2
        return fail_config(args.study, exc)
    for problem in later:
        print(f"warning: {describe(args.study, problem.error())}", file=sys.stderr)
    for keys, message in weights:
        print(f"warning: {describe(args.study, PreflightError(keys, message))}", file=sys.stderr)
    from harness.plugins import PluginError, check_workers

    try:  # before any trial: a plugin block the Ray workers cannot import is a config error, with the reason
        check_workers(study, args.address, dry_run=args.dry_run)
    except PluginError as exc:
        return fail_config(args.study, exc)
    if args.seeds is not None and study.kind == "search":
        log.warning("--seeds does not apply to a search: every trial trains with search.seed")
    if args.dry_run:
        return _dry_run(study, plan, args, cpus, gpus, on_cluster)
    try:  # before any trial: a results folder found unwritable after days of training costs the days
        from harness.files import WORK

        for folder in (WORK, opts.out_dir):
            check_writable(folder)
    except OSError as exc:
        return fail_environment(exc, 2)
    if on_cluster:  # before any trial: nodes that cannot see the trial storage could not checkpoint or resume
        from harness.preflight import check_storage

        try:
            check_storage(args.storage, study.name, on_cluster)
        except PreflightError as exc:
            print(f"error: {exc.message}", file=sys.stderr)
            return 2
        except OSError as exc:  # the storage folder cannot be created here
            return fail_environment(exc, 2)
    from harness.study.engine import execute

    try:
        return execute(study, kind, plan, opts)
    except OSError as exc:  # a disk that filled up or turned read-only during the run
        return fail_environment(exc, 1, then=f"fix it, then continue with: harness run {args.study} "
                                             f"--profile {args.profile} --resume")


def _weights(profile: "Profile", name: str, archs: "Collection[str]") -> list[tuple[tuple, str]]:
    """The ImageNet files the rows load, checked before any trial as ``harness doctor`` does (by SHA-256 against
    torchvision's releases, else by the state_dict's keys): raises PreflightError for the first that cannot be
    right (a partial download, another arch's file, not a ResNet state_dict); the warnings (V2 weights, a file
    of unknown origin) as (key path, message)."""
    from harness.doctor import weights_findings
    from harness.preflight import PreflightError

    found = weights_findings(profile, name, archs)
    for keys, check in found:
        if check.level == "fail":
            raise PreflightError(keys, f"{check.detail}; {check.fix}" if check.fix else check.detail)
    return [(keys, f"{c.detail}; {c.fix}" if c.fix else c.detail) for keys, c in found if c.level == "warn"]


def _resources(address: str | None) -> tuple[float | None, float | None]:
    """CPUs and GPUs trials can get: the cluster's (a short Ray connection) or this machine's."""
    from harness.preflight import local_resources

    if not address:
        return local_resources()
    from harness.tune.session import cluster_resources

    return cluster_resources(address)


def _dry_run(study: Study, plan: Plan, args: argparse.Namespace, cpus: float | None, gpus: float | None,
             on_cluster: str | None) -> int:
    """The plan, and what it costs on the cluster it would run on (or ``--gpus N``)."""
    from harness import estimate

    print(plan.describe(args.max_concurrent))
    if plan.trials:  # a search's trials are sampled as it runs: no cost before it
        cluster = estimate.cluster_for(gpus, cpus, override_gpus=args.gpus, max_concurrent=args.max_concurrent,
                                       where=on_cluster)
        print("\n" + estimate.dry_run_text(study, plan.profile, plan.trials, cluster,
                                          profiles=plan.profiles or None, throughput=args.throughput))
    print("\n--dry-run: nothing trained, no Ray started, nothing written.")
    return 0


# ----------------------------------------------------------------------------- harness tables


def tables(args: argparse.Namespace) -> int:
    """``harness tables STUDY [--profile P] [--out DIR]``: rebuild the tables from the MLflow store alone."""
    from harness.config import load_study
    from harness.files import WORK
    from harness.study.kinds import KINDS
    from harness.tracking import Tracker, default_uri, sqlite_path

    try:
        study = load_study(args.study)
    except Exception as exc:  # noqa: BLE001
        return fail_config(args.study, exc)
    uri = default_uri(WORK)
    db = sqlite_path(uri)
    if db is not None and not db.exists():
        log.error("no MLflow store at %s; run `harness run %s` first", db, args.study)
        return 1
    try:
        report = KINDS[study.kind].report(study, args.profile, Tracker(uri), None, Path(args.out))
    except LookupError as e:
        log.error("%s", e)
        return 1
    except OSError as e:  # unwritable --out or a full disk: the previous tables are left whole
        return fail_environment(e, 1, then="the previous tables, if any, are unchanged")
    print(report.text)
    print("written: " + ", ".join(str(p) for p in report.paths.values()))
    return 0


# ----------------------------------------------------------------------------- harness train


def train(args: argparse.Namespace) -> int:
    """``harness train CONFIG [--out DIR] [--resume] [--evaluate CKPT --clips N --crops M]``."""
    from harness.config import load_train
    from harness.data.dataset import BadDataError
    from harness.data.formats import DataError
    from harness.train import fit

    try:
        cfg = load_train(args.config)
    except Exception as e:  # noqa: BLE001 - every config error becomes one line and exit code 2
        return fail_config(args.config, e)
    if not args.evaluate and (args.clips or args.crops):
        log.error("--clips and --crops apply to --evaluate only; training validates with data.test_clips/test_crops")
        return 2
    if args.evaluate and args.resume:
        log.error("--evaluate and --resume exclude each other: evaluation does not train")
        return 2
    out = Path(args.out) if args.out else Path("work/train") / cfg.name
    try:
        if args.evaluate:
            return _evaluate(cfg, Path(args.evaluate), out, clips=args.clips, crops=args.crops)
        result = fit(cfg, out, resume=args.resume, progress=True)
    except BadDataError as e:  # the data failed mid-run (unreadable share, folder gone): the work ran, exit 1
        log.error("%s", e)
        return 1
    except (FileNotFoundError, FileExistsError, ValueError, DataError) as e:
        log.error("%s", e)
        return 2
    except OSError as e:  # a full disk or a folder turned read-only: one line, and the way back
        return fail_environment(e, 1, then=None if args.evaluate else "fix it, then continue with --resume")
    best = "n/a" if result.best_top1 is None else f"{result.best_top1:.2f}"
    last = "n/a" if result.last_top1 is None else f"{result.last_top1:.2f}"
    print(f"{result.status}: {cfg.name} best val top-1 {best}, last {last}, "
          f"{len(result.history)} epochs -> {out}" + (f" ({result.reason})" if result.reason else ""))
    return 0 if result.status == "FINISHED" else 1


def _evaluate(cfg: TrainConfig, checkpoint: Path, out: Path, *, clips: int | None, crops: int | None) -> int:
    """``--evaluate``: the metrics of a saved model, with the data's buckets when it names some."""
    from harness import probe
    from harness.train import evaluate_checkpoint, write_json

    update = {k: v for k, v in (("test_clips", clips), ("test_crops", crops)) if v is not None}
    if update:
        cfg = cfg.model_copy(update={"data": cfg.data.model_validate({**cfg.data.model_dump(), **update})})
    metrics, predictions = evaluate_checkpoint(cfg, checkpoint, progress=True)
    buckets = probe.clip_buckets(cfg.data, predictions)
    if buckets is not None:
        metrics.update(probe.stratified_top1(predictions.correct(1), buckets))
    out.mkdir(parents=True, exist_ok=True)
    write_json(metrics, out / "eval.json")
    print(json.dumps(metrics))
    return 0
