"""Joining a Ray cluster, or starting a local one for the duration of a study."""
from __future__ import annotations

import contextlib
import logging
import os
from collections.abc import Callable, Iterator
from typing import Any

import ray

log = logging.getLogger(__name__)


def connect(address: str | None = None, *, num_cpus: int | None = None) -> bool:
    """Join a cluster (``address`` or ``RAY_ADDRESS``) or start a local Ray; True if we started it.

    A local Ray gets one CPU slot per core, so trials that each ask for one CPU
    run one per core (2 cores -> 2 one-thread trials). No dashboard.
    """
    if ray.is_initialized():
        return False
    address = address or os.environ.get("RAY_ADDRESS")

    def quiet_train_cleaner() -> None:  # nested, so cloudpickle ships it by value: no import in each worker
        # Ray Train's placement-group cleaner asks the State API every second whether the run's controller
        # lives; without a dashboard (none here, and ray[tune] installs none) it warns each time.
        logging.getLogger("ray.train.v2._internal.execution.controller.placement_group_cleaner").setLevel(
            logging.ERROR)

    job_env = {"worker_process_setup_hook": quiet_train_cleaner}
    if address:
        ray.init(address=address, logging_level=logging.WARNING, runtime_env=job_env)
        log.info("joined Ray cluster at %s: %s", address, ray.cluster_resources())
        return False
    # address="local": a new instance, never one found in /tmp/ray/ray_current_cluster by accident
    ray.init(address="local", num_cpus=num_cpus or os.cpu_count() or 1, include_dashboard=False,
             logging_level=logging.WARNING, runtime_env=job_env)
    return True


def shutdown() -> None:
    ray.shutdown()


@contextlib.contextmanager
def session(address: str | None = None, *, num_cpus: int | None = None) -> Iterator[None]:
    """:func:`connect` for the block; shuts down only a Ray it started itself (never a user's cluster)."""
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
            task.options(scheduling_strategy=NodeAffinitySchedulingStrategy(n["id"], soft=False)).remote()
            for n in nodes()}
    try:
        return dict(zip(refs, ray.get(list(refs.values()), timeout=timeout)))
    except ray.exceptions.GetTimeoutError:
        log.warning("no answer from every Ray node within %.0f s", timeout)
        return {}
