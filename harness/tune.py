"""Ray Tune: every row x seed of a study is one trial. Ray Tune only here.

    harness run studies/table1.yaml                       # local Ray, one trial per free core
    harness run studies/table1.yaml --address HOST:6379   # an existing cluster (or RAY_ADDRESS)
    harness run studies/table1.yaml --resume              # after a crash or a SIGKILL of the driver

A trial is :func:`harness.train.fit` wrapped as a function trainable
(:func:`trainable`). ``fit`` writes ``checkpoints/last.pt`` each epoch and calls
back; the callback hands a folder holding only that file to ``tune.report``,
so Ray persists it under the experiment's storage path. When Ray restarts a
trial (a worker died, ``FailureConfig.max_failures``) or a driver resumes the
experiment (``Tuner.restore``), ``tune.get_checkpoint()`` holds that file: it
is copied into the trial's folder and ``fit(resume=True)`` continues from the
next epoch.

Metrics reach MLflow through :class:`MlflowCallback`, a Tune callback that runs
in the driver: the workers never open the tracking store, so there is one
writer. Tune saves its experiment state every ``TUNE_GLOBAL_CHECKPOINT_S``
seconds (1 s here unless set; Ray's default lags ~8 s), and the tracking side
is keyed by trial, so a trial Ray re-runs after a crash updates its own child
run (see ``harness.tracking``).

A trial may train data-parallel (``resources: {cpu: 1, workers: 2}``): the Tune
trial then only drives a Ray Train ``TorchTrainer`` run (Train v2's pattern:
the trainer inside a Tune function) whose workers run the same trial function
on their rank; ``fit`` sees the process group Ray Train set up (gloo on CPU,
nccl on GPU) and trains under DDP with ``recipe.batch_size`` as the global
batch. Ray Train's ``TuneReportCallback`` hands rank 0's reports to Tune, so
:class:`MlflowCallback` sees the same epochs and summary as from a one-process
trial, plus a ``world_size`` metric and a ``harness.backend`` tag. The driving
trial takes no CPU slot (a little memory instead; a Ray bundle cannot be
empty), the run's controller none either, the workers ``cpu``/``gpu`` each.
Checkpoints are Ray Train's, under ``<experiment>/ddp/<trial>``: a worker that
dies restarts the worker group from the last one (``ray.train.get_checkpoint``),
and a restarted or restored Tune trial starts a trainer of the same name, which
resumes from it. :func:`ddp_smoke` is a quicker check of a model under DDP
(random clips, a few steps).

On a multi-node cluster the storage path (``work/ray/<study>``) must be on a
filesystem every node can reach (NFS), and every node needs this package
installed in the same environment.
"""
from __future__ import annotations

import contextlib
import json
import logging
import os
import re
import shutil
import tempfile
import time
from pathlib import Path
from typing import Any, Iterator, Mapping, Sequence

# Experiment state current within ~1 s of a report, so a driver killed mid-study resumes
# finished trials as finished (see docs: tools-notes). Set before Ray reads it; users may override.
os.environ.setdefault("TUNE_GLOBAL_CHECKPOINT_S", "1")
os.environ.setdefault("TUNE_WARN_EXCESSIVE_EXPERIMENT_CHECKPOINT_SYNC_THRESHOLD_S", "0")
os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")  # no network here
os.environ.setdefault("RAY_DEDUP_LOGS", "1")
os.environ.setdefault("RAY_TRAIN_V2_ENABLED", "1")  # the Tune-drives-Train pattern below (Ray 2.60's default)

import ray  # noqa: E402
from ray import tune  # noqa: E402
from ray.tune.result import AUTO_RESULT_KEYS  # noqa: E402

log = logging.getLogger(__name__)

# Result keys Tune adds itself; everything else numeric that a trial reports is a metric.
TUNE_KEYS = set(AUTO_RESULT_KEYS) | {
    "done", "trial_id", "experiment_tag", "should_checkpoint", "iterations_since_restore",
    "time_since_restore", "timesteps_since_restore", "warmup_time", "pid", "episodes_total",
    "timesteps_total", "final", "node_id", "status", "reason", "fusion_matrices",
}


# ----------------------------------------------------------------------------- Ray connection


def connect(address: str | None = None, *, num_cpus: int | None = None) -> bool:
    """Join a cluster (``address`` or ``RAY_ADDRESS``) or start a local Ray; True if we started it.

    A local Ray gets one CPU slot per core, so trials that each ask for one CPU
    run one per core (2 cores -> 2 one-thread trials). No dashboard.
    """
    if ray.is_initialized():
        return False
    address = address or os.environ.get("RAY_ADDRESS")

    def quiet_train_cleaner() -> None:  # nested, so cloudpickle ships it by value: no import in each worker
        # Ray Train's placement-group cleaner asks the State API every second whether the run's controller
        # lives; without a dashboard (none here, and ray[tune] installs none) it warns each time.
        logging.getLogger("ray.train.v2._internal.execution.controller.placement_group_cleaner").setLevel(
            logging.ERROR)

    job_env = {"worker_process_setup_hook": quiet_train_cleaner}
    if address:
        ray.init(address=address, logging_level=logging.WARNING, runtime_env=job_env)
        log.info("joined Ray cluster at %s: %s", address, ray.cluster_resources())
        return False
    # address="local": a new instance, never one found in /tmp/ray/ray_current_cluster by accident
    ray.init(address="local", num_cpus=num_cpus or os.cpu_count() or 1, include_dashboard=False,
             logging_level=logging.WARNING, runtime_env=job_env)
    return True


def shutdown() -> None:
    ray.shutdown()


@contextlib.contextmanager
def session(address: str | None = None, *, num_cpus: int | None = None) -> Iterator[None]:
    """:func:`connect` for the block; shuts down only a Ray it started itself (never a user's cluster)."""
    owned = connect(address, num_cpus=num_cpus)
    try:
        yield
    finally:
        if owned:
            shutdown()


# ----------------------------------------------------------------------------- the trainable


def trainable(config: dict[str, Any]) -> None:
    """One trial: ``config["trial"]`` is a plan entry (key, row, seed, train config as JSON).

    With ``config["data_parallel"]`` (see :func:`trial_resources`) this trial
    only drives a Ray Train run whose workers each run the same trial on their
    rank (:func:`_drive_workers`).
    """
    logging.getLogger("ray").setLevel(logging.WARNING)  # "checkpoint created" per epoch is noise
    if config.get("data_parallel"):
        _drive_workers(config)
        return
    # Ray runs a trial in its own working folder (under the Ray session dir, node-local, not synced to
    # storage); only the checkpoints reported below travel to the storage path.
    _run_trial(config["trial"], Path.cwd() / "fit", tune.report, tune.get_checkpoint(), tune.Checkpoint)


def _run_trial(spec: Mapping[str, Any], out_dir: Path, report_to: Any, checkpoint: Any, checkpoint_cls: Any,
               extra: Mapping[str, Any] | None = None) -> None:
    """``fit`` one trial spec, reporting each epoch and a closing summary through ``report_to``.

    ``report_to`` / ``checkpoint`` / ``checkpoint_cls`` are Tune's (one process)
    or Ray Train's (a data-parallel worker); ``extra`` joins every report.
    """
    from harness.config import TrainConfig
    from harness.train import fit

    extra = {"node_id": ray.get_runtime_context().get_node_id(), **(extra or {})}
    try:
        cfg = TrainConfig.model_validate(spec["train"])
    except ValueError as exc:  # a configuration error: a retry cannot fix it, so the trial ends FAILED, once
        from harness.errors import summary

        report_to({"final": 1, "status": "FAILED", "reason": f"config: {summary(exc)}", **extra})
        return
    ckpt_dir = out_dir / "checkpoints"
    resume = False
    if checkpoint is not None:
        from harness.checkpoint import copy_atomic

        ckpt_dir.mkdir(parents=True, exist_ok=True)
        with checkpoint.as_directory() as d:
            copy_atomic(Path(d) / "last.pt", ckpt_dir / "last.pt")
        resume = True
    else:  # a restart from scratch must not trip over files of an earlier attempt
        shutil.rmtree(ckpt_dir, ignore_errors=True)

    def report(metrics: dict[str, Any], checkpoint_dir: Path | None) -> None:
        if checkpoint_dir is None:  # a data-parallel rank > 0: Ray Train keeps rank 0's metrics and checkpoint
            report_to({**metrics, **extra})
            return
        # Hand Ray a folder with last.pt only (best.pt would double what is copied each epoch).
        stage = Path(tempfile.mkdtemp(prefix=".report-", dir=out_dir))
        try:
            try:
                os.link(Path(checkpoint_dir) / "last.pt", stage / "last.pt")
            except OSError:
                shutil.copyfile(Path(checkpoint_dir) / "last.pt", stage / "last.pt")
            report_to({**metrics, **extra}, checkpoint=checkpoint_cls.from_directory(str(stage)))
        finally:
            shutil.rmtree(stage, ignore_errors=True)

    result = fit(cfg, out_dir, report=report, resume=resume)
    best_epoch = None
    if result.history:
        best_epoch = max(result.history, key=lambda m: m["val_top1"])["epoch"]
    report_to({
        "final": 1, "status": result.status, "reason": result.reason or "",
        "best_top1": result.best_top1, "last_top1": result.last_top1, "best_epoch": best_epoch,
        "epochs_done": len(result.history), "num_params": result.num_params,
        "ir_interactions": result.ir_interactions, **extra,
        "fusion_matrices": json.dumps(result.fusion_matrices) if result.fusion_matrices else "",
    })


# ----------------------------------------------------------------------------- data-parallel trials

# What the trial that drives a Ray Train run reserves: it mostly waits, so no CPU slot (the workers
# take those), but a placement-group bundle cannot be empty, so a little memory.
DRIVER_MEMORY = 256 * 2**20


def trial_resources(resources: Mapping[str, float], *, experiment: Path,
                    max_failures: int) -> tuple[dict[str, float], dict[str, Any]]:
    """What Tune reserves for one trial, and what its config needs beside ``"trial"``.

    ``resources`` is ``harness.config.Resources`` as a dict: ``cpu``/``gpu``
    per worker, ``workers`` data-parallel workers per trial.
    """
    cpu, gpu, workers = resources.get("cpu", 1), resources.get("gpu", 0), int(resources.get("workers", 1))
    if workers == 1:
        return {"cpu": cpu, "gpu": gpu}, {}
    return {"cpu": 0, "memory": DRIVER_MEMORY}, {"data_parallel": {
        "workers": workers, "cpu": cpu, "gpu": gpu, "max_failures": max_failures,
        "storage": str(Path(experiment).resolve() / "ddp")}}


def data_parallel_slots(resources: Mapping[str, float]) -> int:
    """How many data-parallel trials the cluster runs at once: more would only start drivers that wait."""
    workers = int(resources.get("workers", 1))
    have = ray.cluster_resources()
    slots = int(have.get("CPU", 0) // (workers * resources.get("cpu", 1)))
    if resources.get("gpu", 0):
        slots = min(slots, int(have.get("GPU", 0) // (workers * resources["gpu"])))
    return max(1, slots)


def _drive_workers(config: dict[str, Any]) -> None:
    """A data-parallel trial: a ``TorchTrainer`` of ``workers`` ranks, each running :func:`_worker_loop`.

    The run is named after the trial (``<experiment>/ddp/<row>-seed<k>_<trial id>``),
    so a restart of this trial (Tune's ``max_failures``, ``Tuner.restore``)
    starts a trainer that resumes the run from its last checkpoint; Ray Train
    itself restarts a worker group that lost a worker (its own ``max_failures``).
    """
    from ray.train import CheckpointConfig, FailureConfig, RunConfig, ScalingConfig
    from ray.train.torch import TorchTrainer
    from ray.tune.integration.ray_train import TuneReportCallback

    spec, dp = config["trial"], config["data_parallel"]
    per_worker = {"CPU": dp["cpu"], **({"GPU": dp["gpu"]} if dp["gpu"] else {})}
    trainer = TorchTrainer(
        _worker_loop,
        train_loop_config={"trial": spec},
        scaling_config=ScalingConfig(num_workers=dp["workers"], use_gpu=dp["gpu"] > 0,
                                     resources_per_worker=per_worker),
        run_config=RunConfig(name=_dirname(spec, tune.get_context().get_trial_id()), storage_path=dp["storage"],
                             failure_config=FailureConfig(max_failures=dp["max_failures"]),
                             checkpoint_config=CheckpointConfig(num_to_keep=2),  # as a one-process trial's
                             callbacks=[TuneReportCallback()]),  # rank 0's reports become this trial's results
    )
    trainer.fit()  # raises when the run failed for good: the Tune trial errors, MlflowCallback marks it FAILED


def _worker_loop(config: dict[str, Any]) -> None:
    """One Ray Train worker: the trial of :func:`trainable`, on this rank of the process group.

    Every rank reports every epoch (Ray Train's report is a barrier), rank 0
    with the checkpoint. Ranks on one node share Ray Train's working folder,
    so each trains in its own ``fit-rank<k>``.
    """
    import torch.distributed as dist
    from ray import train

    # Ray Train sets its own logger to DEBUG in workers; each report (the metrics again) is noise
    logging.getLogger("ray.train").setLevel(logging.WARNING)
    ctx = train.get_context()
    rank = ctx.get_world_rank()
    _run_trial(config["trial"], Path.cwd() / f"fit-rank{rank}", train.report, train.get_checkpoint(),
               train.Checkpoint, {"world_size": ctx.get_world_size(), "backend": dist.get_backend()})


def trial_name(trial: Any) -> str:
    return _label(trial.config["trial"])


def _label(spec: Mapping[str, Any]) -> str:
    return f"{spec['row']}-seed{spec['seed']}"


def _dirname(spec: Mapping[str, Any], trial_id: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", _label(spec)) + f"_{trial_id}"


def trial_dirname(trial: Any) -> str:
    return _dirname(trial.config["trial"], trial.trial_id)


# ----------------------------------------------------------------------------- MLflow from the driver


class MlflowCallback(tune.Callback):
    """Writes each trial's epochs and summary to its MLflow child run; runs in the driver only.

    Holds only the store URI and the parent run id, so it pickles into Tune's
    experiment state and is rebuilt from the store on ``Tuner.restore``.
    """

    def __init__(self, uri: str, parent_id: str, total: int) -> None:
        self.uri, self.parent_id, self.total = uri, parent_id, total
        self._reset()

    def _reset(self) -> None:
        self._tracker = None
        self._ids: dict[str, str] = {}
        self._final: dict[str, dict] = {}
        self._done: set[str] = set()
        self._start = time.monotonic()

    def __getstate__(self) -> dict[str, Any]:
        return {"uri": self.uri, "parent_id": self.parent_id, "total": self.total}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)
        self._reset()

    @property
    def tracker(self):
        if self._tracker is None:
            from harness.tracking import Tracker

            self._tracker = Tracker(self.uri)
            children = self._tracker.children(self.parent_id)
            self._ids = {k: r.info.run_id for k, r in children.items()}
            self._done = {k for k, r in children.items() if r.info.status in ("FINISHED", "FAILED")}
        return self._tracker

    def _run_id(self, trial: Any) -> tuple[str, str]:
        key = trial.config["trial"]["key"]
        tracker = self.tracker
        if key not in self._ids:  # a trial the plan did not announce: create its child now
            spec = trial.config["trial"]
            self._ids.update(tracker.ensure_children(self.parent_id, [{
                "key": key, "name": trial_name(trial), "tags": spec.get("tags", {})}]))
        return key, self._ids[key]

    def on_trial_start(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        log.info("start  %-24s (%d/%d done)", trial_name(trial), len(self._done), self.total)

    def on_trial_result(self, iteration: int, trials: list, trial: Any, result: dict, **info: Any) -> None:
        key, run_id = self._run_id(trial)
        if result.get("final"):
            self._final[key] = dict(result)
            return
        if "epoch" not in result:
            return
        metrics = {k: v for k, v in result.items() if k not in TUNE_KEYS}
        if self.tracker.log_epoch(run_id, metrics):
            epochs = trial.config["trial"]["train"]["recipe"]["epochs"]
            log.info("epoch  %-24s %2d/%d  val top-1 %5.1f  loss %.3f  %.0f clips/s  [%d/%d trials done, %.0f s]",
                     trial_name(trial), int(result["epoch"]), epochs, result.get("val_top1", float("nan")),
                     result.get("train_loss", float("nan")), result.get("clips_per_s", 0.0),
                     len(self._done), self.total, time.monotonic() - self._start)
        else:
            log.debug("%s epoch %s already in MLflow; not logged again", key, result["epoch"])

    def on_trial_complete(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        key, run_id = self._run_id(trial)
        final = self._final.pop(key, None) or {}
        status = final.get("status") or "FINISHED"
        summary = {k: final.get(k) for k in ("best_top1", "last_top1", "best_epoch", "num_params",
                                              "ir_interactions", "epochs_done")}
        tags = {"harness.node_id": final.get("node_id", ""), "harness.trial_id": trial.trial_id}
        if final.get("world_size"):  # a data-parallel trial: rank 0's node above
            tags.update({"harness.world_size": final["world_size"], "harness.backend": final.get("backend", "")})
        if final.get("reason"):
            tags["harness.reason"] = final["reason"][:5000]
        artifacts = {}
        if final.get("fusion_matrices"):
            artifacts["fusion_matrices.json"] = json.loads(final["fusion_matrices"])
        if self.tracker.finish_child(run_id, status, summary=summary, tags=tags, artifacts=artifacts):
            self._done.add(key)
            log.info("done   %-24s %s  best %.1f  last %.1f  [%d/%d trials done]%s", trial_name(trial), status,
                     _num(summary["best_top1"]), _num(summary["last_top1"]), len(self._done), self.total,
                     f": {final['reason']}" if status == "FAILED" and final.get("reason") else "")

    def on_trial_error(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        key, run_id = self._run_id(trial)
        try:
            reason = trial.get_error() or ""
        except Exception:  # noqa: BLE001 - the reason is a courtesy; the status is what matters
            reason = ""
        reason = reason or f"the trial raised; see {trial.path}"
        self.tracker.finish_child(run_id, "FAILED", summary={},
                                  tags={"harness.error": "1", "harness.reason": str(reason)[-5000:]})
        self._done.add(key)
        from harness.errors import last_line

        log.error("error  %-24s after %d attempts: %s", trial_name(trial), trial.num_failures, last_line(str(reason)))


def _num(v: Any) -> float:
    return float("nan") if v is None else float(v)


# ----------------------------------------------------------------------------- running a plan


def checkpoints_to_keep(arch: str) -> int | None:
    """How many checkpoints Ray keeps per trial (None: all).

    Ray deletes older checkpoints at once but saves its experiment state only
    about once a second, so a driver killed in between leaves a state that
    names a deleted checkpoint, and ``--resume`` cannot restore that trial.
    Only sub-second epochs hit that window: the tiny laptop backbone's, whose
    checkpoints are a few MB, so it keeps them all. Paper backbones (minutes an
    epoch, hundreds of MB a checkpoint) keep two.
    """
    return None if arch == "tiny" else 2


def run_config(name: str, storage: Path, callback: Any, *, max_failures: int, keep: int | None) -> Any:
    """Where a Tune experiment lives, its MLflow callback, retries and checkpoint retention."""
    return tune.RunConfig(name=name, storage_path=str(Path(storage).resolve()), callbacks=[callback], verbose=0,
                          failure_config=tune.FailureConfig(max_failures=max_failures),
                          checkpoint_config=tune.CheckpointConfig(num_to_keep=keep))


def run_trials(specs: Sequence[Mapping[str, Any]], *, storage: Path, name: str, resources: Mapping[str, float],
               callback: MlflowCallback, max_concurrent: int | None = None, max_failures: int = 2,
               restore: bool = False) -> dict[str, str]:
    """Run (or resume) the trials of a plan with Ray Tune; returns Tune's final state per trial key.

    ``specs`` are JSON-able dicts with ``key``, ``row``, ``seed``, ``train``.
    ``restore=True`` continues the experiment ``storage/name`` with
    ``Tuner.restore`` (unfinished and errored trials resume from their last
    checkpoint; finished ones are not run again).
    """
    path = Path(storage) / name
    request, data_parallel = trial_resources(resources, experiment=path, max_failures=max_failures)
    wrapped = tune.with_resources(trainable, request)
    keep = checkpoints_to_keep(specs[0]["train"]["backbone"]["arch"]) if specs else 2
    if restore:
        log.info("restoring Ray experiment %s", path)
        tuner = tune.Tuner.restore(str(path), trainable=wrapped, resume_unfinished=True,
                                   resume_errored=True, restart_errored=False)
    else:
        if data_parallel and max_concurrent is None:
            max_concurrent = data_parallel_slots(resources)
        tuner = tune.Tuner(
            wrapped,
            param_space={"trial": tune.grid_search(list(specs)), **data_parallel},
            tune_config=tune.TuneConfig(max_concurrent_trials=max_concurrent, trial_name_creator=trial_name,
                                        trial_dirname_creator=trial_dirname,
                                        # one worker process per slot for the whole study: no Python +
                                        # torch start-up per trial (reset() moves it to the trial's folder)
                                        reuse_actors=True),
            run_config=run_config(name, storage, callback, max_failures=max_failures, keep=keep),
        )
    grid = tuner.fit()
    states = {}
    for result in grid:
        key = result.config["trial"]["key"] if result.config else "?"
        states[key] = "ERROR" if result.error else "TERMINATED"
    return states


def can_restore(path: str | Path) -> bool:
    return Path(path).is_dir() and tune.Tuner.can_restore(str(path))


# ----------------------------------------------------------------------------- data-parallel check


def _ddp_loop(config: dict[str, Any]) -> None:
    """Each Ray Train worker: the real model under DDP, a few SGD steps on random clips."""
    import torch
    import torch.distributed as dist
    from ray import train
    from ray.train.torch import prepare_model

    from harness.config import TrainConfig
    from harness.train import compute_loss, create_model, seed_everything

    cfg = TrainConfig.model_validate(config["train"])
    torch.set_num_threads(cfg.recipe.threads)
    seed_everything(cfg.seed)
    model = prepare_model(create_model(cfg, config["num_classes"]))
    opt = torch.optim.SGD(model.parameters(), lr=cfg.recipe.lr, momentum=cfg.recipe.momentum)
    ctx = train.get_context()
    rank, world = ctx.get_world_rank(), ctx.get_world_size()
    device = next(model.parameters()).device
    gen = torch.Generator().manual_seed(cfg.seed * 1000 + rank)  # each rank its own shard of data
    batch = max(1, cfg.recipe.batch_size // world)
    losses = []
    for _ in range(config["steps"]):
        clips = torch.randn(batch, cfg.data.frames, 3, cfg.data.size, cfg.data.size, generator=gen).to(device)
        labels = torch.randint(0, config["num_classes"], (batch,), generator=gen).to(device)
        loss, _ = compute_loss(model(clips), labels, {}, alpha=0.0, beta=0.0)
        opt.zero_grad(set_to_none=True)
        loss.backward()  # DDP all-reduces the gradients here
        opt.step()
        losses.append(loss.item())
    checksum = torch.tensor([sum(p.detach().double().sum().item() for p in model.parameters())], device=device)
    gathered = [torch.zeros_like(checksum) for _ in range(world)]
    dist.all_gather(gathered, checksum)
    metrics = {"rank": rank, "world_size": world, "backend": dist.get_backend(), "losses": losses,
               "checksums": [g.item() for g in gathered], "node_id": ray.get_runtime_context().get_node_id(),
               "device": str(device)}
    with tempfile.TemporaryDirectory() as d:  # Ray Train keeps the metrics of reports that carry a checkpoint
        (Path(d) / "metrics.json").write_text(json.dumps(metrics))
        train.report(metrics, checkpoint=train.Checkpoint.from_directory(d) if rank == 0 else None)


def ddp_smoke(train_config: Mapping[str, Any], *, num_classes: int, workers: int = 2, use_gpu: bool = False,
              steps: int = 2, storage: str | Path | None = None) -> dict[str, Any]:
    """Run the real model data-parallel over ``workers`` Ray Train workers; rank 0's report.

    The backend is gloo on CPU and nccl on GPU (Ray Train's default for
    ``use_gpu``). After the steps every rank's parameters must be identical;
    the report carries each rank's parameter checksum so a caller can check.
    """
    from ray.train import RunConfig, ScalingConfig
    from ray.train.torch import TorchTrainer

    storage = Path(storage or tempfile.mkdtemp(prefix="ddp-")).resolve()
    trainer = TorchTrainer(
        _ddp_loop,
        train_loop_config={"train": dict(train_config), "num_classes": num_classes, "steps": steps},
        scaling_config=ScalingConfig(num_workers=workers, use_gpu=use_gpu,
                                     resources_per_worker={"CPU": 1, **({"GPU": 1} if use_gpu else {})}),
        run_config=RunConfig(name=f"ddp-{int(time.time())}", storage_path=str(storage)),
    )
    result = trainer.fit()
    if result.metrics:
        return dict(result.metrics)
    with result.checkpoint.as_directory() as d:
        return json.loads((Path(d) / "metrics.json").read_text())


# ----------------------------------------------------------------------------- search (harness.search)
#
# A search's trials are not known up front: Optuna (through Ray Tune's OptunaSearch) samples each one
# when a slot frees. :class:`TrialSpecSearcher` turns a sample into the same trial spec a table trial
# has (key, row, seed, train config), so :func:`trainable` and :class:`MlflowCallback` serve both.

from ray.tune.search import Searcher  # noqa: E402 - here, with the search code it serves


class TrialSpecSearcher(Searcher):
    """Wraps ``OptunaSearch``: a sample becomes a trial spec, and Optuna is told one value per trial.

    ``make_spec(trial_id, params, number)`` (``harness.search.TrialMaker``) resolves
    Optuna's params into a spec with the configuration's ``gflops`` and whether it
    is ``over_budget``. What Optuna is told when a trial ends: the last epoch's
    ``metric`` (also for a trial ASHA stopped early: the value at its last rung),
    and ``gflops`` as the second objective in multi-objective mode. A trial over
    the FLOPs budget was never trained; it is told ``worst`` (top-1 0), so TPE puts
    its region among the bad ones and NSGA-II ranks it behind every trained one.

    The state (counter, last values, GFLOPs) is saved with the experiment beside
    OptunaSearch's own (``get_state``; Tune walks wrappers by ``.searcher``), so
    ``Tuner.restore`` brings back both the Optuna study and this bookkeeping.
    """

    def __init__(self, searcher: Searcher, make_spec: Any, *, metric: str, objectives: Sequence[str],
                 worst: float) -> None:
        self.searcher = searcher
        self.make_spec = make_spec
        self.objective_metric, self.objectives, self.worst = metric, list(objectives), worst
        self.count = 0
        self.last: dict[str, float] = {}
        self.gflops: dict[str, float] = {}
        super().__init__(metric=searcher.metric, mode=searcher.mode)

    def set_search_properties(self, metric: str | None, mode: str | None, config: dict, **spec: Any) -> bool:
        return self.searcher.set_search_properties(metric, mode, config, **spec)

    def suggest(self, trial_id: str) -> dict | None:
        params = self.searcher.suggest(trial_id)
        if params is None or params == Searcher.FINISHED:
            return params
        self.count += 1
        spec = self.make_spec(trial_id, params, self.count)
        self.gflops[trial_id] = spec["gflops"]
        return {**params, "trial": spec}

    def on_trial_result(self, trial_id: str, result: dict) -> None:
        if self.objective_metric in result:  # epoch results; the closing summary and a pruned report carry none
            self.last[trial_id] = result[self.objective_metric]
            self.searcher.on_trial_result(trial_id, result)

    def on_trial_complete(self, trial_id: str, result: dict | None = None, error: bool = False) -> None:
        value = self.worst if (result or {}).get("pruned_flops") else self.last.get(trial_id)
        told = None
        if value is not None and not error:
            told = {self.objective_metric: value, "gflops": self.gflops.get(trial_id)}
            told = {k: told[k] for k in self.objectives}
        self.searcher.on_trial_complete(trial_id, result=told, error=error)
        self.last.pop(trial_id, None)

    def get_state(self) -> dict:
        return {"count": self.count, "last": dict(self.last), "gflops": dict(self.gflops)}

    def set_state(self, state: dict) -> None:
        self.count, self.last, self.gflops = state["count"], dict(state["last"]), dict(state["gflops"])


def search_trainable(config: dict[str, Any]) -> None:
    """A search trial: over the FLOPs budget, one tagged report and no training; else :func:`trainable`."""
    spec = config["trial"]
    if spec["over_budget"]:
        tune.report({"final": 1, "pruned_flops": 1, "gflops": spec["gflops"], "status": "FINISHED",
                     "reason": spec["over_budget"], "node_id": ray.get_runtime_context().get_node_id()})
        return
    trainable(config)


class SearchMlflowCallback(MlflowCallback):
    """:class:`MlflowCallback` for sampled trials: a child run is created when its trial first shows up.

    The child gets what ``make_spec`` prepared in ``spec["child"]`` (params: the
    resolved train config and Optuna's raw values; metrics: the profile's
    params and GFLOPs) and its ``trial.yaml``. At the end a trial is tagged
    ``harness.pruned=flops`` (over the budget, not trained) or
    ``harness.stopped_early`` (ASHA stopped it before its last epoch).
    """

    def _run_id(self, trial: Any) -> tuple[str, str]:
        spec = trial.config["trial"]
        tracker = self.tracker  # loads the children already in the store
        if spec["key"] not in self._ids:
            import yaml

            self._ids.update(tracker.ensure_children(self.parent_id, [spec["child"]]))
            run_id = self._ids[spec["key"]]
            if tracker.status(run_id) == "SCHEDULED":
                tracker.log_text(run_id, yaml.safe_dump(spec["train"], sort_keys=False), "trial.yaml")
        return super()._run_id(trial)

    def on_trial_complete(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        key, run_id = self._run_id(trial)
        final = self._final.get(key) or {}
        epochs = trial.config["trial"]["train"]["recipe"]["epochs"]
        if final.get("pruned_flops"):
            self.tracker.set_tags(run_id, {"harness.pruned": "flops"})
        elif not final and self.tracker.last_epoch(run_id) < epochs:  # ASHA stops a trial before its summary
            self.tracker.set_tags(run_id, {"harness.stopped_early": str(self.tracker.last_epoch(run_id))})
        super().on_trial_complete(iteration, trials, trial, **info)


def optuna_searcher(space: Mapping[str, Any], *, metric: str, multi_objective: bool, seed: int,
                    startup_trials: int, population_size: int) -> Searcher:
    """Ray Tune's OptunaSearch over Optuna distributions: TPE (seeded), or NSGA-II on (metric, gflops)."""
    import optuna
    from ray.tune.search.optuna import OptunaSearch

    if multi_objective:
        sampler = optuna.samplers.NSGAIISampler(population_size=population_size, seed=seed)
        return OptunaSearch(dict(space), metric=[metric, "gflops"], mode=["max", "min"], sampler=sampler)
    # constant_liar: a running trial counts as a bad result, so concurrent trials are not sampled alike
    sampler = optuna.samplers.TPESampler(seed=seed, n_startup_trials=startup_trials, constant_liar=True)
    return OptunaSearch(dict(space), metric=metric, mode="max", sampler=sampler)


def search_algorithm(space: Mapping[str, Any], make_spec: Any, *, metric: str, multi_objective: bool, seed: int,
                     startup_trials: int, population_size: int, max_concurrent: int) -> Searcher:
    """OptunaSearch wrapped by :class:`TrialSpecSearcher` and a ConcurrencyLimiter.

    The limiter matters: without it Tune asks for every sample at once (they
    queue as PENDING), and TPE would choose them all before any result came back.
    """
    from ray.tune.search import ConcurrencyLimiter

    inner = optuna_searcher(space, metric=metric, multi_objective=multi_objective, seed=seed,
                            startup_trials=startup_trials, population_size=population_size)
    objectives = [metric, "gflops"] if multi_objective else [metric]
    wrapped = TrialSpecSearcher(inner, make_spec, metric=metric, objectives=objectives, worst=0.0)
    return ConcurrencyLimiter(wrapped, max_concurrent=max_concurrent)


def run_search(space: Mapping[str, Any], make_spec: Any, *, storage: Path, name: str,
               resources: Mapping[str, float], callback: MlflowCallback, metric: str, multi_objective: bool,
               seed: int, startup_trials: int, population_size: int, num_samples: int, max_concurrent: int,
               epochs: int, grace_period: int, reduction_factor: float, max_failures: int = 2,
               keep: int | None = 2, restore: bool = False) -> dict[str, str]:
    """Run (or resume) a search with Ray Tune; returns Tune's final state per trial key.

    Single objective: ASHA on ``metric`` by epoch (``grace_period`` epochs, then
    the top ``1/reduction_factor`` at each rung go on, up to ``epochs``).
    Multi-objective: FIFO, every trial trains all epochs (see ``harness.config.Search``).
    ``restore=True``: ``Tuner.restore`` of ``storage/name``; the searcher (Optuna's
    study, sampler RNG, this harness's bookkeeping) comes back from the saved
    experiment state, unfinished trials resume from their last checkpoint.
    ``keep``: checkpoints kept per trial (:func:`checkpoints_to_keep`).
    """
    from ray.tune.schedulers import ASHAScheduler, FIFOScheduler

    # A trial's closing summary (best/last top-1) carries no per-epoch metric; ASHA skips results without
    # its metric, and TrialSpecSearcher tells Optuna the last epoch's value itself. Tune's strict check
    # would otherwise reject the summary.
    os.environ["TUNE_DISABLE_STRICT_METRIC_CHECKING"] = "1"
    path = Path(storage) / name
    request, data_parallel = trial_resources(resources, experiment=path, max_failures=max_failures)
    wrapped = tune.with_resources(search_trainable, request)
    if restore:
        log.info("restoring Ray experiment %s (Optuna's study comes back with it)", path)
        tuner = tune.Tuner.restore(str(path), trainable=wrapped, resume_unfinished=True,
                                   resume_errored=True, restart_errored=False)
    else:
        scheduler = FIFOScheduler() if multi_objective else ASHAScheduler(
            time_attr="epoch", metric=metric, mode="max", max_t=epochs, grace_period=grace_period,
            reduction_factor=reduction_factor, stop_last_trials=False)  # let a trial send its closing summary
        algorithm = search_algorithm(space, make_spec, metric=metric, multi_objective=multi_objective, seed=seed,
                                     startup_trials=startup_trials, population_size=population_size,
                                     max_concurrent=max_concurrent)
        tuner = tune.Tuner(
            wrapped,
            param_space=dict(data_parallel),  # constants every sample joins (a data-parallel trial's workers)
            tune_config=tune.TuneConfig(search_alg=algorithm, scheduler=scheduler, num_samples=num_samples,
                                        trial_name_creator=trial_name, trial_dirname_creator=trial_dirname,
                                        # not reused as in run_trials: with reuse, one search resumed after a
                                        # SIGKILL trained a sample twice (test_search's resume test, once)
                                        reuse_actors=False),
            run_config=run_config(name, storage, callback, max_failures=max_failures, keep=keep),
        )
    grid = tuner.fit()
    states = {}
    for result in grid:
        key = result.config["trial"]["key"] if result.config and "trial" in result.config else "?"
        states[key] = "ERROR" if result.error else "TERMINATED"
    return states
