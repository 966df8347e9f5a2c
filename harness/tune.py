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

A trial may ask for data-parallel training: :func:`ddp_smoke` runs the real
model under Ray Train's ``TorchTrainer`` over several workers (gloo on CPU,
nccl on GPU) for a few DDP steps. What it gives up: ``harness.train.fit`` is
single-process, so a study's trials train on one worker each; the
data-parallel path is a check of the model under DDP, not yet a full trial.

On a multi-node cluster the storage path (``work/ray/<study>``) must be on a
filesystem every node can reach (NFS), and every node needs this package
installed in the same environment.
"""
from __future__ import annotations

import json
import logging
import os
import re
import shutil
import tempfile
import time
from pathlib import Path
from typing import Any, Mapping, Sequence

# Experiment state current within ~1 s of a report, so a driver killed mid-study resumes
# finished trials as finished (see docs: tools-notes). Set before Ray reads it; users may override.
os.environ.setdefault("TUNE_GLOBAL_CHECKPOINT_S", "1")
os.environ.setdefault("TUNE_WARN_EXCESSIVE_EXPERIMENT_CHECKPOINT_SYNC_THRESHOLD_S", "0")
os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")  # no network here
os.environ.setdefault("RAY_DEDUP_LOGS", "1")

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
    if address:
        ray.init(address=address, logging_level=logging.WARNING)
        log.info("joined Ray cluster at %s: %s", address, ray.cluster_resources())
        return False
    # address="local": a new instance, never one found in /tmp/ray/ray_current_cluster by accident
    ray.init(address="local", num_cpus=num_cpus or os.cpu_count() or 1, include_dashboard=False,
             logging_level=logging.WARNING)
    return True


def shutdown() -> None:
    ray.shutdown()


# ----------------------------------------------------------------------------- the trainable


def trainable(config: dict[str, Any]) -> None:
    """One trial: ``config["trial"]`` is a plan entry (key, row, seed, train config as JSON)."""
    from harness.config import TrainConfig
    from harness.train import fit

    logging.getLogger("ray").setLevel(logging.WARNING)  # "checkpoint created" per epoch is noise
    spec = config["trial"]
    cfg = TrainConfig.model_validate(spec["train"])
    # Ray runs a trial in its own working folder (under the Ray session dir, node-local, not synced to
    # storage); only the checkpoints reported below travel to the storage path.
    out_dir = Path.cwd() / "fit"
    ckpt_dir = out_dir / "checkpoints"
    node_id = ray.get_runtime_context().get_node_id()
    resume = False
    checkpoint = tune.get_checkpoint()
    if checkpoint is not None:
        from harness.checkpoint import copy_atomic

        ckpt_dir.mkdir(parents=True, exist_ok=True)
        with checkpoint.as_directory() as d:
            copy_atomic(Path(d) / "last.pt", ckpt_dir / "last.pt")
        resume = True
    else:  # a restart from scratch must not trip over files of an earlier attempt
        shutil.rmtree(ckpt_dir, ignore_errors=True)

    def report(metrics: dict[str, Any], checkpoint_dir: Path) -> None:
        # Hand Ray a folder with last.pt only (best.pt would double what is copied each epoch).
        stage = Path(tempfile.mkdtemp(prefix=".report-", dir=out_dir))
        try:
            try:
                os.link(Path(checkpoint_dir) / "last.pt", stage / "last.pt")
            except OSError:
                shutil.copyfile(Path(checkpoint_dir) / "last.pt", stage / "last.pt")
            tune.report({**metrics, "node_id": node_id},
                        checkpoint=tune.Checkpoint.from_directory(str(stage)))
        finally:
            shutil.rmtree(stage, ignore_errors=True)

    result = fit(cfg, out_dir, report=report, resume=resume)
    best_epoch = None
    if result.history:
        best_epoch = max(result.history, key=lambda m: m["val_top1"])["epoch"]
    tune.report({
        "final": 1, "status": result.status, "reason": result.reason or "",
        "best_top1": result.best_top1, "last_top1": result.last_top1, "best_epoch": best_epoch,
        "epochs_done": len(result.history), "num_params": result.num_params,
        "ir_interactions": result.ir_interactions, "node_id": node_id,
        "fusion_matrices": json.dumps(result.fusion_matrices) if result.fusion_matrices else "",
    })


def trial_name(trial: Any) -> str:
    spec = trial.config["trial"]
    return f"{spec['row']}-seed{spec['seed']}"


def trial_dirname(trial: Any) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", trial_name(trial)) + f"_{trial.trial_id}"


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
        if final.get("reason"):
            tags["harness.reason"] = final["reason"][:5000]
        artifacts = {}
        if final.get("fusion_matrices"):
            artifacts["fusion_matrices.json"] = json.loads(final["fusion_matrices"])
        if self.tracker.finish_child(run_id, status, summary=summary, tags=tags, artifacts=artifacts):
            self._done.add(key)
            log.info("done   %-24s %s  best %.1f  last %.1f  [%d/%d trials done]", trial_name(trial), status,
                     _num(summary["best_top1"]), _num(summary["last_top1"]), len(self._done), self.total)

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
        log.error("error  %-24s after %d attempts: %s", trial_name(trial), trial.num_failures,
                  str(reason).strip().splitlines()[-1])


def _num(v: Any) -> float:
    return float("nan") if v is None else float(v)


# ----------------------------------------------------------------------------- running a plan


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
    wrapped = tune.with_resources(trainable, {"cpu": resources.get("cpu", 1), "gpu": resources.get("gpu", 0)})
    if restore:
        log.info("restoring Ray experiment %s", path)
        tuner = tune.Tuner.restore(str(path), trainable=wrapped, resume_unfinished=True,
                                   resume_errored=True, restart_errored=False)
    else:
        tuner = tune.Tuner(
            wrapped,
            param_space={"trial": tune.grid_search(list(specs))},
            tune_config=tune.TuneConfig(max_concurrent_trials=max_concurrent, trial_name_creator=trial_name,
                                        trial_dirname_creator=trial_dirname, reuse_actors=False),
            run_config=tune.RunConfig(
                name=name, storage_path=str(Path(storage).resolve()), callbacks=[callback], verbose=0,
                failure_config=tune.FailureConfig(max_failures=max_failures),
                checkpoint_config=tune.CheckpointConfig(num_to_keep=2)),
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
