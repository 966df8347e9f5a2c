"""Checks a study needs before anything runs: paths exist, trials fit the cluster.

The schema (``harness.config``) checks what a file says; these check what it
points at, so that a typo fails in a second, before Ray, MLflow or a results
file is touched. Each failure names the key to fix.
"""
from __future__ import annotations

import errno
import os
import tempfile
from collections.abc import Collection
from pathlib import Path

from .config import ConfigError, Profile


class PreflightError(ConfigError):
    """A study that cannot run here; ``keys`` is the path of the offending key in the file."""


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
                  cluster_gpus: float | None = None, archs: Collection[str] | None = None) -> None:
    """Raise PreflightError when the profile's data, checkpoints or resources cannot be used here.

    ``archs``: the backbones the study's rows train under this profile
    (:func:`harness.config.trained_archs`), whose ImageNet checkpoints must
    exist; None checks every checkpoint the profile names.
    """
    base = ("profiles", name)
    data = profile.data
    if data.format != "synth":  # the synthetic set is generated on first use
        check_path(data.root, (*base, "data", "root"), "data folder")
        check_path(data.annotations, (*base, "data", "annotations"), "annotation folder")
    check_weights(profile, base, archs)
    res = profile.resources
    if profile.recipe.batch_size % res.workers:
        raise PreflightError((*base, "resources", "workers"),
                             f"{res.workers} workers cannot split recipe.batch_size {profile.recipe.batch_size} "
                             "evenly (it is the global batch); pick a divisor of it")
    # cpu and gpu are per worker; a data-parallel trial's driver takes no CPU slot (harness.tune)
    cpus, gpus = res.workers * res.cpu, res.workers * res.gpu
    per = f" ({res.workers} workers)" if res.workers > 1 else ""
    if cluster_cpus is not None and cpus > cluster_cpus:
        raise PreflightError((*base, "resources", "cpu"),
                             f"a trial asks for {cpus:g} CPUs{per} but the cluster has {cluster_cpus:g}; lower it")
    if cluster_gpus is not None and gpus > cluster_gpus:
        raise PreflightError((*base, "resources", "gpu"),
                             f"a trial asks for {gpus:g} GPUs{per} but the cluster has {cluster_gpus:g}; "
                             "lower it or pass --address of a GPU cluster")


def check_weights(profile: Profile, base: tuple, archs: Collection[str] | None = None) -> None:
    """Every ImageNet checkpoint a run of the profile loads exists (one path, or one per arch)."""
    pretrained = profile.backbone.pretrained
    if isinstance(pretrained, dict):
        for arch, path in pretrained.items():
            if archs is None or arch in archs:
                check_path(path, (*base, "backbone", "pretrained", arch), "checkpoint")
    else:  # one path: the weights of the profile's arch, the only one its rows may train (harness.config)
        check_path(pretrained, (*base, "backbone", "pretrained"), "checkpoint")


def check_writable(folder: str | Path) -> None:
    """Create ``folder`` and a file in it now: an unwritable work or results folder fails before the
    trials, not after days of them. Raises the OSError (with the folder's name)."""
    folder = Path(folder).resolve()
    if folder.exists() and not folder.is_dir():
        raise NotADirectoryError(errno.ENOTDIR, "not a folder", str(folder))
    try:
        folder.mkdir(parents=True, exist_ok=True)
        fd, probe = tempfile.mkstemp(prefix=".write-test-", dir=folder)
        os.close(fd)
        os.unlink(probe)
    except OSError as e:
        raise OSError(e.errno, e.strerror or str(e), str(folder)) from e


def local_resources() -> tuple[float, float]:
    """CPUs and GPUs of this machine, for a run without --address."""
    gpus = 0
    try:
        import torch

        gpus = torch.cuda.device_count()
    except ImportError:
        pass
    return float(len(os.sched_getaffinity(0))), float(gpus)
