"""Joining a Ray cluster, or starting a local one for the duration of a study."""
from __future__ import annotations

import contextlib
import logging
import os
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import ray

log = logging.getLogger(__name__)


def connect(address: str | None = None, *, num_cpus: int | None = None) -> bool:
    """Join a cluster (``address`` or ``RAY_ADDRESS``) or start a local Ray; True if this call connected.

    A local Ray gets one CPU slot per core, so trials that each ask for one CPU
    run one per core (2 cores -> 2 one-thread trials). No dashboard. A Ray this
    process had already joined is kept (False), unless it is another cluster than
    ``address``: then we stop rather than run the study somewhere else.
    """
    address = address or os.environ.get("RAY_ADDRESS")
    if ray.is_initialized():
        joined = ray.get_runtime_context().gcs_address
        # a ray:// client address names another port than the GCS address; only host:port is comparable
        if address and address != "auto" and "://" not in address and address != joined:
            raise RuntimeError(f"this process is already connected to the Ray cluster at {joined}, "
                               f"not {address}; call ray.shutdown() first")
        return False

    def quiet_train_cleaner() -> None:  # nested, so cloudpickle ships it by value: no import in each worker
        # Ray Train's placement-group cleaner asks the State API every second whether the run's controller
        # lives; without a dashboard (none here, and ray[tune] installs none) it warns each time.
        logging.getLogger("ray.train.v2._internal.execution.controller.placement_group_cleaner").setLevel(
            logging.ERROR)

    job_env = {"worker_process_setup_hook": quiet_train_cleaner}
    if address:
        ray.init(address=address, logging_level=logging.WARNING, runtime_env=job_env)
        log.info("joined Ray cluster at %s: %s", address, ray.cluster_resources())
        return True
    # address="local": a new instance, never one found in /tmp/ray/ray_current_cluster by accident
    ray.init(address="local", num_cpus=num_cpus or os.cpu_count() or 1, include_dashboard=False,
             logging_level=logging.WARNING, runtime_env=job_env)
    return True


def shutdown() -> None:
    ray.shutdown()


@contextlib.contextmanager
def session(address: str | None = None, *, num_cpus: int | None = None) -> Iterator[None]:
    """:func:`connect` for the block, then disconnect what it connected (a joined cluster keeps running)."""
    owned = connect(address, num_cpus=num_cpus)
    try:
        yield
    finally:
        if owned:
            shutdown()


def nodes() -> list[dict[str, object]]:
    """The cluster's live nodes: id, address, CPUs and GPUs."""
    return [{"id": n["NodeID"], "address": n.get("NodeManagerAddress", ""),
             "cpus": n.get("Resources", {}).get("CPU", 0), "gpus": n.get("Resources", {}).get("GPU", 0)}
            for n in ray.nodes() if n.get("Alive")]


def on_every_node(fn: Callable[[], Any], timeout: float) -> dict[str, Any]:
    """``fn()`` in one zero-CPU task on every live node, in a worker process like a trial's (same job, same
    import path); {node: what it returned}. Empty when the answers do not come within ``timeout`` seconds."""
    from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

    task = ray.remote(num_cpus=0)(fn)
    refs = {f"{n['address']}/{str(n['id'])[:8]}":
            task.options(scheduling_strategy=NodeAffinitySchedulingStrategy(str(n["id"]), soft=False)).remote()
            for n in nodes()}
    try:
        return dict(zip(refs, ray.get(list(refs.values()), timeout=timeout)))
    except ray.exceptions.GetTimeoutError:
        log.warning("no answer from every Ray node within %.0f s", timeout)
        return {}


def seen_on_every_node(address: str, path: str, timeout: float = 60) -> dict[str, bool]:
    """Join the cluster at ``address`` and ask every live node whether it sees ``path``: {node: seen}.

    Used with a marker file written just before (:func:`harness.preflight.check_storage`): a node that
    answers True sees the driver's folder itself, not a local folder of the same name. Empty when not
    every node answered within ``timeout``. Leaves a cluster it joined (never stops it).
    """
    def sees() -> bool:  # nested: cloudpickle ships it by value, no import of this module on the nodes
        return os.path.exists(path)

    with session(address):
        return {node: bool(seen) for node, seen in on_every_node(sees, timeout).items()}


def cluster_resources(address: str) -> tuple[float, float]:
    """CPUs and GPUs of the Ray cluster at ``address``, from a short connection made before any run or trial.

    A profile that asks for GPUs of a cluster that has none then stops with exit 2
    (:func:`harness.preflight.problems`) instead of queueing trials that never start. Joins, reads,
    leaves; a Ray already joined is read as is.
    """
    if ray.is_initialized():
        have = ray.cluster_resources()
    else:
        ray.init(address=address, logging_level=logging.WARNING)
        try:
            have = ray.cluster_resources()
        finally:
            ray.shutdown()
    return float(have.get("CPU", 0)), float(have.get("GPU", 0))


# ----------------------------------------------------------------------------- probing a cluster (harness doctor)


@dataclass
class NodeProbe:
    """What one node of a cluster told a probe task: its resources, host, torch build, the paths it sees."""

    node_id: str
    address: str
    cpus: float
    gpus: float
    host: str = "?"
    torch: str | None = None
    cuda: str | None = None
    seen: dict[str, bool] = field(default_factory=dict)


def node_probe(paths: list[str]) -> dict[str, Any]:
    """Runs on one node (a Ray task): its host name, its torch build, which of ``paths`` it sees."""
    import socket

    out: dict[str, Any] = {"host": socket.gethostname(), "seen": {p: os.path.exists(p) for p in paths}}
    try:
        import torch

        out.update(torch=torch.__version__, cuda=torch.version.cuda)
    except ImportError:
        out.update(torch=None, cuda=None)
    return out


def _probe_nodes(paths: list[str], timeout: float = 120) -> list[NodeProbe]:
    """One zero-CPU task pinned to each alive node, so busy nodes still answer."""
    from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

    nodes = [n for n in ray.nodes() if n.get("Alive")]
    task = ray.remote(num_cpus=0)(node_probe)
    refs = [task.options(scheduling_strategy=NodeAffinitySchedulingStrategy(n["NodeID"], soft=False)).remote(paths)
            for n in nodes]
    reports = []
    for n, answer in zip(nodes, ray.get(refs, timeout=timeout)):
        res = n.get("Resources", {})
        reports.append(NodeProbe(n["NodeID"], n.get("NodeManagerAddress", "?"), float(res.get("CPU", 0)),
                                  float(res.get("GPU", 0)), answer["host"], answer["torch"], answer["cuda"],
                                  answer["seen"]))
    return reports


@dataclass(frozen=True)
class ClusterProbe:
    version: str
    started_s: float  # to join or start Ray
    cpus: float
    gpus: float
    nodes: list[NodeProbe]


def probe_cluster(address: str | None, paths: list[str], *, num_cpus: int | None = None) -> ClusterProbe:
    """Join ``address`` (or start a local Ray), ask every node what it has and sees, and leave."""
    t0 = time.perf_counter()
    if address:
        ray.init(address=address, logging_level=logging.WARNING)
    else:
        ray.init(address="local", num_cpus=num_cpus, include_dashboard=False, logging_level=logging.WARNING)
    started = time.perf_counter() - t0
    try:
        nodes = _probe_nodes(paths)
        have = ray.cluster_resources()
    finally:
        ray.shutdown()
    return ClusterProbe(ray.__version__, started, float(have.get("CPU", 0)), float(have.get("GPU", 0)), nodes)
