"""``make gpu-check`` cannot rot: its CPU-safe parts run here (``--device cpu --tiny``), its refusal without CUDA
is checked, and its bench section is read back by the cost estimate as a bench report."""
from __future__ import annotations

import pytest

from harness import cost, gpucheck


def test_tiny_cpu_run_trains_and_evaluates_every_table1_row(tmp_path, capsys):
    out = tmp_path / "gpu-check.md"
    assert gpucheck.main(["--device", "cpu", "--tiny", "--steps", "2", "--skip", "ddp", "--out", str(out)]) == 0
    text = out.read_text()
    lines = text.splitlines()
    assert lines[0] == "# GPU check (tiny, CPU-safe parts)"
    assert lines[2].startswith("- device: cpu: ") and "- verdict: all passed" in lines
    rows = [ln for ln in lines if ln.startswith("| ") and ln.endswith(" | pass |")]
    assert [r.split(" | ")[0][2:] for r in rows] == ["TSN", "TSM", "GST", "GST-R101", "RF-S", "RF-L",
                                                     "RF-L-Inception", "RF-L-Inception-T", "Ours", "Ours-1/16"]
    assert all(" | yes | yes | yes | yes | " in r for r in rows)  # grads finite, non-zero, weights moved, eval 2x3
    assert "## ddp" not in text and "## bench" not in text  # left out here


def test_ddp_gloo_over_two_cpu_ranks_keeps_the_ranks_identical(tmp_path):
    setup = gpucheck.setup_for("studies/table1.yaml", device="cpu", tiny=True)
    cfg = gpucheck.row_config(setup, "Ours").model_dump(mode="json")
    out = gpucheck.run_ddp(cfg, setup.study.num_classes, backend="gloo", world=2, device="cpu", steps=2)
    assert out["ok"], out["detail"]
    assert "parameters identical on the 2 rank(s)" in out["detail"]


def test_ddp_verdict_wants_every_rank_and_one_checksum():
    same = [{"rank": r, "losses": [5.1, 5.0], "checksums": [1.5, 1.5]} for r in range(2)]
    assert gpucheck.ddp_verdict(same, 2)["ok"]
    differ = [{"rank": r, "losses": [5.1], "checksums": [1.5, 1.6]} for r in range(2)]
    assert "DIFFER" in gpucheck.ddp_verdict(differ, 2)["detail"]
    assert gpucheck.ddp_verdict(same[:1], 2) == {"ok": False, "detail": "1 of 2 ranks did not answer (hung or died)"}
    refused = gpucheck.ddp_verdict([{"rank": 0, "error": "DistBackendError: Duplicate GPU detected"}], 2)
    assert refused == {"ok": False, "detail": "DistBackendError: Duplicate GPU detected"}


def test_refuses_without_cuda(tmp_path, capsys):
    out = tmp_path / "gpu-check.md"
    assert gpucheck.main(["--out", str(out)]) == 2
    assert capsys.readouterr().err.strip() == ("error: no CUDA device: run this on a GPU machine (or --device cpu "
                                               "--tiny for its CPU-safe parts)")
    assert not out.exists()


def test_bench_section_reads_back_as_a_bench_report(monkeypatch):
    """gpu-check.md's bench part is what `harness run --dry-run --throughput results/gpu-check.md` reads."""
    rows = [{"row": "TSN", "block": "tsn", "median_s": 0.04, "time_ratio": 1.0, "flops_ratio": 1.0},
            {"row": "Ours", "block": "vps", "median_s": 0.05, "time_ratio": 1.25, "flops_ratio": 1.096},
            {"row": "TSN (control)", "block": "tsn", "median_s": 0.04, "time_ratio": 1.0, "flops_ratio": 1.0}]
    monkeypatch.setattr("harness.bench.bench_blocks", lambda *a, **k: rows)
    setup = gpucheck.setup_for("studies/table1.yaml", device="cpu")
    section = gpucheck.bench_section(setup, repeats=3)
    report = gpucheck.render("cuda: test", [section], commit="abc", wall_s=1.0, tiny=False)
    got = cost.parse_bench(report)
    assert (got.batch, got.frames, got.size, got.device) == (8, 8, 112, "cpu")
    assert got.rates == pytest.approx({"TSN": 200.0, "Ours": 160.0})
    assert "- Ours: time ratio 1.250, goal <= FLOPs ratio 1.096 + 0.05 = 1.146: missed" in report


def test_gpu_decoder_section_says_what_is_missing_without_torchcodec():
    """torchcodec is not installed here (its wheel is a CUDA build): the section passes and names the install."""
    section = gpucheck.decoder_section()
    assert section.ok and section.body.startswith("not checked (only `data.decoder: gpu` needs it)")
    assert "pip install torchcodec" in section.body
