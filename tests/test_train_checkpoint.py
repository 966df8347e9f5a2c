"""Checkpoints: safe loading, atomic writes, exact resume, and a NaN that leaves the last good file alone."""
from __future__ import annotations

import json
import random

import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader, TensorDataset

import harness.train as train
from conftest import IndexedClips

from harness.train import loop, setup
from harness import checkpoint
from harness.config import TrainConfig

CLASSES = ["a", "b", "c", "d"]


def _clips(n: int = 16, frames: int = 4, size: int = 8, seed: int = 0):
    """n clips whose class shows as a brightness offset: learnable, and small enough to run in seconds."""
    g = torch.Generator().manual_seed(seed)
    labels = torch.arange(n) % len(CLASSES)
    clips = 0.5 * torch.randn(n, frames, 3, size, size, generator=g)
    clips[:, :, 0] += labels.float().view(n, 1, 1, 1) - 1.5
    return clips, labels


def _fake_loaders(cfg: TrainConfig):
    """Stand-in for harness.data: a seeded shuffling train loader and a 2-view val loader."""
    clips, labels = _clips(frames=cfg.data.frames, size=cfg.data.size)
    gen = torch.Generator().manual_seed(cfg.seed)
    train_loader = DataLoader(TensorDataset(clips, labels), batch_size=cfg.recipe.batch_size,
                              shuffle=True, generator=gen)
    views = torch.stack([clips, clips.flip(-1)], 1)
    val_loader = DataLoader(IndexedClips(views, labels), batch_size=cfg.recipe.batch_size)
    return train_loader, val_loader, CLASSES


def _cfg(epochs: int = 2, block: str = "vps", **recipe) -> TrainConfig:
    return TrainConfig.model_validate({
        "name": "ckpt-test",
        "backbone": {"arch": "tiny", "width": 4, "depths": [1, 1, 1, 1]},
        "data": {"format": "synth", "root": "unused", "frames": 4, "size": 8},
        "recipe": {"epochs": epochs, "batch_size": 4, "lr": 0.05, "threads": 1, **recipe},
        "row": {"block": block},
        "seed": 3,
    })


@pytest.fixture(autouse=True)
def _in_memory_data(monkeypatch):
    monkeypatch.setattr(setup, "loaders", _fake_loaders)


def test_rng_state_round_trips_through_a_weights_only_file(tmp_path):
    torch.manual_seed(1), np.random.seed(1), random.seed(1)
    torch.rand(3), np.random.rand(), random.random(), np.random.randn()  # leave a cached gaussian
    checkpoint.save_atomic({"format": checkpoint.FORMAT, "rng": checkpoint.rng_state()}, tmp_path / "r.pt")
    expected = (torch.rand(5), np.random.rand(5), [random.random() for _ in range(5)], np.random.randn())
    checkpoint.set_rng_state(torch.load(tmp_path / "r.pt", weights_only=True)["rng"])
    got = (torch.rand(5), np.random.rand(5), [random.random() for _ in range(5)], np.random.randn())
    assert torch.equal(expected[0], got[0]) and np.array_equal(expected[1], got[1])
    assert expected[2:] == got[2:]


def test_a_failed_write_keeps_the_old_file_and_no_temp_file(tmp_path):
    path = checkpoint.save_atomic({"format": checkpoint.FORMAT, "x": torch.ones(2)}, tmp_path / "last.pt")
    before = path.read_bytes()
    with pytest.raises(Exception):
        checkpoint.save_atomic({"format": checkpoint.FORMAT, "bad": lambda: None}, path)
    assert path.read_bytes() == before
    assert [p.name for p in tmp_path.iterdir()] == ["last.pt"]


def test_load_refuses_a_file_that_needs_arbitrary_code(tmp_path):
    torch.save({"format": checkpoint.FORMAT, "obj": _Unsafe()}, tmp_path / "evil.pt")
    with pytest.raises(ValueError, match="weights_only=True"):
        checkpoint.load(tmp_path / "evil.pt")
    with pytest.raises(FileNotFoundError, match="missing.pt"):
        checkpoint.load(tmp_path / "missing.pt")


class _Unsafe:
    pass


def test_two_epochs_straight_equal_one_epoch_resume_one_epoch(tmp_path):
    straight = train.fit(_cfg(epochs=2), tmp_path / "straight")
    first = train.fit(_cfg(epochs=1), tmp_path / "split")
    resumed = train.fit(_cfg(epochs=2), tmp_path / "split", resume=True)
    assert (straight.status, first.status, resumed.status) == ("FINISHED",) * 3
    a = checkpoint.load(tmp_path / "straight/checkpoints/last.pt")
    b = checkpoint.load(tmp_path / "split/checkpoints/last.pt")
    assert a["model"].keys() == b["model"].keys()
    for k in a["model"]:
        assert torch.equal(a["model"][k], b["model"][k]), k
    assert [h["train_loss"] for h in straight.history] == [h["train_loss"] for h in resumed.history]
    assert json.loads((tmp_path / "split/metrics.json").read_text()) == resumed.history


def test_checkpoint_is_a_plain_weights_only_dict(tmp_path):
    train.fit(_cfg(epochs=1), tmp_path)
    state = torch.load(tmp_path / "checkpoints/last.pt", weights_only=True)
    assert state["epoch"] == 1 and state["config"]["row"]["block"] == "vps"
    assert {"model", "optimizer", "scheduler", "rng", "loader_rng", "best_top1", "history"} <= state.keys()
    assert (tmp_path / "checkpoints/best.pt").is_file()


def test_an_existing_checkpoint_is_not_overwritten_without_resume(tmp_path):
    train.fit(_cfg(epochs=1), tmp_path)
    with pytest.raises(FileExistsError, match="resume"):
        train.fit(_cfg(epochs=1), tmp_path)


def test_resume_refuses_a_different_configuration(tmp_path):
    train.fit(_cfg(epochs=1), tmp_path)
    with pytest.raises(ValueError, match="recipe.lr"):
        train.fit(_cfg(epochs=2, lr=0.1), tmp_path, resume=True)


def _nan_after(calls: int):
    """compute_loss that turns NaN after `calls` steps, as a diverging run would."""
    real, seen = train.compute_loss, {"n": 0}

    def loss(*args, **kwargs):
        total, parts = real(*args, **kwargs)
        seen["n"] += 1
        return (total * float("nan"), parts) if seen["n"] > calls else (total, parts)

    return loss


def test_nan_loss_fails_the_run_and_keeps_the_last_good_checkpoint(tmp_path, monkeypatch):
    train.fit(_cfg(epochs=1), tmp_path)
    last, best = tmp_path / "checkpoints/last.pt", tmp_path / "checkpoints/best.pt"
    before = last.read_bytes(), best.read_bytes(), (tmp_path / "metrics.json").read_bytes()
    monkeypatch.setattr(loop, "compute_loss", _nan_after(2))
    reports = []
    result = train.fit(_cfg(epochs=2), tmp_path, resume=True, report=lambda m, p: reports.append(m))
    assert result.status == "FAILED" and "non-finite loss at epoch 2 step 3" in result.reason
    assert (last.read_bytes(), best.read_bytes(), (tmp_path / "metrics.json").read_bytes()) == before
    assert reports == [] and len(result.history) == 1
    saved = json.loads((tmp_path / "result.json").read_text())
    assert saved["status"] == "FAILED" and saved["reason"] == result.reason
    assert sorted(p.name for p in last.parent.iterdir()) == ["best.pt", "last.pt"]


def test_nan_in_the_first_epoch_writes_no_checkpoint(tmp_path, monkeypatch):
    monkeypatch.setattr(loop, "compute_loss", _nan_after(0))
    result = train.fit(_cfg(epochs=1), tmp_path)
    assert result.status == "FAILED" and result.history == [] and result.last_top1 is None
    assert not (tmp_path / "checkpoints/last.pt").exists()
