"""Smoke tests of `harness bench`: it runs with tiny settings and its ratios are self-consistent.

No timing assertion: speed is reported by the bench, never asserted.
"""
import json
import math
import os
import subprocess
import sys

import numpy as np
import pytest
import torch

from harness.bench import block_goals, saved_activation_bytes
from harness.cli import main


def test_bench_blocks_json_smoke(tmp_path, capsys):
    study = tmp_path / "s.yaml"
    study.write_text("name: s\nprofiles:\n  laptop:\n    backbone: {arch: tiny}\n"
                     "    data: {format: synth, root: x}\nrows:\n  TSN: {block: tsn}\n"
                     "  TSM: {block: tsm}\n  Ours: {block: vps}\n")
    assert main(["bench", "blocks", "--study", str(study), "--size", "32", "--frames", "2",
                 "--repeats", "1", "--format", "json"]) == 0
    rows = json.loads(capsys.readouterr().out)
    assert [r["row"] for r in rows] == ["TSN", "TSM", "Ours", "TSN (control)"]
    assert rows[3]["block"] == "tsn" and rows[3]["flops_ratio"] == 1.0  # the baseline again: the noise floor
    assert {"row", "time_ratio", "flops_ratio", "median_s", "memory_mb"} <= set(rows[0])
    assert rows[0]["time_ratio"] == rows[0]["flops_ratio"] == 1.0
    assert rows[1]["flops_ratio"] == 1.0  # the shift adds no FLOPs
    assert rows[2]["flops_ratio"] > 1.0 and all(r["median_s"] > 0 for r in rows)


def test_block_goals_judge_vps_against_its_flops_and_tsm_against_1_03():
    rows = [{"row": "TSN", "block": "tsn", "time_ratio": 1.0, "flops_ratio": 1.0},
            {"row": "TSM", "block": "tsm", "time_ratio": 1.031, "flops_ratio": 1.0},
            {"row": "Ours", "block": "vps", "time_ratio": 1.14, "flops_ratio": 1.096},
            {"row": "Ours-1/16", "block": "vps", "time_ratio": 1.11, "flops_ratio": 1.02},
            {"row": "TSN (control)", "block": "tsn", "time_ratio": 0.977, "flops_ratio": 1.0}]
    assert block_goals(rows) == [
        "- noise floor: TSN (control), the baseline timed again, has time ratio 0.977",
        "- TSM: time ratio 1.031, goal <= 1.03 = 1.030: missed by 0.001, within this run's noise floor (0.023)",
        "- Ours: time ratio 1.140, goal <= FLOPs ratio 1.096 + 0.05 = 1.146: met by 0.006, within this run's "
        "noise floor (0.023)",
        "- Ours-1/16: time ratio 1.110, goal <= FLOPs ratio 1.020 + 0.05 = 1.070: missed",
    ]
    no_control = [r for r in rows if "control" not in r["row"]]
    assert block_goals(no_control)[0] == "- TSM: time ratio 1.031, goal <= 1.03 = 1.030: missed"


def test_saved_activation_bytes_counts_what_backward_keeps():
    w = torch.randn(100, 100, requires_grad=True)
    x = torch.randn(10, 100)
    with saved_activation_bytes() as total:
        (x @ w).relu().sum()
    # matmul keeps x (to get w's gradient; w itself is not needed since x needs no gradient),
    # relu keeps its 10 x 100 output: two float32 tensors of 1000 elements
    assert total[0] == 2 * 10 * 100 * 4


def test_bench_data_smoke(tmp_path, capsys):
    study = tmp_path / "s.yaml"
    study.write_text(
        "name: s\nprofiles:\n  laptop:\n    backbone: {arch: tiny, width: 4}\n"
        f"    data: {{format: synth, root: {tmp_path / 'synth'}, frames: 4, size: 16, scale_size: 18,\n"
        "           synth: {videos: 20, frames: 8, size: 32}}\n"
        "    recipe: {batch_size: 4}\nrows:\n  TSN: {block: tsn}\n")
    assert main(["bench", "data", "--study", str(study), "--batches", "2", "--steps", "1", "--formats", "laptop",
                 "--epoch-rounds", "1", "--format", "json"]) == 0
    out = json.loads(capsys.readouterr().out)
    rows = out["laptop"]
    assert [r["what"].split(",")[0] for r in rows] == ["model tsn train step (1 thread(s))"] + ["loader"] * 3
    assert all(r["clips_per_s"] > 0 for r in rows) and rows[0]["ratio_to_model"] == 1.0
    epochs = out["laptop_epoch"]  # the profile has no cache: off against file
    assert [e["what"].split(": ")[1] for e in epochs] == ["off", "file"] and epochs[0]["ratio_to_off"] == 1.0
    assert all(e["same_metrics_as_off"] for e in epochs) and out["formats"] == []


def _tiny_sthv1(root, clips: int = 8, frames: int = 12):
    """A tiny Something-Something v1 layout: frame folders and the three csv files."""
    from PIL import Image

    for i in range(clips):
        (root / str(i)).mkdir(parents=True)
        for f in range(frames):
            Image.fromarray(np.full((24, 40, 3), 10 * f + i, np.uint8)).save(root / str(i) / f"{f + 1:05d}.jpg")
    (root / "something-something-v1-labels.csv").write_text("a\nb\n")
    rows = "".join(f"{i};{'ab'[i % 2]}\n" for i in range(clips))
    (root / "something-something-v1-train.csv").write_text(rows)
    (root / "something-something-v1-validation.csv").write_text(rows)


def test_bench_data_on_a_format_reports_ratios_and_cores_per_gpu(tmp_path, capsys):
    _tiny_sthv1(tmp_path / "v1")
    argv = ["bench", "data", "--formats", "sthv1", "--root", str(tmp_path / "v1"), "--seconds", "0.01",
            "--rounds", "1", "--gpu-clips-per-s", "500"]
    assert main(argv + ["--format", "json"]) == 0
    (r,) = json.loads(capsys.readouterr().out)["formats"]
    assert r["format"] == "sthv1" and r["goal"] == 0.85 and r["workers"] == os.cpu_count()
    raw = r["raw_clips_per_s"]
    assert list(raw) == ["Pillow open + RGB", "simplejpeg (the loader's decoder)"] and min(raw.values()) > 0
    assert r["ratio_w0"] == pytest.approx(r["loader_w0_clips_per_s"] / raw["Pillow open + RGB"])  # one round
    assert r["cores_per_gpu"] == math.ceil(500 / r["loader_w0_clips_per_s"])
    assert main(argv + ["--format", "md"]) == 0
    text = capsys.readouterr().out
    assert "| sthv1 " in text and "goal >= 0.85: " in text and "cores per GPU at 500 clips/s" in text


def test_bench_data_rejects_unknown_formats_and_root_with_several(capsys):
    assert main(["bench", "data", "--formats", "sthv3"]) == 2
    assert "unknown sthv3" in capsys.readouterr().err
    assert main(["bench", "data", "--formats", "sthv1,k400", "--root", "x"]) == 2
    assert "one real format with --root" in capsys.readouterr().err


def test_realsize_writes_the_official_layouts_at_real_sizes(tmp_path, monkeypatch):
    """sthv1 at its real size; k400's layout on a shortened clip (H.264 encodes in-process; VP9 would not
    once decord is loaded, which is why the bench writes sets in a fresh process)."""
    from harness.data import realsize
    from harness.data.formats import read_split
    from harness.data.video import open_entry

    realsize.write_set("sthv1", tmp_path / "v1", clips=2)
    monkeypatch.setitem(realsize.SPECS, "k400", realsize.Spec(64, 48, 10, 25, "short k400"))
    realsize.write_set("k400", tmp_path / "k", clips=2)
    for fmt, root, shape in (("sthv1", tmp_path / "v1", (40, 100, 176, 3)), ("k400", tmp_path / "k", (10, 48, 64, 3))):
        entries = read_split(fmt, root, root, "train").entries
        assert len(entries) == 2
        clip = open_entry(entries[1])
        assert (clip.num_frames, *clip.get(np.arange(1)).shape[1:]) == shape


@pytest.mark.slow
def test_bench_harness_runs_the_same_trials_both_ways(tmp_path):
    """Ray Tune + MLflow and the plain pool finish the same trials with the same results; nothing lands in cwd."""
    study = tmp_path / "s.yaml"
    study.write_text(
        "name: s\nprofiles:\n  laptop:\n    backbone: {arch: tiny, width: 4, depths: [1, 1, 1, 1]}\n"
        f"    data: {{format: synth, root: {tmp_path / 'synth'}, frames: 4, size: 16, scale_size: 16,\n"
        "           synth: {videos: 32, frames: 8, size: 32, seed: 1}}\n"
        "    recipe: {epochs: 3, batch_size: 8, lr: 0.05, schedule: cosine, threads: 1}\n"
        "    resources: {cpu: 1}\nrows:\n  TSN: {block: tsn}\n  TSM: {block: tsm}\n")
    env = {k: v for k, v in os.environ.items() if k not in ("RAY_ADDRESS", "MLFLOW_TRACKING_URI")}
    cwd = tmp_path / "cwd"
    cwd.mkdir()
    r = subprocess.run([sys.executable, "-m", "harness.cli", "bench", "harness", "--study", str(study),
                        "--rows", "TSN,TSM", "--trials", "2", "--epochs", "1", "--format", "json"],
                       cwd=cwd, env=env, capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr[-5000:]
    out = json.loads(r.stdout)
    assert out["trials"] == 2 and out["epochs"] == 1 and out["concurrency"] == min(2, os.cpu_count())
    assert out["finished_plain"] == out["finished_ray"] == 2
    assert out["same_last_top1"] == 2  # same seeds, same numbers with and without Ray
    assert out["wall_ratio"] == pytest.approx(out["ray_wall_s"] / out["plain_wall_s"])
    assert out["overhead_per_trial_s"] == pytest.approx(
        (out["ray_wall_s"] - out["plain_wall_s"]) * out["concurrency"] / 2)
    assert out["ray_wall_s"] >= out["tune_s"] + out["ray_start_s"] + out["mlflow_setup_s"]
    assert list(cwd.iterdir()) == []  # MLflow store and Ray storage went to a temp folder


def test_bench_report_has_the_machine_and_one_section_per_bench(tmp_path):
    (tmp_path / "blocks.md").write_text("| row | time_ratio |\n|--|--|\n| TSN | 1.0 |\n")
    (tmp_path / "harness.md").write_text("wall ratio 1.05\n")
    out = tmp_path / "res" / "bench.md"
    assert main(["bench", "report", str(tmp_path / "blocks.md"), str(tmp_path / "harness.md"),
                 "--out", str(out)]) == 0
    text = out.read_text()
    assert f"- cores: {os.cpu_count()}" in text and f"- torch: {torch.__version__}" in text
    assert "- CPU: " in text and "- commit: " in text and "- date: " in text
    assert text.index("## blocks\n\n| row | time_ratio |") < text.index("## harness\n\nwall ratio 1.05")


def test_bench_harness_rejects_unknown_rows_and_bad_epochs_in_one_line(capsys):
    assert main(["bench", "harness", "--study", "studies/table1.yaml", "--rows", "TSN,Nope"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: studies/table1.yaml: ") and "Nope" in err and "Ours" in err
    assert len(err.strip().splitlines()) == 1
    assert main(["bench", "harness", "--study", "studies/table1.yaml", "--epochs", "0"]) == 2
    assert "epochs" in capsys.readouterr().err
