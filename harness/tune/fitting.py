"""One trial inside Ray: :func:`harness.train.fit` of a :class:`harness.trial.TrialSpec`, reporting to Tune
(one process) or to Ray Train (a data-parallel worker).

``fit`` writes ``checkpoints/last.pt`` each epoch and calls back; the callback
hands a folder holding only that file to ``tune.report``, so Ray persists it
under the experiment's storage. When Ray restarts a trial (a worker died,
``FailureConfig.max_failures``) or a driver resumes the experiment
(``Tuner.restore``), ``tune.get_checkpoint()`` holds that file: it is copied
into the trial's folder and ``fit(resume=True)`` continues from the next epoch.

After the last epoch the trial sends one closing summary (:data:`FINAL`) with
its status, best and last top-1 and the fusion matrices; the last epoch's
report carries the per-clip predictions. The driver's callback
(:mod:`harness.tune.callback`) turns both into the child run's record.
"""
from __future__ import annotations

import json
import logging
import os
import shutil
import tempfile
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import ray

from harness import device, names
from harness.files import copy_atomic
from harness.train import fit
from harness.trial import TrialSpec

log = logging.getLogger(__name__)

# Keys of the closing summary a trial reports; the callback reads them (names.* are MLflow's names too).
FINAL = "final"  # 1: this report is the closing summary, not an epoch
STATUS, REASON = "status", "reason"
NODE_ID = "node_id"
PRUNED_FLOPS = "pruned_flops"  # 1: a search sample over the FLOPs budget, never trained
FUSION_MATRICES = "fusion_matrices"  # JSON text: the fusion layers' weights at the end
PRETRAINED = "pretrained"  # JSON text: the ImageNet weights as loaded (path, sha256, missing / unexpected keys)
SUMMARY = (names.BEST_TOP1, names.LAST_TOP1, names.BEST_EPOCH, names.NUM_PARAMS, names.IR_INTERACTIONS,
           names.EPOCHS_DONE)

ReportTo = Callable[..., None]  # tune.report or ray.train.report: (metrics, checkpoint=None)


def config_problem(spec: TrialSpec) -> str | None:
    """Why this worker cannot build the trial's block (its registry differs from the driver's), or None."""
    import blocks

    from harness.errors import summary

    try:
        blocks.check(spec.config.row.block, spec.config.row.options)
    except (KeyError, TypeError, ValueError) as exc:  # unknown block or option, a wrong value
        return summary(exc)
    return None


def run_trial(spec: TrialSpec, out_dir: Path, report_to: ReportTo, checkpoint: Any, checkpoint_cls: Any,
              extra: Mapping[str, Any] | None = None) -> None:
    """``fit`` one trial, reporting each epoch and a closing summary through ``report_to``.

    ``report_to`` / ``checkpoint`` / ``checkpoint_cls`` are Tune's (one process)
    or Ray Train's (a data-parallel worker); ``extra`` joins every report.
    """
    os.environ[device.ENV] = device.for_trial(ray.get_gpu_ids())  # given a GPU: never train on the CPU
    ckpt_dir = out_dir / "checkpoints"
    extra = {NODE_ID: ray.get_runtime_context().get_node_id(), **(extra or {})}
    problem = config_problem(spec)
    if problem is not None:  # a retry cannot fix a configuration: the trial ends FAILED, once, with the reason
        report_to({FINAL: 1, STATUS: "FAILED", REASON: f"config: {problem}", **extra})
        return
    resume = False
    if checkpoint is not None:
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

    result = fit(spec.config, out_dir, report=report, resume=resume)
    report_to({
        FINAL: 1, STATUS: result.status, REASON: result.reason or "",
        names.BEST_TOP1: result.best_top1, names.LAST_TOP1: result.last_top1, names.BEST_EPOCH: result.best_epoch,
        names.EPOCHS_DONE: len(result.history), names.NUM_PARAMS: result.num_params,
        names.IR_INTERACTIONS: result.ir_interactions, **extra,
        FUSION_MATRICES: json.dumps(result.fusion_matrices) if result.fusion_matrices else "",
        PRETRAINED: json.dumps(result.pretrained) if result.pretrained else "",
    })
