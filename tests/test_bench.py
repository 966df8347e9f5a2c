"""Smoke tests of `harness bench`: it runs with tiny settings and its ratios are self-consistent.

No timing assertion: speed is reported by the bench, never asserted.
"""
import json

import torch

from harness.bench import saved_activation_bytes
from harness.cli import main


def test_bench_blocks_json_smoke(tmp_path, capsys):
    study = tmp_path / "s.yaml"
    study.write_text("name: s\nprofiles:\n  laptop:\n    backbone: {arch: tiny}\n"
                     "    data: {format: synth, root: x}\nrows:\n  TSN: {block: tsn}\n"
                     "  TSM: {block: tsm}\n  Ours: {block: vps}\n")
    assert main(["bench", "blocks", "--study", str(study), "--size", "32", "--frames", "2",
                 "--repeats", "1", "--format", "json"]) == 0
    rows = json.loads(capsys.readouterr().out)
    assert [r["row"] for r in rows] == ["TSN", "TSM", "Ours"]
    assert {"row", "time_ratio", "flops_ratio", "median_s", "memory_mb"} <= set(rows[0])
    assert rows[0]["time_ratio"] == rows[0]["flops_ratio"] == 1.0
    assert rows[1]["flops_ratio"] == 1.0  # the shift adds no FLOPs
    assert rows[2]["flops_ratio"] > 1.0 and all(r["median_s"] > 0 for r in rows)


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
    assert main(["bench", "data", "--study", str(study), "--batches", "2", "--steps", "1",
                 "--format", "json"]) == 0
    rows = json.loads(capsys.readouterr().out)
    assert [r["what"].split(",")[0] for r in rows] == ["model tsn train step (1 thread(s))"] + ["loader"] * 3
    assert all(r["clips_per_s"] > 0 for r in rows) and rows[0]["ratio_to_model"] == 1.0
