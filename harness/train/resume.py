"""Checkpoint and resume bookkeeping: what a trial's ``last.pt`` holds, putting it back, and refusing a
checkpoint that another configuration wrote.

A resume restarts at an epoch boundary: the model, optimiser, schedule, scaler,
every random generator and the loader's own generators come back as they were
after the last finished epoch, so a resumed CPU trial continues bit for bit.
"""
from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from harness import checkpoint
from harness.config import TrainConfig
from harness.train.setup import Setup
from harness.trial import flatten

log = logging.getLogger(__name__)

# Keys that may change between a run and its resume: they do not change what is learned.
RESUMABLE_CHANGES = {
    "name", "recipe.epochs", "recipe.threads", "data.workers", "data.pin_memory",
    "data.persistent_workers", "data.prefetch_factor", "data.test_clips", "data.test_crops", "data.cache",
    "data.buckets", "data.buckets.size", "data.buckets.speed", "data.bucket_csv",  # what is reported, not learned
}


def state(s: Setup, epoch: int, history: list[dict[str, Any]], best_top1: float | None,
          pretrained: dict[str, Any] | None) -> dict[str, Any]:
    """What ``last.pt`` holds after ``epoch`` epochs (weights_only-safe values only)."""
    return {
        "format": checkpoint.FORMAT,
        "epoch": epoch,
        "model": s.model.state_dict(),
        "optimizer": s.optimizer.state_dict(),
        "scheduler": s.scheduler.state_dict(),
        "scaler": s.scaler.state_dict(),
        "rng": checkpoint.rng_state(),
        "loader_rng": checkpoint.generator_states(s.train_loader),
        "best_top1": best_top1,
        "history": history,
        "config": s.cfg.model_dump(mode="json"),
        "pretrained": pretrained,
    }


def restore(s: Setup, saved: dict[str, Any]) -> None:
    """Put a :func:`state` back into a freshly built trial."""
    s.model.load_state_dict(saved["model"])
    s.optimizer.load_state_dict(saved["optimizer"])
    s.scheduler.load_state_dict(saved["scheduler"])
    s.scaler.load_state_dict(saved["scaler"])
    checkpoint.set_rng_state(saved["rng"])
    checkpoint.set_generator_states(s.train_loader, saved["loader_rng"])


def check_same_trial(saved: dict[str, Any], cfg: TrainConfig, path: Path) -> None:
    """Refuse to resume a checkpoint that another configuration wrote (it would mix two trials)."""
    old, new = flatten(_with_defaults(saved)), flatten(cfg.model_dump(mode="json"))
    diff = sorted(k for k in old.keys() | new.keys()
                  if k not in RESUMABLE_CHANGES and old.get(k) != new.get(k))
    if diff:
        shown = "; ".join(f"{k}: {old.get(k)!r} -> {new.get(k)!r}" for k in diff[:6])
        raise ValueError(f"{path} was written by a different configuration ({shown}); "
                         "resume with the original config or use a fresh --out")
    if old.get("recipe.epochs") != new.get("recipe.epochs") and new.get("recipe.schedule") == "cosine":
        log.warning("recipe.epochs changed %s -> %s on resume: the cosine schedule is stretched from here",
                    old.get("recipe.epochs"), new.get("recipe.epochs"))


def _with_defaults(saved: dict[str, Any]) -> dict[str, Any]:
    """A saved config with today's defaults filled in, so a field added since it was saved (the synth
    ranges, say) compares equal to its default instead of blocking the resume; as saved if it no longer validates."""
    try:
        return TrainConfig.model_validate(saved).model_dump(mode="json")
    except ValueError:
        return saved
