"""A Tune experiment's names, storage, checkpoint retention and restore."""
from __future__ import annotations

import re
from pathlib import Path
from typing import Any

from ray import tune

from harness.trial import TrialSpec


def label(spec: TrialSpec) -> str:
    """How a trial is named in logs and in Tune's folders: ``TSM-seed0``."""
    return f"{spec.label}-seed{spec.seed}"


def dirname(spec: TrialSpec, trial_id: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", label(spec)) + f"_{trial_id}"


def trial_name(trial: Any) -> str:
    return label(trial.config["trial"])


def trial_dirname(trial: Any) -> str:
    return dirname(trial.config["trial"], trial.trial_id)


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


def run_config(storage: str, callback: tune.Callback, *, max_failures: int, keep: int | None) -> tune.RunConfig:
    """Where a Tune experiment lives (``<storage root>/<name>``, a folder or a URI), its MLflow callback,
    retries and checkpoint retention."""
    root, name = split(storage)
    return tune.RunConfig(name=name, storage_path=root, callbacks=[callback], verbose=0,
                          failure_config=tune.FailureConfig(max_failures=max_failures),
                          checkpoint_config=tune.CheckpointConfig(num_to_keep=keep))


def split(experiment: str) -> tuple[str, str]:
    """``/shared/ray/table1/laptop-2026...`` -> (``/shared/ray/table1``, ``laptop-2026...``); URIs alike."""
    root, _, name = experiment.rstrip("/").rpartition("/")
    if "://" not in experiment:
        root = str(Path(root).resolve())
    return root, name


def can_restore(experiment: str) -> bool:
    """Whether Tune saved a state of this experiment that ``Tuner.restore`` can continue."""
    if "://" not in experiment and not Path(experiment).is_dir():
        return False
    return bool(tune.Tuner.can_restore(experiment))
