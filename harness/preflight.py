"""Checks a study needs before anything runs: paths exist, trials fit the cluster.

The schema (``harness.config``) checks what a file says; these check what it
points at, so that a typo fails in a second, before Ray, MLflow or a results
file is touched. Each failure names the key to fix.
"""
from __future__ import annotations

import errno
import logging
import os
import tempfile
import uuid
from collections.abc import Collection, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from .config import ConfigError, Profile
from .files import WORK

log = logging.getLogger(__name__)


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


STORAGE_FIX = ("pass --storage a folder that every node mounts at the same path (NFS), or an object store URI "
               "Ray supports (--storage s3://BUCKET/PATH or gs://BUCKET/PATH)")


def storage_folder(storage: str | None, study: str) -> Path | None:
    """The local folder Ray's experiments of ``study`` go under: ``--storage`` (a path or ``file://``) or
    ``work/ray/<study>`` as :func:`harness.study.engine.new_experiment` places them; None for a remote URI."""
    if storage is None:
        return (WORK / "ray" / study).resolve()
    if "://" in storage and not storage.startswith("file://"):
        return None
    return Path(storage.removeprefix("file://")).expanduser().resolve()


def storage_problem(folder: str, seen: Mapping[str, bool], *, default: bool) -> Problem | None:
    """Why Ray's trial storage ``folder`` does not work on this cluster: ``seen`` says, for each live node,
    whether it sees a marker file the driver wrote there (:func:`check_storage`). One node: always fine."""
    if len(seen) < 2 or all(seen.values()):
        return None
    blind = sorted(node for node, ok in seen.items() if not ok)
    what = f"Ray's trial storage {folder}" + (" (the default, under work/ray)" if default else " (--storage)")
    return Problem(("--storage",), f"{what} is not seen by {len(blind)} of the {len(seen)} nodes of the Ray "
                                   f"cluster ({', '.join(blind)}), so their trials could not checkpoint or "
                                   f"resume; {STORAGE_FIX}", "resources")


def check_storage(storage: str | None, study: str, address: str) -> None:
    """On a Ray cluster of more than one node, every node must see Ray's trial storage (checkpoints, resume):
    a marker file written there now is looked for on every node (:func:`harness.tune.session.seen_on_every_node`);
    raise PreflightError when a node does not see it. An object store URI is not checked (every node reaches it
    alike); a cluster that does not answer is logged and not checked."""
    folder = storage_folder(storage, study)
    if folder is None:
        return
    folder.mkdir(parents=True, exist_ok=True)
    marker = folder / f".harness-storage-{uuid.uuid4().hex[:12]}"
    marker.write_text("harness run: shared-storage probe; safe to delete\n")
    try:
        from harness.tune.session import seen_on_every_node

        seen = seen_on_every_node(address, str(marker))
    finally:
        marker.unlink(missing_ok=True)
    if not seen:
        log.warning("could not ask every Ray node whether it sees %s; shared storage not checked", folder)
        return
    problem = storage_problem(str(folder), seen, default=storage is None)
    if problem is not None:
        raise problem.error()
    if len(seen) > 1:
        log.info("Ray's trial storage %s: seen by all %d nodes", folder, len(seen))


def local_resources() -> tuple[float, float]:
    """CPUs and GPUs of this machine, for a run without --address."""
    gpus = 0
    try:
        import torch

        gpus = torch.cuda.device_count()
    except ImportError:
        pass
    return float(len(os.sched_getaffinity(0))), float(gpus)
