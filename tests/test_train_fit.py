"""fit / evaluate end to end on tiny models: learning, reports, files, view averaging, the CLI."""
from __future__ import annotations

import json
import platform
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from conftest import SYNTH_ARGS, IndexedClips

import harness.data
import harness.train as train
from harness.cli import main as cli
from harness.config import TrainConfig
from harness.train import setup

CLASSES = ["a", "b", "c", "d"]
REPO = Path(__file__).resolve().parents[1]


def _clips(n: int = 16, frames: int = 4, size: int = 8):
    """n clips whose class shows as a brightness offset in one channel, over noise."""
    g = torch.Generator().manual_seed(0)
    labels = torch.arange(n) % len(CLASSES)
    clips = 0.5 * torch.randn(n, frames, 3, size, size, generator=g)
    clips[:, :, 0] += labels.float().view(n, 1, 1, 1) - 1.5
    return clips, labels


def _same_clips_loaders(cfg: TrainConfig):
    """Train on 16 clips and validate on the same 16 (one view): val top-1 is train accuracy."""
    clips, labels = _clips(frames=cfg.data.frames, size=cfg.data.size)
    gen = torch.Generator().manual_seed(cfg.seed)
    return (DataLoader(TensorDataset(clips, labels), batch_size=cfg.recipe.batch_size, shuffle=True, generator=gen),
            DataLoader(IndexedClips(clips[:, None], labels), batch_size=8), CLASSES)


def _cfg(block: str = "vps", **recipe) -> TrainConfig:
    return TrainConfig.model_validate({
        "name": "fit-test",
        "backbone": {"arch": "tiny", "width": 8, "depths": [1, 1, 1, 1]},
        "data": {"format": "synth", "root": "unused", "frames": 4, "size": 8},
        "recipe": {"batch_size": 4, "lr": 0.05, "threads": 1, **recipe},
        "row": {"block": block},
    })


@pytest.mark.parametrize("block", ["tsn", "vps"])
def test_tiny_model_fits_16_clips_within_60_steps(tmp_path, monkeypatch, block):
    monkeypatch.setattr(setup, "loaders", _same_clips_loaders)
    cfg = _cfg(block, epochs=15, lr=0.01, dropout=0.0, weight_decay=0.0)  # 15 epochs x 4 steps
    result = train.fit(cfg, tmp_path)
    assert result.status == "FINISHED", result.reason
    assert result.best_top1 == 100.0, [h["val_top1"] for h in result.history]
    assert result.history[-1]["train_loss"] < result.history[0]["train_loss"]


def test_reports_metrics_after_the_checkpoint_is_written(tmp_path, monkeypatch):
    monkeypatch.setattr(setup, "loaders", _same_clips_loaders)
    seen = []

    def report(metrics, ckpt_dir):
        state = torch.load(ckpt_dir / "last.pt", weights_only=True)
        seen.append((metrics, state["epoch"]))

    result = train.fit(_cfg("vps", epochs=2), tmp_path, report=report)
    assert [(m["epoch"], e) for m, e in seen] == [(1, 1), (2, 2)]
    keys = {"epoch", "train_loss", "val_loss", "val_top1", "val_top5", "lr", "clips_per_s"}
    assert all(keys <= m.keys() for m, _ in seen)
    assert "ir_interactions" not in seen[0][0] and seen[1][0]["ir_interactions"] == result.ir_interactions
    # the last epoch's report also carries the per-clip predictions; the history keeps the numbers
    assert [train.PREDICTIONS_KEY in m for m, _ in seen] == [False, True]
    assert json.loads(seen[1][0].pop(train.PREDICTIONS_KEY)) == result.predictions.to_json()
    assert json.loads((tmp_path / "metrics.json").read_text()) == result.history == [m for m, _ in seen]
    assert len(result.predictions) == 16 and result.predictions.top1() == pytest.approx(result.last_top1)
    assert len(result.fusion_matrices) == 4 and len(result.fusion_matrices[0]) == len(result.fusion_matrices[0][0])
    assert result.num_params == sum(p.numel() for p in train.create_model(_cfg("vps"), 4).parameters())
    saved = json.loads((tmp_path / "result.json").read_text())
    assert saved["status"] == "FINISHED" and saved["fusion_matrices"] == result.fusion_matrices


def test_tsn_has_no_fusion_matrices(tmp_path, monkeypatch):
    monkeypatch.setattr(setup, "loaders", _same_clips_loaders)
    result = train.fit(_cfg("tsn", epochs=1), tmp_path)
    assert result.fusion_matrices == [] and result.ir_interactions is None
    assert "ir_interactions" not in result.history[-1]


class _ViewDependent(nn.Module):
    """Logits are the first pixel of channel 0..3 of the first frame: each view votes differently."""

    def __init__(self):
        super().__init__()
        self.w = nn.Parameter(torch.zeros(()))

    def forward(self, x):
        return x[:, 0, :, 0, 0] + self.w


def test_evaluate_averages_logits_over_views():
    # Two views per clip; alone, each view picks a wrong class; their mean picks the label.
    views = torch.zeros(2, 2, 1, 3, 1, 1)
    views[0, 0, 0, :, 0, 0] = torch.tensor([1.0, 3.0, 0.0])  # votes 1
    views[0, 1, 0, :, 0, 0] = torch.tensor([2.0, -2.0, 2.5])  # votes 2; mean [1.5, .5, 1.25] -> 0
    views[1, 0, 0, :, 0, 0] = torch.tensor([0.0, 0.0, 4.0])  # votes 2
    views[1, 1, 0, :, 0, 0] = torch.tensor([0.0, 3.0, -3.0])  # votes 1 (right); mean [0, 1.5, .5] -> 1
    labels = torch.tensor([0, 1])
    loader = DataLoader(TensorDataset(views, labels), batch_size=2)
    out = train.evaluate(_ViewDependent(), loader)
    mean = views[:, :, 0, :, 0, 0].mean(1)
    assert out["val_top1"] == 100.0 and out["val_top5"] == 100.0
    assert out["val_loss"] == pytest.approx(F.cross_entropy(mean, labels).item())


def test_evaluate_checkpoint_matches_the_last_validation(tmp_path, monkeypatch):
    monkeypatch.setattr(setup, "loaders", _same_clips_loaders)
    result = train.fit(_cfg("vps", epochs=1), tmp_path)
    clips, labels = _clips()

    def build_loader(data, split, *, batch_size, seed, train, with_index=False):
        return DataLoader(IndexedClips(clips[:, None], labels), batch_size=batch_size), CLASSES

    monkeypatch.setattr(harness.data, "build_loader", build_loader)
    got, predictions = train.evaluate_checkpoint(_cfg("vps", epochs=1), tmp_path / "checkpoints/last.pt")
    assert got["epoch"] == 1 and predictions.to_json() == result.predictions.to_json()
    for k in ("val_loss", "val_top1", "val_top5"):
        assert got[k] == pytest.approx(result.history[-1][k])


def test_cli_reports_a_bad_config_with_exit_code_2(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("name: x\nbackbone: {arch: tiny}\ndata: {format: synth, root: r}\nrow: {block: vsp}\n")
    assert cli(["train", str(bad), "--out", str(tmp_path / "out")]) == 2


def test_pretrained_backbone_loads_and_reports_keys(tmp_path, monkeypatch):
    monkeypatch.setattr(setup, "loaders", _same_clips_loaders)
    donor = train.create_model(_cfg("tsn"), 1000).state_dict()  # an "ImageNet" file: 1000-class fc
    donor["extra.weight"] = torch.zeros(1)
    torch.save(donor, tmp_path / "r.pth")
    cfg = _cfg("vps", epochs=1, tsm_param_groups=True)
    cfg.backbone.pretrained = str(tmp_path / "r.pth")
    result = train.fit(cfg, tmp_path / "out")
    assert result.pretrained["unexpected"] == ["extra.weight"]
    assert {"fc.weight", "fc.bias"} <= set(result.pretrained["missing"])  # the 1000-class fc is not ours
    assert not any(k.startswith(("conv1", "layer1.0.conv1")) for k in result.pretrained["missing"])
    groups = torch.load(tmp_path / "out/checkpoints/last.pt", weights_only=True)["optimizer"]["param_groups"]
    assert {g["name"]: g["initial_lr"] for g in groups}["fc_weight"] == pytest.approx(5 * cfg.recipe.lr)


def test_missing_pretrained_file_fails_before_training(tmp_path):
    cfg = _cfg("tsn", epochs=1)
    cfg.backbone.pretrained = str(tmp_path / "nope.pth")
    with pytest.raises(FileNotFoundError, match="nope.pth"):
        train.fit(cfg, tmp_path / "out")


def _synth_config(tmp_path: Path) -> Path:
    path = tmp_path / "tiny.yaml"
    path.write_text(f"""
name: tiny
backbone: {{arch: tiny, width: 4, depths: [1, 1, 1, 1]}}
data:
  format: synth
  root: {tmp_path / "synth"}
  frames: 4
  size: 16
  synth: {{videos: 24, frames: 8, size: 16}}
recipe: {{epochs: 1, batch_size: 8, threads: 1}}
row: {{block: vps}}
""")
    return path


def test_cli_trains_resumes_and_evaluates_on_the_synthetic_set(tmp_path, capsys):
    config, out = _synth_config(tmp_path), tmp_path / "run"
    assert cli(["train", str(config), "--out", str(out)]) == 0
    history = json.loads((out / "metrics.json").read_text())
    assert [h["epoch"] for h in history] == [1]
    assert {"train_loss", "val_loss", "val_top1", "val_top5", "lr", "clips_per_s"} <= history[0].keys()
    assert (out / "checkpoints/last.pt").is_file()
    assert cli(["train", str(config), "--out", str(out)]) == 2  # would overwrite the checkpoint
    assert cli(["train", str(config), "--out", str(out), "--resume"]) == 0  # already complete: a no-op
    capsys.readouterr()
    ckpt = out / "checkpoints/best.pt"
    assert cli(["train", str(config), "--out", str(out), "--evaluate", str(ckpt), "--clips", "2", "--crops", "3"]) == 0
    got = json.loads((out / "eval.json").read_text())
    assert (got["clips"], got["crops"], got["epoch"]) == (2, 3, 1)
    assert 0 <= got["val_top1"] <= got["val_top5"] <= 100
    assert json.loads(capsys.readouterr().out.strip().splitlines()[-1]) == got


def test_shipped_smoke_config_is_a_valid_train_config():
    from harness.config import load_train

    cfg = load_train(REPO / "studies/smoke.yaml")
    assert cfg.name == "smoke" and cfg.data.format == "synth" and cfg.backbone.arch == "tiny"
    assert cfg.data.root.startswith("work/data/")


# Three 20 MiB tensors allocated and freed again and again, as a training step does with its activations;
# prints the page faults of each round. With glibc's defaults this pattern faults 15,000 pages a round on
# and on in most runs (7 of 8 here; the heap's history decides). "mmap" is a deterministic control: every
# block above 128 KiB is mmapped and unmapped when freed, so every round faults and the count shows it.
_REALLOCATE = """
import ctypes, resource, sys, torch
from harness.train import keep_freed_memory
if sys.argv[1] == "keep":
    assert keep_freed_memory()
else:
    assert ctypes.CDLL(None).mallopt(-3, 128 << 10)  # M_MMAP_THRESHOLD
n = 5 << 20  # 20 MiB of float32
faults = []
for _ in range(12):
    before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    a, b, c = torch.ones(n), torch.ones(n), torch.ones(n)
    del a, b, c
    faults.append(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
print(*faults)
"""


@pytest.mark.skipif(platform.libc_ver()[0] != "glibc", reason="glibc's malloc only")
def test_keep_freed_memory_stops_page_faults_on_memory_a_step_frees_and_takes_again():
    def faults(mode: str) -> list[int]:
        out = subprocess.run([sys.executable, "-c", _REALLOCATE, mode], capture_output=True, text=True,
                             check=True, cwd=REPO)
        return [int(f) for f in out.stdout.split()]

    mmapped, kept = faults("mmap"), faults("keep")
    assert min(mmapped[1:]) > 10_000, mmapped  # 60 MiB = 15,360 pages mapped afresh every round
    assert max(kept[-4:]) < 100, kept  # once the heap has grown (a few rounds), the same memory serves each round


def test_rows_that_share_a_seed_see_the_same_clips_in_the_same_order_with_the_same_augmentation(
        data_synth_dir, monkeypatch):
    """What pairs two rows by seed in the tables (harness.stats): with the same seed, two blocks get the same
    training order and per-clip augmentation seeds every epoch, and start their model from the same random state;
    another seed changes both."""
    from harness.config import Data

    # the shared set's own synth parameters: other ones would make the loader rewrite it under the other tests
    data = Data(format="synth", root=str(data_synth_dir), frames=4, size=16, scale_size=16, synth=SYNTH_ARGS)
    states = {}
    real = setup.create_model

    def recording(cfg, num_classes):  # the RNG the model's initialisation draws from
        states[(cfg.row.block, cfg.seed)] = torch.get_rng_state().clone()
        return real(cfg, num_classes)

    monkeypatch.setattr(setup, "create_model", recording)

    def order(block: str, seed: int) -> list:
        cfg = _cfg(block, epochs=2).model_copy(update={"data": data, "seed": seed})
        s = setup.build(cfg)
        seen = []
        for epoch in (0, 1):
            s.train_loader.sampler.set_epoch(epoch)
            seen.append(list(s.train_loader.sampler))
        return seen

    tsn, tsm, other = order("tsn", 3), order("tsm", 3), order("tsn", 4)
    assert tsn == tsm and tsn[0] != tsn[1]  # the same order and augmentation seeds, epoch by epoch
    assert tsn != other
    assert torch.equal(states[("tsn", 3)], states[("tsm", 3)])
    assert not torch.equal(states[("tsn", 3)], states[("tsn", 4)])
