"""harness.cost against numbers worked out by hand, and harness.estimate on Table 1's paper profile (no data here).

Table 1, paper profile (studies/table1.yaml): 10 rows x 1 seed, 50 epochs, batch 64, 1 GPU a trial, 8x112,
one test view; Something-Something v1 published split 86,017 train / 11,522 val. At 100 clips/s per GPU:

    steps per epoch    86,017 // 64 = 1,344 (the last 1 clip dropped)      -> 67,200 a trial, 672,000 in all
    train per epoch    1,344 x 64 = 86,016 clips / 100 clips/s = 860.16 s
    val per epoch      11,522 x 1 view x 1/3 (forward only) / 100 = 38.40667 s
    a trial            50 x 898.56667 s = 44,928.333 s = 12.480093 GPU-hours
    the study          10 x 12.480093 = 124.80093 GPU-hours
    on 8 GPUs          8 at once, ceil(10 / 8) = 2 waves, wall 2 x 44,928.333 s = 89,856.667 s (24.96 h)
"""
from __future__ import annotations

import json

import pytest

from harness import cost, estimate
from harness.config import load_study
from harness.study.grid import plan
from harness.study.plan import resolve_profile

TABLE1 = [cost.TrialPlan(f"table1/paper/row{i}/seed0", 50, 64, 86_017, 11_522, 1, 100.0) for i in range(10)]


def test_table1_on_8_gpus_by_hand():
    c = cost.study_cost(TABLE1, cost.Slot(gpu=1, cpu=8), cost.Cluster(gpus=8, source="--gpus 8"))
    t = c.trials[0]
    assert (t.steps_per_epoch, t.steps, t.train_clips, t.eval_clips) == (1_344, 67_200, 4_300_800, 576_100)
    assert t.seconds == pytest.approx(44_928.333333, abs=1e-6)
    assert t.device_hours == pytest.approx(12.480092593, abs=1e-9)
    assert (c.concurrent, c.waves, c.steps) == (8, 2, 672_000)
    assert c.device_hours == pytest.approx(124.80092593, abs=1e-8)
    assert c.wall_seconds == pytest.approx(89_856.666667, abs=1e-6)


def test_table1_data_parallel_two_workers_by_hand():
    """workers: 2 (1 GPU each): (86,017 // 2) // (64 // 2) = 1,344 steps; training twice as fast, validation on
    rank 0 alone: 50 x (430.08 + 38.40667) = 23,424.333 s, 2 GPUs booked -> 13.013519 GPU-hours a trial;
    8 GPUs hold 4 trials: ceil(10 / 4) = 3 waves, wall 3 x 23,424.333 s."""
    c = cost.study_cost(TABLE1, cost.Slot(gpu=1, cpu=8, workers=2), cost.Cluster(gpus=8))
    assert c.trials[0].steps_per_epoch == 1_344
    assert c.trials[0].seconds == pytest.approx(23_424.333333, abs=1e-6)
    assert (c.concurrent, c.waves) == (4, 3)
    assert c.device_hours == pytest.approx(130.13518519, abs=1e-8)
    assert c.wall_seconds == pytest.approx(70_273.0, abs=1e-6)


def test_concurrency_takes_the_tightest_of_gpus_cpus_and_max_concurrent():
    slot = cost.Slot(gpu=1, cpu=8)
    assert cost.concurrency(slot, cost.Cluster(gpus=8, cpus=32)) == 4  # 32 CPUs / 8 a trial
    assert cost.concurrency(slot, cost.Cluster(gpus=8, cpus=128, max_concurrent=3)) == 3
    assert cost.concurrency(cost.Slot(gpu=0.5, cpu=1), cost.Cluster(gpus=2)) == 4  # half a GPU each
    assert cost.concurrency(slot, cost.Cluster(gpus=0)) == 0  # does not fit
    assert cost.concurrency(slot, cost.Cluster(cpus=64)) is None  # GPUs unknown: no placement
    assert cost.concurrency(cost.Slot(cpu=1), cost.Cluster(cpus=2)) == 2  # laptop: one trial per core


def test_steps_per_epoch_follows_the_loader():
    assert cost.steps_per_epoch(86_017, 64) == 1_344  # drop_last
    assert cost.steps_per_epoch(86_017, 64, workers=4) == 1_344  # 21,504 clips a rank // 16 a step: the same
    assert cost.steps_per_epoch(10, 64) == 1  # a split smaller than a batch keeps its one batch
    assert cost.steps_per_epoch(0, 64) == 0


def test_makespan_starts_each_trial_when_a_slot_frees():
    assert cost.makespan([10, 10, 10], 2) == 20
    assert cost.makespan([30, 10, 10, 10], 2) == 30  # the three short ones share the second slot
    assert cost.makespan([5], 8) == 5


def test_no_rate_gives_steps_but_no_hours():
    plans = [cost.TrialPlan("a", 2, 4, 10, 3)]
    c = cost.study_cost(plans, cost.Slot(cpu=1), cost.Cluster(cpus=2))
    assert (c.steps, c.device_hours, c.wall_seconds) == (4, None, None)
    assert "hours: no throughput" in cost.format_cost(c)


def test_parse_bench_markdown_and_json():
    md = ("Forward+backward step, 8x112, batch 4, cuda (H100, 16 threads, torch 2.13.0); median ...\n\n"
          "| row | block | median_s | iqr_s | time_ratio |\n|:--|:--|--:|--:|--:|\n"
          "| TSN | tsn | 0.02 | 0.001 | 1 |\n| Ours | vps | 0.025 | 0.001 | 1.25 |\n"
          "| TSN (control) | tsn | 0.021 | 0.001 | 1.05 |\n\n- noise floor: ...\n")
    got = cost.parse_bench(md)
    assert (got.batch, got.device, got.frames, got.size) == (4, "cuda", 8, 112)
    assert got.rates == pytest.approx({"TSN": 200.0, "Ours": 160.0})
    js = cost.parse_bench(json.dumps([{"row": "TSN", "median_s": 0.5}, {"row": "TSN (control)", "median_s": 0.4}]))
    assert (js.rates, js.batch) == ({"TSN": 2.0}, None)
    with pytest.raises(ValueError, match="no `harness bench blocks` table"):
        cost.parse_bench("# nothing here\n")


def test_format_cost_table1():
    c = cost.study_cost(TABLE1, cost.Slot(gpu=1, cpu=8), cost.Cluster(gpus=8, source="--gpus 8"), ["a note"])
    text = cost.format_cost(c)
    assert text.splitlines()[:3] == [
        "cost: 10 trials (1 GPU each) on 8 GPUs (--gpus 8): 8 at once, 2 waves",
        "  steps: 672,000 optimizer steps in all; 67,200 per trial (1,344 per epoch)",
        "  GPU-hours: 124.8; 12.5 per trial (12.5 h); wall time 25.0 h"]
    assert "  a note" in text


def _table1_paper():
    study = load_study("studies/table1.yaml")
    profile = resolve_profile(study, "paper")
    return study, profile, plan(study, "paper", profile).trials


def test_dry_run_cost_of_table1_paper_profile_without_data_or_gpus(monkeypatch):
    """The profile's throughput (100 clips/s), --gpus 8, the published sthv1 sizes: the numbers of the docstring."""
    for var in ("STHV1_ROOT", "STHV1_ANNOTATIONS", "IMAGENET_R50"):
        monkeypatch.delenv(var, raising=False)
    study, profile, trials = _table1_paper()
    cluster = estimate.cluster_for(0.0, 2.0, override_gpus=8, max_concurrent=None, where=None)
    text = estimate.dry_run_text(study, profile, trials, cluster)
    assert "cost: 10 trials (1 GPU each) on 8 GPUs (--gpus 8): 8 at once, 2 waves" in text
    assert "GPU-hours: 124.8; 12.5 per trial (12.5 h); wall time 25.0 h" in text
    assert "split sizes: sthv1 86,017 train / 11,522 val (nominal: the published sizes, the data is not here)" in text
    assert "throughput: 100 clips/s per device for the first row (the profile's throughput)" in text
    # This machine: no GPU, so no placement, but the steps and GPU-hours stand.
    here = estimate.dry_run_text(study, profile, trials, estimate.cluster_for(
        0.0, 2.0, override_gpus=None, max_concurrent=None, where=None), throughput="50")
    assert "on 0 GPUs (this machine): a trial does not fit; pass --gpus N" in here
    assert "GPU-hours: 249.6" in here


def test_dry_run_rates_from_a_bench_file_per_row(tmp_path):
    study, profile, trials = _table1_paper()
    rows = [{"row": r, "median_s": 0.08 if r == "GST-R101" else 0.04} for r in study.rows]  # batch 1 in JSON
    bench = tmp_path / "bench.json"
    bench.write_text(json.dumps(rows))
    result = estimate.study_cost(study, profile, trials, cost.Cluster(gpus=8), throughput=str(bench))
    by_row = {t.key.split("/")[2]: t for t in result.trials}
    assert by_row["GST-R101"].seconds == pytest.approx(2 * by_row["TSN"].seconds)
    assert any("caveat: the bench stepped an unstated batch" in n for n in result.notes)


def test_a_throughput_that_is_neither_a_number_nor_a_file_says_so():
    study, profile, trials = _table1_paper()
    with pytest.raises(ValueError, match="--throughput no-such.md: neither a positive number of clips/s nor a bench"):
        estimate.study_cost(study, profile, trials, cost.Cluster(gpus=8), throughput="no-such.md")


def test_split_sizes_of_the_synth_set_follow_its_config():
    study = load_study("studies/table1.yaml")
    assert estimate.split_sizes(study.profiles["laptop"].data) == (750, 250, "the synth config")
