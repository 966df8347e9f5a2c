"""Checks a study needs before anything runs: paths exist, trials fit the cluster.

The schema (``harness.config``) checks what a file says; these check what it
points at, so that a typo fails in a second, before Ray, MLflow or a results
file is touched. Each failure names the key to fix.
"""
from __future__ import annotations

import os
from pathlib import Path

from .config import Profile


class PreflightError(ValueError):
    """A study that cannot run here; ``keys`` is the path of the offending key in the file."""

    def __init__(self, keys: tuple, message: str):
        super().__init__(message)
        self.keys = keys


def _unset_variable(value: str) -> str | None:
    if "${" in value:
        return value[value.index("${") + 2: value.index("}", value.index("${"))]
    return None


def check_path(value: str | None, keys: tuple, what: str) -> None:
    if value is None:
        return
    var = _unset_variable(value)
    if var:
        raise PreflightError(keys, f"environment variable {var} is not set; export {var}=/path/to/{what}")
    if not Path(value).exists():
        raise PreflightError(keys, f"{what} {value} does not exist; fix the path")


def check_profile(profile: Profile, name: str, *, cluster_cpus: float | None = None,
                  cluster_gpus: float | None = None) -> None:
    """Raise PreflightError when the profile's data, checkpoint or resources cannot be used here."""
    base = ("profiles", name)
    data = profile.data
    if data.format != "synth":  # the synthetic set is generated on first use
        check_path(data.root, (*base, "data", "root"), "data folder")
        check_path(data.annotations, (*base, "data", "annotations"), "annotation folder")
    check_path(profile.backbone.pretrained, (*base, "backbone", "pretrained"), "checkpoint")
    res = profile.resources
    if cluster_cpus is not None and res.cpu > cluster_cpus:
        raise PreflightError((*base, "resources", "cpu"),
                             f"a trial asks for {res.cpu:g} CPUs but the cluster has {cluster_cpus:g}; lower it")
    if cluster_gpus is not None and res.gpu > cluster_gpus:
        raise PreflightError((*base, "resources", "gpu"),
                             f"a trial asks for {res.gpu:g} GPUs but the cluster has {cluster_gpus:g}; "
                             "lower it or pass --address of a GPU cluster")


def local_resources() -> tuple[float, float]:
    """CPUs and GPUs of this machine, for a run without --address."""
    gpus = 0
    try:
        import torch

        gpus = torch.cuda.device_count()
    except ImportError:
        pass
    return float(len(os.sched_getaffinity(0))), float(gpus)
