"""The epoch loop of one trial: train, validate, checkpoint, report; and evaluation of a saved model.

Recipe (defaults are the paper's, ``harness.config.Recipe``): SGD momentum 0.9,
lr 0.01, x0.1 every ``lr_step`` epochs (or cosine), optional linear warmup,
gradient clipping at 20, loss = CE + alpha L_interaction + beta L_capacity.
The schedule is applied per step, so a warmup is smooth. On CUDA the forward
runs under autocast (bf16 where supported, else fp16 with a GradScaler) and the
model is channels_last; on CPU neither, so CPU runs are bit-reproducible.

Files under ``out_dir``: ``checkpoints/last.pt`` (every epoch), ``checkpoints/best.pt``
(best val top-1), ``metrics.json`` (one object per epoch), ``result.json``
(status, reason, fusion matrices, ir-interactions), ``predictions.json`` (per
val clip at the last epoch, :mod:`harness.predictions`). A run whose loss turns
non-finite stops with status FAILED and leaves the last good checkpoint alone.

What it gives up: a resume restarts at an epoch boundary (a killed epoch is
redone from its start), and CUDA runs are not bit-reproducible.
"""
from __future__ import annotations

import json
import logging
import math
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader

from harness import checkpoint, names
from harness.config import TrainConfig
from harness.data.formats import clip_id
from harness.data.transforms import on_device
from harness.files import copy_atomic, write_atomic
from harness.predictions import Predictions
from harness.train import resume as resuming
from harness.train.distributed import all_ranks_finite, from_rank0, sum_over_ranks
from harness.train.recipe import compute_loss
from harness.train.setup import (Setup, autocast, build, check_pretrained, create_model, device, load_pretrained,
                                 seed_everything)

log = logging.getLogger(__name__)

Report = Callable[[dict[str, Any], Path | None], None]  # (metrics, checkpoint folder; None on ranks > 0)
# The key under which the last epoch's report carries its per-clip predictions (JSON text, not a metric).
PREDICTIONS_KEY = "predictions"


class NonFinite(RuntimeError):
    """A loss, gradient or weight turned NaN/inf; the run stops as FAILED."""


@dataclass
class TrainResult:
    status: str  # "FINISHED" | "FAILED"
    reason: str | None
    history: list[dict[str, Any]]
    best_top1: float | None
    last_top1: float | None
    fusion_matrices: list[list[list[float]]] = field(default_factory=list)
    ir_interactions: int | None = None
    num_params: int = 0
    pretrained: dict[str, Any] | None = None  # path, sha256, missing and unexpected keys
    predictions: Predictions | None = None  # per val clip, at the last epoch

    @property
    def best_epoch(self) -> int | None:
        if not self.history:
            return None
        return int(max(self.history, key=lambda m: m[names.VAL_TOP1])[names.EPOCH])

    def to_dict(self) -> dict[str, Any]:
        out = asdict(self)
        out["predictions"] = None if self.predictions is None else self.predictions.to_json()
        return out


# ----------------------------------------------------------------------------- fit


def fit(cfg: TrainConfig, out_dir: str | Path, *, report: Report | None = None, resume: bool = False,
        progress: bool = False) -> TrainResult:
    """Train and evaluate one configuration; call ``report(metrics, checkpoint_dir)`` after each epoch.

    ``report`` runs once ``checkpoints/last.pt`` of that epoch is on disk, so a
    caller (Ray Tune) may hand the folder on; the last epoch's metrics also carry
    the per-clip predictions under :data:`PREDICTIONS_KEY` (JSON text).
    ``resume=True`` continues from ``out_dir/checkpoints/last.pt`` when it
    exists; without it an existing checkpoint is an error rather than silently
    overwritten.

    Data-parallel (see :mod:`harness.train`), each rank needs its own
    ``out_dir``; only rank 0 writes there, and the other ranks' ``report`` gets
    ``None`` for the folder (the same metrics, no checkpoint).
    """
    out_dir = Path(out_dir)
    ckpt_dir = out_dir / "checkpoints"
    last = ckpt_dir / "last.pt"
    if last.exists() and not resume:
        raise FileExistsError(f"{last} exists; pass resume=True (--resume) to continue it, "
                              "or choose another output folder")
    check_pretrained(cfg)
    ckpt_dir.mkdir(parents=True, exist_ok=True)
    s = build(cfg)
    history: list[dict[str, Any]] = []
    best_top1: float | None = None
    start, pretrained, predictions = 0, None, None
    if resume and last.exists():
        saved = checkpoint.load(last)
        resuming.check_same_trial(saved["config"], cfg, last)
        resuming.restore(s, saved)
        start, history, best_top1 = saved["epoch"], list(saved["history"]), saved["best_top1"]
        pretrained = saved.get("pretrained")
        log.info("resuming %s after epoch %d of %d", last, start, cfg.recipe.epochs)
    elif cfg.backbone.pretrained:
        pretrained = load_pretrained(s.model, cfg.backbone.weights(cfg.backbone.arch) or "")
    try:
        for epoch in range(start, cfg.recipe.epochs):
            metrics, predictions = _epoch(s, epoch, progress)
            top1 = metrics[names.VAL_TOP1]
            best_top1 = top1 if best_top1 is None else max(best_top1, top1)
            history.append(metrics)
            if s.writer:
                _save(s, epoch, history, best_top1, pretrained, out_dir)
            if report is not None:
                extra = {PREDICTIONS_KEY: predictions.dumps()} if predictions is not None else {}
                report({**metrics, **extra}, ckpt_dir if s.writer else None)
    except NonFinite as e:
        log.error("run FAILED: %s; %s left as it was", e, last if last.exists() else "no checkpoint")
        return _finish(s, out_dir, history, best_top1, pretrained, "FAILED", str(e), None)
    return _finish(s, out_dir, history, best_top1, pretrained, "FINISHED", None, predictions)


def _epoch(s: Setup, epoch: int, progress: bool) -> tuple[dict[str, Any], Predictions | None]:
    """Train + validate one epoch: the metrics, and on the last epoch ir-interactions and per-clip predictions."""
    lr = s.cfg.recipe.effective_lr * s.scheduler.lr_lambdas[0](s.scheduler.last_epoch)  # this epoch's first step
    train = _train_epoch(s, epoch, progress)
    last = epoch + 1 == s.cfg.recipe.epochs

    def validate() -> tuple[dict[str, float], Predictions | None]:
        if last:
            return predict(s.model, s.val_loader, progress=progress)
        return evaluate(s.model, s.val_loader, progress=progress), None

    # Data-parallel: rank 0 validates the weights it checkpoints (its BatchNorm statistics) and every rank
    # gets its numbers; all ranks hold the same weights, so they all stop, or go on, together.
    val, predictions = validate() if s.world == 1 else from_rank0(s.rank, validate)
    if not (math.isfinite(val[names.VAL_LOSS]) and _finite_weights(s.model)):
        raise NonFinite(f"non-finite validation loss or weights after epoch {epoch + 1}")
    metrics = {names.EPOCH: epoch + 1, names.TRAIN_LOSS: train.pop(names.TRAIN_LOSS), **val, names.LR: lr,
               names.CLIPS_PER_S: train.pop(names.CLIPS_PER_S), **train}
    if last:
        ir = _ir_interactions(s.model)
        if ir is not None:
            metrics[names.IR_INTERACTIONS] = int(ir)
    log.info("epoch %d/%d: train_loss %.4f val_loss %.4f top1 %.2f top5 %.2f lr %.3g %.1f clips/s",
             epoch + 1, s.cfg.recipe.epochs, metrics[names.TRAIN_LOSS], val[names.VAL_LOSS], val[names.VAL_TOP1],
             val[names.VAL_TOP5], lr, metrics[names.CLIPS_PER_S])
    return metrics, predictions


def _train_epoch(s: Setup, epoch: int, progress: bool) -> dict[str, float]:
    """One pass over the train loader; raises :class:`NonFinite` before a bad step is applied."""
    from tqdm import tqdm

    r = s.cfg.recipe
    s.model.train()
    set_epoch = getattr(s.train_loader.sampler, "set_epoch", None)
    if set_epoch is not None:  # order and augmentation seeds depend on the epoch, so a resume replays them
        set_epoch(epoch)
    sums: dict[str, float] = {}
    seen = correct = 0
    start = time.perf_counter()
    bar = tqdm(s.train_loader, desc=f"epoch {epoch + 1}/{r.epochs}", disable=not progress,
               leave=False, dynamic_ncols=True)
    for step, (clips, labels) in enumerate(bar):
        clips, labels = on_device(clips, s.device), labels.to(s.device, non_blocking=True)  # uint8, normalised there
        with autocast(s.device, s.amp_dtype):
            logits = s.model(clips) if s.ddp is None else s.ddp(clips)  # DDP all-reduces in backward
        aux = aux_losses(s.model)
        loss, parts = compute_loss(logits, labels, aux, alpha=r.alpha, beta=r.beta)
        if not (torch.isfinite(loss) if s.ddp is None else all_ranks_finite(loss)):
            raise NonFinite(f"non-finite loss at epoch {epoch + 1} step {step + 1}: "
                            + ", ".join(f"{k}={v.item():.4g}" for k, v in parts.items()))
        optimizer_step(s, loss, epoch, step)
        n = labels.shape[0]
        seen += n
        correct += (logits.argmax(1) == labels).sum().item()
        for k, v in {"loss": loss.detach(), **parts}.items():
            sums[k] = sums.get(k, 0.0) + v.item() * n
        bar.set_postfix(loss=f"{sums['loss'] / seen:.4f}")
    if s.device.type == "cuda":
        torch.cuda.synchronize()
    elapsed = time.perf_counter() - start
    if s.world > 1:  # the epoch's numbers over every rank's clips, the same on each rank
        seen, correct, sums = sum_over_ranks(seen, correct, sums, s.device)
    out = {f"train_{k}": v / seen for k, v in sums.items()}  # train_loss, train_ce, train_interaction, ...
    out.update({names.TRAIN_TOP1: 100.0 * correct / seen, names.CLIPS_PER_S: seen / max(elapsed, 1e-9)})
    return out


def optimizer_step(s: Setup, loss: torch.Tensor, epoch: int, step: int) -> None:
    """Backward, clip, optimiser and schedule step; a non-finite gradient norm stops the run."""
    s.optimizer.zero_grad(set_to_none=True)
    s.scaler.scale(loss).backward()
    clip = s.cfg.recipe.clip_grad
    if clip:
        s.scaler.unscale_(s.optimizer)
        norm = nn.utils.clip_grad_norm_(s.model.parameters(), clip)
        # With fp16 a non-finite norm is the GradScaler's business (it skips the step).
        if not s.scaler.is_enabled() and not torch.isfinite(norm):
            raise NonFinite(f"non-finite gradient norm at epoch {epoch + 1} step {step + 1}")
    s.scaler.step(s.optimizer)
    s.scaler.update()
    s.scheduler.step()


# ----------------------------------------------------------------------------- evaluation


def view_logits(model: nn.Module, clips: torch.Tensor) -> torch.Tensor:
    """Logits of ``(N, V, T, 3, H, W)`` clips averaged over the V views (clips x crops).

    The average is over logits, before any softmax, as in TSM's test script.
    A 5D ``(N, T, 3, H, W)`` batch is one view.
    """
    if clips.dim() == 5:
        return model(clips)
    if clips.dim() != 6:
        raise ValueError(f"expected clips of shape (N, V, T, 3, H, W) or (N, T, 3, H, W), got {tuple(clips.shape)}")
    n, v = clips.shape[:2]
    return model(clips.flatten(0, 1)).view(n, v, -1).mean(1)


@torch.no_grad()
def _validate(model: nn.Module, loader: DataLoader[Any], *, progress: bool,
              keep: bool) -> tuple[dict[str, float], list[tuple[torch.Tensor, torch.Tensor, torch.Tensor]]]:
    """Val loss (CE of the view-averaged logits), top-1 and top-5 in percent; with ``keep`` each batch's
    (logits, labels, entry indices)."""
    from tqdm import tqdm

    dev = next(model.parameters()).device
    amp_dtype = device()[1] if dev.type == "cuda" else None
    was_training = model.training
    model.eval()
    loss_sum, top1, top5, seen = 0.0, 0, 0, 0
    kept: list[tuple[torch.Tensor, torch.Tensor, torch.Tensor]] = []
    for clips, labels, *index in tqdm(loader, desc="eval", disable=not progress, leave=False, dynamic_ncols=True):
        if keep and not index:
            raise ValueError("per-clip predictions need a loader that yields entry indices; "
                             "build it with build_loader(..., with_index=True)")
        clips, labels = on_device(clips, dev), labels.to(dev, non_blocking=True)  # uint8, normalised there
        with autocast(dev, amp_dtype):
            logits = view_logits(model, clips).float()
        loss_sum += F.cross_entropy(logits, labels, reduction="sum").item()
        best = logits.topk(min(5, logits.shape[1]), dim=1).indices
        hits = best == labels[:, None]
        top1 += hits[:, 0].sum().item()
        top5 += hits.any(1).sum().item()
        seen += labels.shape[0]
        if keep:
            kept.append((logits.cpu(), labels.cpu(), index[0]))
    model.train(was_training)
    if seen == 0:
        raise ValueError("the evaluation loader yielded no clip; check the val split")
    metrics = {names.VAL_LOSS: loss_sum / seen, names.VAL_TOP1: 100.0 * top1 / seen,
               names.VAL_TOP5: 100.0 * top5 / seen}
    return metrics, kept


def evaluate(model: nn.Module, loader: DataLoader[Any], *, progress: bool = False) -> dict[str, float]:
    """Val loss, top-1 and top-5 (percent) over the loader's clips, logits averaged over the views."""
    return _validate(model, loader, progress=progress, keep=False)[0]


def predict(model: nn.Module, loader: DataLoader[Any], *,
            progress: bool = False) -> tuple[dict[str, float], Predictions]:
    """:func:`evaluate`, plus each clip's ranked classes (the loader must yield entry indices)."""
    metrics, kept = _validate(model, loader, progress=progress, keep=True)
    logits, labels, index = (torch.cat(parts) for parts in zip(*kept))
    entries = [loader.dataset.entries[i] for i in index.tolist()]  # type: ignore[attr-defined]
    numeric = {k for e in entries for k, v in e.extra.items() if isinstance(v, (int, float))}
    extra = {k: [float(e.extra.get(k, math.nan)) for e in entries] for k in sorted(numeric)}
    return metrics, Predictions.from_logits(logits, labels, [clip_id(e) for e in entries], extra)


# ----------------------------------------------------------------------------- files


def _save(s: Setup, epoch: int, history: list[dict[str, Any]], best_top1: float,
          pretrained: dict[str, Any] | None, out_dir: Path) -> None:
    ckpt_dir = out_dir / "checkpoints"
    last = checkpoint.save_atomic(resuming.state(s, epoch + 1, history, best_top1, pretrained), ckpt_dir / "last.pt")
    if history[-1][names.VAL_TOP1] >= best_top1:
        copy_atomic(last, ckpt_dir / "best.pt")
    write_json(history, out_dir / "metrics.json")


def write_json(obj: Any, path: Path) -> None:
    write_atomic(json.dumps(obj, indent=1, allow_nan=True), path)


def aux_losses(model: nn.Module) -> dict[str, torch.Tensor]:
    """The block's own loss terms of the last forward (L_interaction, L_capacity); none for most blocks."""
    fn = getattr(model, "aux_losses", None)
    return {} if fn is None else dict(fn())


def _finite_weights(model: nn.Module) -> bool:
    return all(torch.isfinite(p).all().item() for p in model.parameters())


def _ir_interactions(model: nn.Module) -> int | None:
    fn = getattr(model, "ir_interactions", None)
    value = None if fn is None else fn()
    return None if value is None else int(value)


def _fusion_matrices(model: nn.Module) -> list[list[list[float]]]:
    fn = getattr(model, "fusion_matrices", None)
    return [] if fn is None else [m.detach().float().cpu().tolist() for m in fn()]


def _finish(s: Setup, out_dir: Path, history: list[dict[str, Any]], best_top1: float | None,
            pretrained: dict[str, Any] | None, status: str, reason: str | None,
            predictions: Predictions | None) -> TrainResult:
    ok = status == "FINISHED"
    result = TrainResult(
        status=status, reason=reason, history=history, best_top1=best_top1,
        last_top1=history[-1][names.VAL_TOP1] if history else None,
        fusion_matrices=_fusion_matrices(s.model) if ok else [],
        ir_interactions=_ir_interactions(s.model) if ok else None,
        num_params=sum(p.numel() for p in s.model.parameters()), pretrained=pretrained,
        predictions=predictions)
    if s.writer:
        write_json(result.to_dict(), out_dir / "result.json")
        if predictions is not None:
            write_atomic(predictions.dumps(), out_dir / names.PREDICTIONS)
    return result


# ----------------------------------------------------------------------------- evaluation only


def evaluate_checkpoint(cfg: TrainConfig, path: str | Path, *,
                        progress: bool = False) -> tuple[dict[str, Any], Predictions]:
    """Evaluate a saved model on the val split with ``cfg.data``'s test_clips x test_crops views:
    the metrics and the per-clip predictions."""
    from harness.data import build_loader

    saved = checkpoint.load(path)
    torch.set_num_threads(cfg.recipe.threads)
    seed_everything(cfg.seed)
    dev, _ = device()
    loader, classes = build_loader(cfg.data, "val", batch_size=cfg.recipe.batch_size, seed=cfg.seed, train=False,
                                   with_index=True)
    model = create_model(cfg, len(classes))
    try:
        model.load_state_dict(saved["model"])
    except RuntimeError as e:
        raise ValueError(f"{path} does not fit the model of this config (block {cfg.row.block!r}, "
                         f"backbone {cfg.backbone.arch}): {e}") from e
    metrics, predictions = predict(model.to(dev), loader, progress=progress)
    return ({"checkpoint": str(path), "epoch": saved["epoch"], "clips": cfg.data.test_clips,
             "crops": cfg.data.test_crops, **metrics}, predictions)
