"""Scale-out: a study on an existing 2-node Ray cluster, and the real model data-parallel over 2 workers.

Both use one local ``ray.cluster_utils.Cluster`` (a head and a worker node with
one CPU each), so trials that each ask for one CPU must land on both nodes.
"""
from __future__ import annotations

from pathlib import Path

import pytest
from conftest import tiny_study_text


@pytest.fixture(scope="module")
def cluster():
    import ray
    from ray.cluster_utils import Cluster

    c = Cluster(initialize_head=True, head_node_args={"num_cpus": 1})
    c.add_node(num_cpus=1)
    c.wait_for_nodes()
    try:
        yield c
    finally:
        ray.shutdown()
        c.shutdown()


@pytest.mark.slow
def test_study_trials_land_on_both_nodes_of_a_cluster(cluster, tmp_path, monkeypatch):
    from harness.cli import main
    from harness.tracking import Tracker

    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    Path("spread.yaml").write_text(tiny_study_text(tmp_path / "synth", name="spread", seeds=1))
    assert main(["run", "spread.yaml", "--address", cluster.address]) == 0
    t = Tracker(f"sqlite:///{tmp_path / 'work' / 'mlflow.db'}")
    parent = t.latest_parent("spread", "laptop")
    children = t.children(parent.run_id)
    assert len(children) == 2 and all(r.status == "FINISHED" for r in children.values())
    nodes = {r.tags["harness.node_id"] for r in children.values()}
    cluster_nodes = {n.node_id for n in cluster.list_all_nodes()}
    assert nodes == cluster_nodes and len(nodes) == 2, (nodes, cluster_nodes)


@pytest.mark.slow
def test_real_model_trains_data_parallel_on_two_cpu_workers(cluster, tmp_path):
    import ray

    from harness.config import TrainConfig
    from harness.tune.ddp import ddp_smoke

    if not ray.is_initialized():
        ray.init(address=cluster.address)
    cfg = TrainConfig.model_validate({
        "backbone": {"arch": "tiny", "width": 4}, "row": {"block": "vps", "proportion": 0.25},
        "data": {"format": "synth", "root": str(tmp_path / "unused"), "frames": 4, "size": 16},
        "recipe": {"batch_size": 4, "lr": 0.1, "threads": 1}})
    out = ddp_smoke(cfg.model_dump(mode="json"), num_classes=10, workers=2, steps=2, storage=tmp_path / "ray")
    assert out["world_size"] == 2 and out["backend"] == "gloo"
    assert len(out["losses"]) == 2
    # after DDP steps every rank holds the same parameters, although each saw different data
    first, second = out["checksums"]
    assert first == pytest.approx(second, rel=1e-9)
