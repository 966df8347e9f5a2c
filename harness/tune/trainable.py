"""The Tune trainable of every study: one :class:`harness.trial.TrialSpec` per Tune trial."""
from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import ray
from ray import tune

from harness.trial import TrialSpec
from harness.tune import ddp
from harness.tune.fitting import FINAL, NODE_ID, PRUNED_FLOPS, REASON, STATUS, run_trial


def trainable(config: dict[str, Any]) -> None:
    """One trial: ``config["trial"]`` is its :class:`TrialSpec`.

    With ``config["data_parallel"]`` (see :func:`harness.tune.ddp.trial_resources`)
    this trial only drives a Ray Train run whose workers each run the same trial
    on their rank. A search sample over the FLOPs budget reports once and trains nothing.
    """
    logging.getLogger("ray").setLevel(logging.WARNING)  # "checkpoint created" per epoch is noise
    spec: TrialSpec = config["trial"]
    if spec.over_budget:
        tune.report({FINAL: 1, PRUNED_FLOPS: 1, STATUS: "FINISHED", REASON: spec.over_budget,
                     NODE_ID: ray.get_runtime_context().get_node_id()})
        return
    if config.get("data_parallel"):
        ddp.drive_workers(spec, config["data_parallel"])
        return
    # Ray runs a trial in its own working folder (under the Ray session dir, node-local, not synced to
    # storage); only the checkpoints reported below travel to the storage path.
    run_trial(spec, Path.cwd() / "fit", tune.report, tune.get_checkpoint(), tune.Checkpoint)
