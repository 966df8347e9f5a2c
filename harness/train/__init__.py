"""One trial: build the model from a TrainConfig, train it, evaluate it, checkpoint, report.

    harness train studies/smoke.yaml                  # -> work/train/<name>/
    harness train studies/smoke.yaml --resume         # continue from checkpoints/last.pt
    harness train studies/smoke.yaml --evaluate work/train/smoke/checkpoints/best.pt --clips 2 --crops 3

This package knows nothing of Ray, MLflow or study kinds: :func:`fit` reports
each epoch's metrics through a callback, which ``harness.tune`` turns into Tune
reports and the CLI leaves empty. The same config therefore gives the same
numbers with and without Ray. Its modules, one job each:

- ``setup``: seeding, device, loaders, model and optimiser, built in a fixed order;
- ``loop``: the epoch loop (:func:`fit`), validation and per-clip predictions;
- ``recipe``: the loss, the lr schedule, the parameter groups;
- ``resume``: what a checkpoint holds and how a resume puts it back;
- ``distributed``: data-parallel ranks;
- ``memory``: glibc's malloc thresholds for a steady step time.

Data-parallel: when a launcher has set up ``torch.distributed`` (Ray Train for a
trial with ``resources.workers > 1``, or torchrun) with more than one rank, the
model trains under DDP. ``recipe.batch_size`` stays the global batch: each rank
takes ``batch_size / world`` clips a step from its own share of every epoch's
order, and DDP averages the gradients, so step k sees the clips of step k on
one process (only BatchNorm differs: it normalises each rank's clips apart; no
SyncBatchNorm). Rank 0 validates, and writes the checkpoints and files; every
rank gets its numbers, so all ranks take the same decisions. What it gives up:
validation is not spread over the ranks. Without a process group, or with one
rank, nothing here changes.
"""
from harness.train.distributed import RankShard, process_group, shard_loader
from harness.train.loop import (PREDICTIONS_KEY, NonFinite, Report, TrainResult, evaluate, evaluate_checkpoint, fit,
                                optimizer_step, predict, view_logits, write_json)
from harness.train.memory import keep_freed_memory
from harness.train.recipe import compute_loss, lr_lambda, param_groups
from harness.train.resume import check_same_trial
from harness.train.setup import autocast, create_model, device, seed_everything

__all__ = ["PREDICTIONS_KEY", "NonFinite", "RankShard", "Report", "TrainResult", "autocast", "check_same_trial",
           "compute_loss", "create_model", "device", "evaluate", "evaluate_checkpoint", "fit", "keep_freed_memory",
           "lr_lambda", "optimizer_step", "param_groups", "predict", "process_group", "seed_everything", "shard_loader", "view_logits",
           "write_json"]
