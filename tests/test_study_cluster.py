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

    ray.shutdown()  # a Ray joined earlier in this process would take the trials elsewhere
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
    from harness.config import TrainConfig
    from harness.tune.ddp import ddp_smoke
    from harness.tune.session import session

    cfg = TrainConfig.model_validate({
        "backbone": {"arch": "tiny", "width": 4}, "row": {"block": "vps", "proportion": 0.25},
        "data": {"format": "synth", "root": str(tmp_path / "unused"), "frames": 4, "size": 16},
        "recipe": {"batch_size": 4, "lr": 0.1, "threads": 1}})
    with session(cluster.address):
        out = ddp_smoke(cfg.model_dump(mode="json"), num_classes=10, workers=2, steps=2, storage=tmp_path / "ray")
    assert out["world_size"] == 2 and out["backend"] == "gloo"
    assert len(out["losses"]) == 2
    # after DDP steps every rank holds the same parameters, although each saw different data
    first, second = out["checksums"]
    assert first == pytest.approx(second, rel=1e-9)


@pytest.mark.slow
def test_study_on_two_nodes_with_storage_outside_work_survives_a_killed_driver(cluster, tmp_path):
    """A driver joined to the 2-node cluster with ``--storage`` outside ``work/`` (a folder both "nodes" see: they
    share this machine) is SIGKILLed at its first epoch line and resumed: one child run per trial, every epoch
    once, the Tune experiment under the storage, and ``harness tables`` rebuilds the table from MLflow."""
    import uuid
    from collections import Counter

    import pandas as pd
    from conftest import EPOCH_LINE, Driver, clean_env, harness, kill_marked, kill_on, study_runs, write_study

    epochs = 2
    folder, storage = tmp_path / "project", tmp_path / "shared" / "ray"
    folder.mkdir()
    write_study(folder, tmp_path / "synth", epochs=epochs, seeds=2)
    args = ["run", "tiny.yaml", "--address", cluster.address, "--storage", str(storage)]
    marker = uuid.uuid4().hex
    env = clean_env(HARNESS_TEST_MARKER=marker)  # the driver only: the cluster's own processes are not marked
    try:
        driver = Driver(args, folder, env, folder / "driver-0.log", hold=(EPOCH_LINE, 1))
        assert kill_on(driver, marker) == "trials", f"see {driver.log}"
        r = harness([*args, "--resume"], folder, env=env)
        assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-3000:]
    finally:
        kill_marked(marker)
    assert not (folder / "work" / "ray").exists(), "Ray's trials went to --storage, not work/ray"
    [experiment] = [p for p in storage.iterdir() if p.is_dir()]  # the resume restored the same experiment
    assert experiment.name.startswith("laptop-") and list(experiment.glob("*/checkpoint_*"))

    t, parents, _ = study_runs(folder)
    assert len(parents) == 1 and parents[0].status == "FINISHED"
    assert parents[0].tags["harness.ray_experiment"] == str(experiment)
    runs = [r for r in t.runs("tiny", deleted=True) if "harness.trial_key" in r.tags]
    keys = {f"tiny/laptop/{row}/seed{s}" for row in ("TSN", "TSM") for s in (0, 1)}
    assert Counter(r.tags["harness.trial_key"] for r in runs) == Counter(keys), "one child run per trial"
    for run in runs:
        assert run.status == "FINISHED", run.tags["harness.trial_key"]
        steps = [step for step, _ in t.metric_history(run.run_id, "val_top1")]
        assert sorted(steps) == list(range(1, epochs + 1)), (run.tags["harness.trial_key"], steps)
    assert {r.tags["harness.node_id"] for r in runs} <= {n.node_id for n in cluster.list_all_nodes()}

    written = folder / "results" / "tiny.csv"
    kept = pd.read_csv(written).drop(columns=["date"])
    for p in (folder / "results").iterdir():
        p.unlink()
    r = harness(["tables", "tiny.yaml"], folder)
    assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-3000:]
    assert (folder / "results" / "tiny.md").exists()
    pd.testing.assert_frame_equal(pd.read_csv(written).drop(columns=["date"]), kept)  # from MLflow alone
