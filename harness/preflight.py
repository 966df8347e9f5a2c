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
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from .config import ConfigError, Profile


class PreflightError(ConfigError):
    """A study that cannot run here; ``keys`` is the path of the offending key in the file."""


@dataclass(frozen=True)
class Problem:
    """One reason a profile cannot run here: the key to fix, the one-line message, and its kind.

    ``kind`` says what a dry run may downgrade to a warning: ``data`` (a path that is not here) and
    ``resources`` (more CPUs or GPUs than this machine or cluster has) depend on where it runs, not on
    the study; ``config`` (e.g. a batch that does not split over the workers) is wrong everywhere.
    """

    keys: tuple
    message: str
    kind: Literal["config", "data", "resources"]

    def error(self) -> PreflightError:
        return PreflightError(self.keys, self.message)


def _unset_variable(value: str) -> str | None:
    if "${" in value:
        return value[value.index("${") + 2: value.index("}", value.index("${"))]
    return None


def path_problem(value: str | None, keys: tuple, what: str) -> Problem | None:
    """Why ``value`` cannot be read here (an unset ``${VAR}``, a path that does not exist), or None."""
    if value is None:
        return None
    var = _unset_variable(value)
    if var:
        return Problem(keys, f"environment variable {var} is not set; export {var}=/path/to/{what}", "data")
    if not Path(value).exists():
        return Problem(keys, f"{what} {value} does not exist; fix the path", "data")
    return None


def check_path(value: str | None, keys: tuple, what: str) -> None:
    problem = path_problem(value, keys, what)
    if problem is not None:
        raise problem.error()


def torch_build() -> tuple[str, str | None]:
    """(torch version, CUDA version it was built for; None for a CPU build). ('absent', None) without torch."""
    try:
        import torch
    except ImportError:
        return "absent", None
    return torch.__version__, torch.version.cuda


def gpu_fix(cluster: str | None) -> str:
    """What to do when a profile asks for GPUs that ``cluster`` (an address; None: this machine) lacks."""
    if cluster:
        return (f"the Ray cluster at {cluster} has no GPU to give; start its nodes with `ray start ... "
                "--num-gpus=N`, or set resources.gpu: 0")
    version, cuda = torch_build()
    if cuda is None:
        return (f"torch {version} here is a CPU build; install a CUDA build of torch on a GPU machine, "
                "pass --address of a GPU cluster, or set resources.gpu: 0")
    return (f"torch {version} (CUDA {cuda}) sees no GPU here (CUDA_VISIBLE_DEVICES="
            f"{os.environ.get('CUDA_VISIBLE_DEVICES', 'unset')}; check nvidia-smi); pass --address of a GPU "
            "cluster, or set resources.gpu: 0")


def _resource_problems(profile: Profile, base: tuple, cluster_cpus: float | None, cluster_gpus: float | None,
                       cluster: str | None) -> list[Problem]:
    res = profile.resources
    out = []
    if profile.recipe.batch_size % res.workers:
        out.append(Problem((*base, "resources", "workers"),
                           f"{res.workers} workers cannot split recipe.batch_size {profile.recipe.batch_size} "
                           "evenly (it is the global batch); pick a divisor of it", "config"))
    # cpu and gpu are per worker; a data-parallel trial's driver takes no CPU slot (harness.tune)
    cpus, gpus = res.workers * res.cpu, res.workers * res.gpu
    per = f" ({res.workers} workers)" if res.workers > 1 else ""
    if cluster_gpus is not None and gpus > 0 and cluster_gpus == 0:
        # A GPU profile where no GPU is to be had: the fix is the machine, not the number.
        out.append(Problem((*base, "resources", "gpu"), f"a trial asks for {gpus:g} GPUs{per}: {gpu_fix(cluster)}",
                           "resources"))
    elif cluster_gpus is not None and gpus > cluster_gpus:
        out.append(Problem((*base, "resources", "gpu"),
                           f"a trial asks for {gpus:g} GPUs{per} but the cluster has {cluster_gpus:g}; "
                           "lower it or pass --address of a GPU cluster", "resources"))
    if cluster_cpus is not None and cpus > cluster_cpus:
        out.append(Problem((*base, "resources", "cpu"),
                           f"a trial asks for {cpus:g} CPUs{per} but the cluster has {cluster_cpus:g}; lower it",
                           "resources"))
    return out


def problems(profile: Profile, name: str, *, cluster_cpus: float | None = None, cluster_gpus: float | None = None,
             cluster: str | None = None, archs: Collection[str] | None = None) -> list[Problem]:
    """Every reason the profile cannot run here: data and checkpoint paths, the batch split, then GPUs
    (a GPU profile on a machine without any hears that before the CPU count) and CPUs against the cluster.

    ``cluster_cpus`` / ``cluster_gpus``: what the machine or cluster has (None: not checked);
    ``cluster``: its address, or None for this machine (it words the GPU fix); ``archs``: the backbones
    the rows train, whose checkpoints must exist (:func:`weight_paths`).
    """
    base = ("profiles", name)
    data = profile.data
    paths = weight_paths(profile, base, archs)
    if data.format != "synth":  # the synthetic set is generated on first use
        paths[:0] = [(data.root, (*base, "data", "root"), "data folder"),
                     (data.annotations, (*base, "data", "annotations"), "annotation folder")]
    out = [p for p in (path_problem(*args) for args in paths) if p is not None]
    return out + _resource_problems(profile, base, cluster_cpus, cluster_gpus, cluster)


def weight_paths(profile: Profile, base: tuple, archs: Collection[str] | None) -> list[tuple]:
    """(path, keys, what) of every ImageNet checkpoint a run of the profile loads: one path, or one per arch
    the rows train (``archs``, :func:`harness.config.trained_archs`; None: every arch the profile names)."""
    pretrained = profile.backbone.pretrained
    if isinstance(pretrained, dict):
        return [(path, (*base, "backbone", "pretrained", arch), "checkpoint")
                for arch, path in pretrained.items() if archs is None or arch in archs]
    return [(pretrained, (*base, "backbone", "pretrained"), "checkpoint")]


def check_profile(profile: Profile, name: str, *, cluster_cpus: float | None = None,
                  cluster_gpus: float | None = None, cluster: str | None = None,
                  archs: Collection[str] | None = None) -> None:
    """Raise PreflightError (the first of :func:`problems`) when the profile cannot run here."""
    found = problems(profile, name, cluster_cpus=cluster_cpus, cluster_gpus=cluster_gpus, cluster=cluster,
                     archs=archs)
    if found:
        raise found[0].error()


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
