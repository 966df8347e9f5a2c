"""Data-parallel trials: a study row trained by Ray Train over 2 CPU workers (gloo), tracked like any trial.

The end-to-end test starts a local Ray of exactly 2 CPUs: the 2 workers take
one each, so it also shows that the Tune trial driving them and Ray Train's
controller hold no CPU slot. The fast tests cover the pieces: how a rank's
share of an epoch is cut, and the resource checks.
"""
from __future__ import annotations

import pytest
import yaml
from conftest import study_runs, write_study

from harness.config import Profile
from harness.preflight import PreflightError, check_profile
from harness.train import RankShard

KEY = "tiny/laptop/Ours/seed0"


def ddp_study(folder, root, *, workers: int = 2):
    """The tiny study (conftest) with one row, VPS (aux losses through DDP), 1 epoch, ``workers`` CPU workers."""
    path = write_study(folder, root, epochs=1, seeds=1, rows={"Ours": "vps"})
    study = yaml.safe_load(path.read_text())
    study["profiles"]["laptop"]["resources"] = {"cpu": 1, "workers": workers}
    path.write_text(yaml.safe_dump(study, sort_keys=False))
    return path


# ----------------------------------------------------------------------------- fast


def test_rank_shards_are_disjoint_equal_and_make_up_the_global_batches():
    from harness.data.dataset import SeededSampler

    world, per_rank, epoch = 2, 2, 3  # global batch 4
    shards = [RankShard(SeededSampler(11, seed=5, shuffle=True), r, world) for r in range(world)]  # one per rank
    one = SeededSampler(11, seed=5, shuffle=True)  # the same order on one process
    for sampler in (*shards, one):
        sampler.set_epoch(epoch)
    items, full = [list(s) for s in shards], list(one)
    assert [len(s) for s in shards] == [5, 5] and [len(i) for i in items] == [5, 5]  # the 11th clip skips
    assert not set(items[0]) & set(items[1]) and set(items[0]) | set(items[1]) <= set(full)
    assert full != list(SeededSampler(11, seed=5, shuffle=True))  # epoch 3 is not epoch 0: set_epoch got through
    for k in range(2):  # step k of both ranks together is step k of one process with the global batch
        step = items[0][k * per_rank:(k + 1) * per_rank] + items[1][k * per_rank:(k + 1) * per_rank]
        assert sorted(step) == sorted(full[k * 4:(k + 1) * 4])


def profile(**resources) -> Profile:
    return Profile.model_validate({
        "backbone": {"arch": "tiny", "width": 4}, "data": {"format": "synth", "root": "/unused", "frames": 4},
        "recipe": {"batch_size": 8}, "resources": resources})


def test_preflight_counts_every_worker_of_a_trial():
    check_profile(profile(cpu=1, workers=2), "laptop", cluster_cpus=2)
    with pytest.raises(PreflightError, match=r"4 CPUs \(2 workers\) but the cluster has 2") as e:
        check_profile(profile(cpu=2, workers=2), "laptop", cluster_cpus=2)
    assert e.value.keys == ("profiles", "laptop", "resources", "cpu")
    with pytest.raises(PreflightError, match=r"2 GPUs \(2 workers\)"):
        check_profile(profile(cpu=1, gpu=1, workers=2), "laptop", cluster_cpus=8, cluster_gpus=1)


def test_preflight_refuses_a_global_batch_the_workers_cannot_split():
    with pytest.raises(PreflightError, match="3 workers cannot split recipe.batch_size 8") as e:
        check_profile(profile(cpu=1, workers=3), "laptop", cluster_cpus=8)
    assert e.value.keys == ("profiles", "laptop", "resources", "workers")


def test_workers_must_be_at_least_one():
    with pytest.raises(ValueError, match="workers"):
        profile(cpu=1, workers=0)


# ----------------------------------------------------------------------------- fit under a process group


def _fit_on_rank(rank: int, world: int, init_file: str, config: dict, out: str, results) -> None:
    """One rank of a 2-process gloo group, as torchrun or Ray Train would start it."""
    import torch.distributed as dist

    from harness.config import TrainConfig
    from harness.train import fit

    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world)
    try:
        folders = []
        result = fit(TrainConfig.model_validate(config), f"{out}/rank{rank}",
                     report=lambda metrics, folder: folders.append(folder is not None))
        results.put((rank, result.history, result.fusion_matrices, folders))
    finally:
        dist.destroy_process_group()


@pytest.mark.slow
def test_fit_under_a_process_group_trains_one_model_and_only_rank0_writes(tmp_path, synth_root):
    import multiprocessing as mp

    from harness.config import load_study
    from harness.data.synth import ensure_synth
    from harness.study.grid import plan
    from harness.study.plan import resolve_profile

    study = load_study(write_study(tmp_path, synth_root, epochs=2, seeds=1, rows={"Ours": "vps"}))
    cfg = plan(study, "laptop", resolve_profile(study, "laptop")).trials[0].config
    ensure_synth(cfg.data)  # before the ranks start, so they do not race to write it
    ctx = mp.get_context("spawn")
    results = ctx.Queue()
    ranks = [ctx.Process(target=_fit_on_rank, args=(r, 2, str(tmp_path / "rendezvous"),
                                                     cfg.model_dump(mode="json"), str(tmp_path / "out"), results))
             for r in range(2)]
    for p in ranks:
        p.start()
    got = dict((rank, rest) for rank, *rest in (results.get(timeout=600) for _ in ranks))
    for p in ranks:
        p.join(60)
        assert p.exitcode == 0
    (history0, fusion0, reported0), (history1, fusion1, reported1) = got[0], got[1]
    assert [m["epoch"] for m in history0] == [1, 2]
    for a, b in zip(history0, history1):  # the same epoch numbers on both ranks (throughput aside)
        assert {k: v for k, v in a.items() if k != "clips_per_s"} == {k: v for k, v in b.items() if k != "clips_per_s"}
    assert fusion0 and fusion0 == fusion1  # the fusion weights: one model on both ranks, each fed other clips
    assert reported0 == [True, True] and reported1 == [False, False]  # a checkpoint folder from rank 0 only
    assert (tmp_path / "out" / "rank0" / "checkpoints" / "last.pt").is_file()
    assert (tmp_path / "out" / "rank0" / "result.json").is_file()
    assert not list((tmp_path / "out" / "rank1").rglob("*.*"))  # rank 1 wrote nothing


# ----------------------------------------------------------------------------- end to end


@pytest.fixture
def two_cpu_ray():
    from harness.tune import session

    assert session.connect(num_cpus=2), "a Ray was already running in this process"
    try:
        yield
    finally:
        session.shutdown()


@pytest.mark.slow
def test_study_row_trains_data_parallel_on_two_cpu_workers(tmp_path, synth_root, monkeypatch, two_cpu_ray):
    from harness.cli import main

    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    ddp_study(tmp_path, synth_root)
    assert main(["run", "tiny.yaml"]) == 0

    t, parents, children = study_runs(tmp_path)
    assert len(parents) == 1 and parents[0].status == "FINISHED"
    run = children[KEY]
    assert run.status == "FINISHED"
    assert run.tags["harness.backend"] == "gloo"
    assert run.tags["harness.world_size"] == "2"
    history = {m: [(x.step, x.value) for x in t.client.get_metric_history(run.run_id, m)]
               for m in ("epoch", "world_size", "val_top1", "train_loss")}
    assert history["epoch"] == [(1, 1.0)] and history["world_size"] == [(1, 2.0)]
    assert len(history["val_top1"]) == 1 and 0.0 <= history["val_top1"][0][1] <= 100.0
    assert history["train_loss"][0][1] > 0.0
    assert run.metrics["epochs_done"] == 1
    assert run.metrics["best_top1"] == history["val_top1"][0][1]
    # rank 0's checkpoint went to Ray Train's run under the experiment, one run for the one trial
    checkpoints = list((tmp_path / "work" / "ray" / "tiny").glob("*/ddp/Ours-seed0_*/checkpoint_*/last.pt"))
    assert len(checkpoints) == 1, checkpoints
