"""Data-parallel trials: a Tune trial that drives a Ray Train run, and a quick check of a model under DDP.

A trial may train data-parallel (``resources: {cpu: 1, workers: 2}``): the Tune
trial then only drives a Ray Train ``TorchTrainer`` run (Train v2's pattern:
the trainer inside a Tune function) whose workers run the same trial function
on their rank; ``fit`` sees the process group Ray Train set up (gloo on CPU,
nccl on GPU) and trains under DDP with ``recipe.batch_size`` as the global
batch. Ray Train's ``TuneReportCallback`` hands rank 0's reports to Tune, so
the MLflow callback sees the same epochs and summary as from a one-process
trial, plus a ``world_size`` metric and a ``harness.backend`` tag. The driving
trial takes no CPU slot (a little memory instead; a Ray bundle cannot be
empty), the run's controller none either, the workers ``cpu``/``gpu`` each.
Checkpoints are Ray Train's, under ``<experiment>/ddp/<trial>``: a worker that
dies restarts the worker group from the last one (``ray.train.get_checkpoint``),
and a restarted or restored Tune trial starts a trainer of the same name, which
resumes from it. :func:`ddp_smoke` is a quicker check of a model under DDP
(random clips, a few steps).
"""
from __future__ import annotations

import json
import logging
import tempfile
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import ray
from ray import tune

from harness import names
from harness.config import Resources
from harness.trial import TrialSpec
from harness.tune.experiment import dirname, label
from harness.tune.fitting import run_trial

log = logging.getLogger(__name__)

BACKEND = "backend"  # a data-parallel trial's reports: the torch.distributed backend (gloo, nccl)

# What the trial that drives a Ray Train run reserves: it mostly waits, so no CPU slot (the workers
# take those), but a placement-group bundle cannot be empty, so a little memory.
DRIVER_MEMORY = 256 * 2**20


def trial_resources(resources: Resources, *, experiment: str,
                    max_failures: int) -> tuple[dict[str, float], dict[str, Any]]:
    """What Tune reserves for one trial, and what its config needs beside ``"trial"``.

    ``resources``: ``cpu``/``gpu`` per worker, ``workers`` data-parallel workers per trial.
    ``experiment``: the Tune experiment's storage (a folder or a URI); Ray Train's runs go under it.
    """
    cpu, gpu, workers = resources.cpu, resources.gpu, resources.workers
    if workers == 1:
        return {"cpu": cpu, "gpu": gpu}, {}
    return {"cpu": 0, "memory": DRIVER_MEMORY}, {"data_parallel": {
        "workers": workers, "cpu": cpu, "gpu": gpu, "max_failures": max_failures,
        "storage": f"{experiment.rstrip('/')}/ddp"}}


def data_parallel_slots(resources: Resources) -> int:
    """How many data-parallel trials the cluster runs at once: more would only start drivers that wait."""
    have = ray.cluster_resources()
    slots = int(have.get("CPU", 0) // (resources.workers * resources.cpu))
    if resources.gpu:
        slots = min(slots, int(have.get("GPU", 0) // (resources.workers * resources.gpu)))
    return max(1, slots)


def drive_workers(spec: TrialSpec, dp: Mapping[str, Any]) -> None:
    """A data-parallel trial: a ``TorchTrainer`` of ``workers`` ranks, each running :func:`_worker_loop`.

    The run is named after the trial (``<experiment>/ddp/<row>-seed<k>_<trial id>``),
    so a restart of this trial (Tune's ``max_failures``, ``Tuner.restore``)
    starts a trainer that resumes the run from its last checkpoint; Ray Train
    itself restarts a worker group that lost a worker (its own ``max_failures``).
    """
    from ray.train import CheckpointConfig, FailureConfig, RunConfig, ScalingConfig
    from ray.train.torch import TorchTrainer
    from ray.tune.integration.ray_train import TuneReportCallback

    per_worker = {"CPU": dp["cpu"], **({"GPU": dp["gpu"]} if dp["gpu"] else {})}
    trainer = TorchTrainer(
        _worker_loop,
        train_loop_config={"trial": spec},
        scaling_config=ScalingConfig(num_workers=dp["workers"], use_gpu=dp["gpu"] > 0,
                                     resources_per_worker=per_worker),
        run_config=RunConfig(name=dirname(label(spec), tune.get_context().get_trial_id()), storage_path=dp["storage"],
                             failure_config=FailureConfig(max_failures=dp["max_failures"]),
                             checkpoint_config=CheckpointConfig(num_to_keep=2),  # as a one-process trial's
                             callbacks=[TuneReportCallback()]),  # type: ignore[list-item]  # Train v2's own type  # rank 0's reports become this trial's results
    )
    trainer.fit()  # raises when the run failed for good: the Tune trial errors, MlflowCallback marks it FAILED


def _worker_loop(config: dict[str, Any]) -> None:
    """One Ray Train worker: the trial of :func:`harness.tune.trainable.trainable`, on this rank of the process group.

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
    run_trial(config["trial"], Path.cwd() / f"fit-rank{rank}", train.report, train.get_checkpoint(),
              train.Checkpoint, {names.WORLD_SIZE: ctx.get_world_size(), BACKEND: dist.get_backend()})


# ----------------------------------------------------------------------------- a quick DDP check


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
    if result.checkpoint is None:
        raise RuntimeError(f"the DDP check reported no metrics and no checkpoint: {result.error}")
    with result.checkpoint.as_directory() as d:
        return json.loads((Path(d) / "metrics.json").read_text())
