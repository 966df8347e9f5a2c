"""One trial: build the model from a TrainConfig, train it, evaluate it, checkpoint, report.

    harness train studies/smoke.yaml                  # -> work/train/<name>/
    harness train studies/smoke.yaml --resume         # continue from checkpoints/last.pt
    harness train studies/smoke.yaml --evaluate work/train/smoke/checkpoints/best.pt --clips 2 --crops 3

This module knows nothing of Ray or MLflow: :func:`fit` reports each epoch's
metrics through a callback, which ``harness.tune`` turns into Tune reports and
the CLI leaves empty. The same config therefore gives the same numbers with and
without Ray.

Recipe (defaults are the paper's, ``harness.config.Recipe``): SGD momentum 0.9,
lr 0.01, x0.1 every ``lr_step`` epochs (or cosine), optional linear warmup,
gradient clipping at 20, loss = CE + alpha L_interaction + beta L_capacity.
The schedule is applied per step, so a warmup is smooth. On CUDA the forward
runs under autocast (bf16 where supported, else fp16 with a GradScaler) and the
model is channels_last; on CPU neither, so CPU runs are bit-reproducible.

Files under ``out_dir``: ``checkpoints/last.pt`` (every epoch), ``checkpoints/best.pt``
(best val top-1), ``metrics.json`` (one object per epoch), ``result.json``
(status, reason, fusion matrices, ir-interactions). A run whose loss turns
non-finite stops with status FAILED and leaves the last good checkpoint alone.

What it gives up: a resume restarts at an epoch boundary (a killed epoch is
redone from its start), and CUDA runs are not bit-reproducible.

Data-parallel: when a launcher has set up ``torch.distributed`` (Ray Train for a
trial with ``resources.workers > 1``, or torchrun) with more than one rank, the
model trains under DDP. ``recipe.batch_size`` stays the global batch: each rank
takes ``batch_size / world`` clips a step from its own share of every epoch's
order, and DDP averages the gradients, so step k sees the clips of step k on
one process (only BatchNorm differs: it normalises each rank's clips apart; no
SyncBatchNorm). Rank 0 validates, and writes the checkpoints and files; every
rank gets its numbers, so all ranks take the same decisions. What it gives up:
validation is not spread over the ranks. Without a process group, or with one
rank, nothing here changes.
"""
from __future__ import annotations

import contextlib
import ctypes
import itertools
import json
import logging
import math
import os
import pickle
import platform
import random
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn

from harness import checkpoint
from harness.config import TrainConfig
from harness.data.transforms import on_device
from harness.errors import named

log = logging.getLogger(__name__)

Report = Callable[[dict[str, Any], Path | None], None]  # (metrics, checkpoint folder; None on ranks > 0)

# Keys that may change between a run and its resume: they do not change what is learned.
RESUMABLE_CHANGES = {
    "name", "recipe.epochs", "recipe.threads", "data.workers", "data.pin_memory",
    "data.persistent_workers", "data.prefetch_factor", "data.test_clips", "data.test_crops", "data.cache",
    "data.buckets", "data.buckets.size", "data.buckets.speed", "data.bucket_csv",  # what is reported, not learned
}
NORM_LAYERS = (nn.modules.batchnorm._NormBase, nn.GroupNorm, nn.LayerNorm)


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
    pretrained: dict[str, Any] | None = None  # path, missing and unexpected keys

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class _Trial:
    """Everything one trial builds before its first step."""

    cfg: TrainConfig
    device: torch.device
    model: nn.Module
    train_loader: Any
    val_loader: Any
    optimizer: torch.optim.Optimizer
    scheduler: torch.optim.lr_scheduler.LambdaLR
    scaler: torch.amp.GradScaler
    amp_dtype: torch.dtype | None
    val_buckets: list[str | None] | None = None  # per val entry, when data asks for stratified metrics
    rank: int = 0  # this process in a data-parallel group; (0, 1) on one process
    world: int = 1
    ddp: nn.Module | None = None  # the DDP wrapper that trains ``model`` across ranks; None on one process

    @property
    def writer(self) -> bool:
        """Only rank 0 writes checkpoints and files; the other ranks hold the same weights."""
        return self.rank == 0


# ----------------------------------------------------------------------------- losses


def compute_loss(logits: torch.Tensor, labels: torch.Tensor, aux: dict[str, torch.Tensor], *,
                 alpha: float, beta: float) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """L = CE + alpha * L_interaction + beta * L_capacity (paper Sec. End-to-end learning).

    A weight of 0 leaves its term out entirely (not multiplied by zero), so a
    disabled term that is NaN cannot poison the loss. A block without a fusion
    layer returns no aux terms and trains on CE alone. Returns the total and
    its detached parts (``ce``, ``interaction``, ``capacity``) for logging.
    """
    ce = F.cross_entropy(logits.float(), labels)
    total, parts = ce, {"ce": ce.detach()}
    for key, weight in (("interaction", alpha), ("capacity", beta)):
        if weight and key in aux:
            term = aux[key].float()
            total = total + weight * term
            parts[key] = term.detach()
    return total, parts


# ----------------------------------------------------------------------------- schedule and groups


def lr_lambda(recipe: Any, steps_per_epoch: int) -> Callable[[int], float]:
    """The lr factor for a global step: step decay (x0.1 every ``lr_step`` epochs) or cosine, times warmup.

    Step decay changes at epoch boundaries, as in the paper; cosine and the
    linear warmup move every step.
    """
    total = max(1, recipe.epochs * steps_per_epoch)
    warm = recipe.warmup_epochs * steps_per_epoch

    def factor(step: int) -> float:
        if recipe.schedule == "step":
            f = 0.1 ** ((step // steps_per_epoch) // recipe.lr_step)
        else:
            f = 0.5 * (1.0 + math.cos(math.pi * min(step, total) / total))
        if step < warm:
            f *= (step + 1) / warm
        return f

    return factor


def param_groups(model: nn.Module, recipe: Any, *, from_imagenet: bool) -> list[dict[str, Any]]:
    """One group with weight decay, or TSM's groups when ``recipe.tsm_param_groups``.

    TSM's groups (official ``get_optim_policies``): no weight decay on norm
    layers and biases; when starting from ImageNet the new fc learns faster
    (weight lr x5, bias lr x10), since it alone starts from scratch.
    """
    params = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
    if not recipe.tsm_param_groups:
        return [{"name": "all", "params": [p for _, p in params], "lr": recipe.effective_lr,
                 "weight_decay": recipe.weight_decay}]
    fc = getattr(model, "fc", None)
    if not isinstance(fc, nn.Module):
        raise ValueError("recipe.tsm_param_groups needs a model with an `fc` head; "
                         "set tsm_param_groups: false for this block")
    fc_ids = {id(p) for p in fc.parameters()}
    norm_ids = {id(p) for m in model.modules() if isinstance(m, NORM_LAYERS) for p in m.parameters(False)}
    spec = {  # name: (lr multiplier, weight decay on?)
        "decay": (1.0, True), "no_decay": (1.0, False), "fc_weight": (5.0, True), "fc_bias": (10.0, False)}
    members: dict[str, list[nn.Parameter]] = {k: [] for k in spec}
    for name, p in params:
        is_bias = name.endswith("bias")
        if from_imagenet and id(p) in fc_ids:
            members["fc_bias" if is_bias else "fc_weight"].append(p)
        elif is_bias or id(p) in norm_ids:
            members["no_decay"].append(p)
        else:
            members["decay"].append(p)
    return [{"name": k, "params": members[k], "lr": recipe.effective_lr * mult,
             "weight_decay": recipe.weight_decay if decay else 0.0}
            for k, (mult, decay) in spec.items() if members[k]]


# ----------------------------------------------------------------------------- setup


def seed_everything(seed: int) -> None:
    """Seed torch (CPU and CUDA), numpy and Python, so two runs of one config agree on CPU."""
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def keep_freed_memory() -> bool:
    """Make glibc's malloc keep freed memory for the next step instead of handing it back to the OS.

    By default glibc serves big blocks with mmap above a threshold that moves with what is freed, and
    trims the top of the heap once enough of it is free; a training step frees and re-allocates the
    same activations, so with some allocation orders every step pays page faults on them again (TSM on
    R50 8x112: ~7,000 faults a step, about 3% of its step time; ``harness bench blocks --default-malloc``).
    Fixed thresholds (mmap only above 32 MiB, the most mallopt takes; trim only above 1 GiB) keep them
    mapped. Values are unchanged, only where memory comes from. Process-wide; False (nothing done) where
    libc is not glibc.
    """
    if platform.system() != "Linux" or platform.libc_ver()[0] != "glibc":
        return False
    m_trim_threshold, m_mmap_threshold = -1, -3  # <malloc.h>
    mallopt = ctypes.CDLL(None).mallopt
    return bool(mallopt(m_mmap_threshold, 32 << 20)) and bool(mallopt(m_trim_threshold, 1 << 30))


def _device() -> tuple[torch.device, torch.dtype | None]:
    """CUDA with autocast when present (bf16 if supported, else fp16); CPU in full precision."""
    if not torch.cuda.is_available():
        return torch.device("cpu"), None
    torch.backends.cudnn.benchmark = True
    return torch.device("cuda"), torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16


def _autocast(device: torch.device, dtype: torch.dtype | None):
    return torch.autocast(device.type, dtype=dtype) if dtype is not None else contextlib.nullcontext()


def _loaders(cfg: TrainConfig) -> tuple[Any, Any, list[str]]:
    from harness import probe
    from harness.data import build_loader

    kw = dict(batch_size=cfg.recipe.batch_size, seed=cfg.seed)
    train_loader, classes = build_loader(cfg.data, "train", train=True, **kw)
    indexed = {"with_index": True} if probe.enabled(cfg.data) else {}  # entry ids for stratified metrics
    val_loader, val_classes = build_loader(cfg.data, "val", train=False, **indexed, **kw)
    if list(classes) != list(val_classes):
        raise ValueError(f"train and val splits of {cfg.data.root} disagree on the classes "
                         f"({len(classes)} vs {len(val_classes)}); fix the annotations")
    return train_loader, val_loader, list(classes)


def create_model(cfg: TrainConfig, num_classes: int) -> nn.Module:
    """The row's block in ``cfg.backbone``; pretrained weights are loaded by the caller (see :func:`fit`)."""
    import blocks

    if (cfg.backbone.arch != "tiny" and "backbone" in cfg.row.model_fields_set
            and cfg.row.backbone != cfg.backbone.arch):
        log.warning("row asks for %s but the trial's backbone is %s; using the trial's",
                    cfg.row.backbone, cfg.backbone.arch)
    return blocks.create(cfg.row.block, backbone=cfg.backbone.create_kwargs(), num_classes=num_classes,
                         num_frames=cfg.data.frames, dropout=cfg.recipe.dropout, pretrained=None,
                         **cfg.row.options)


def _build(cfg: TrainConfig) -> _Trial:
    """Seed, then build loaders, model and optimiser in a fixed order (the order is part of the seed)."""
    torch.set_num_threads(cfg.recipe.threads)
    keep_freed_memory()
    seed_everything(cfg.seed)
    device, amp_dtype = _device()
    train_loader, val_loader, classes = _loaders(cfg)
    rank, world = process_group()
    if world > 1:
        train_loader = shard_loader(train_loader, rank, world)
    if len(train_loader) == 0:
        raise ValueError(f"the train split of {cfg.data.root} yields no batch; "
                         f"check the data or lower recipe.batch_size ({cfg.recipe.batch_size})")
    model = create_model(cfg, len(classes)).to(device)
    if device.type == "cuda":
        model = model.to(memory_format=torch.channels_last)
    groups = param_groups(model, cfg.recipe, from_imagenet=cfg.backbone.pretrained is not None)
    optimizer = torch.optim.SGD(groups, lr=cfg.recipe.effective_lr, momentum=cfg.recipe.momentum,
                                weight_decay=cfg.recipe.weight_decay)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lr_lambda(cfg.recipe, len(train_loader)))
    scaler = torch.amp.GradScaler("cuda", enabled=amp_dtype == torch.float16)
    # DDP copies rank 0's weights to every rank now; what fit loads later (checkpoint, ImageNet) is the
    # same file on every rank. The optimiser keeps the unwrapped parameters, which DDP shares.
    ddp = None
    if world > 1:
        ddp = nn.parallel.DistributedDataParallel(
            model, device_ids=[torch.cuda.current_device()] if device.type == "cuda" else None)
    return _Trial(cfg, device, model, train_loader, val_loader, optimizer, scheduler, scaler, amp_dtype,
                  _val_buckets(cfg, val_loader), rank, world, ddp)


def _val_buckets(cfg: TrainConfig, val_loader: Any) -> list[str | None] | None:
    """Each val entry's bucket (harness.probe), or None when the data section asks for no stratified metrics."""
    from harness import probe

    return probe.entry_buckets(cfg.data, val_loader.dataset.entries) if probe.enabled(cfg.data) else None


def _check_pretrained(cfg: TrainConfig) -> None:
    """Fail before any data is generated or read when the ImageNet file is not there."""
    path = cfg.backbone.pretrained
    if path and not Path(path).is_file():
        raise FileNotFoundError(f"backbone.pretrained: no file at {path}; give the path of a "
                                "torchvision ResNet state_dict (e.g. resnet50-11ad3fa6.pth)")


def _load_pretrained(model: nn.Module, path: str) -> dict[str, Any]:
    """Load a torchvision-format ImageNet ResNet (weights_only=True); blocks.load_pretrained logs the keys."""
    import blocks

    try:
        missing, unexpected = blocks.load_pretrained(model, path)
    except pickle.UnpicklingError as e:  # torch's own text advises weights_only=False: never
        raise ValueError(f"backbone.pretrained {path}: refused by torch.load(weights_only=True): "
                         f"{checkpoint.refusal(e)}; use a plain state_dict file") from e
    return {"path": str(path), "missing": list(missing), "unexpected": list(unexpected)}


# ----------------------------------------------------------------------------- data-parallel


def process_group() -> tuple[int, int]:
    """(rank, world size) of the ``torch.distributed`` group a launcher set up; (0, 1) without one."""
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


class RankShard(torch.utils.data.Sampler):
    """Rank ``rank``'s share of a sampler's order: every ``world``-th item, the same count on every rank.

    ``DistributedSampler(drop_last=True)`` over our seeded sampler, whose items
    carry each clip's augmentation seed (torch's would drop the seeds). The up
    to ``world - 1`` clips left over skip that epoch; the order, and so which
    ones, changes with the epoch.
    """

    def __init__(self, base: torch.utils.data.Sampler, rank: int, world: int):
        self.base, self.rank, self.world = base, rank, world

    def set_epoch(self, epoch: int) -> None:
        self.base.set_epoch(epoch)

    def __len__(self) -> int:
        return len(self.base) // self.world

    def __iter__(self):
        return itertools.islice(iter(self.base), self.rank, self.world * len(self), self.world)


# DataLoader settings a sharded copy keeps; batch_size is divided, the sampler wrapped.
LOADER_SETTINGS = ("num_workers", "collate_fn", "pin_memory", "drop_last", "timeout", "worker_init_fn",
                   "multiprocessing_context", "generator", "prefetch_factor", "persistent_workers",
                   "pin_memory_device", "in_order")


def shard_loader(loader: Any, rank: int, world: int) -> Any:
    """The train loader of one rank: ``batch_size / world`` clips a step from :class:`RankShard` of its order.

    The global batch stays ``recipe.batch_size``; scaling it with the world
    size would silently change the recipe (and the lr it was tuned for).
    """
    per_rank, left = divmod(loader.batch_size, world)
    if left:
        raise ValueError(f"recipe.batch_size {loader.batch_size} is the global batch and must split evenly "
                         f"over {world} data-parallel workers; pick a multiple of {world}")
    return type(loader)(loader.dataset, batch_size=per_rank, sampler=RankShard(loader.sampler, rank, world),
                        **{k: getattr(loader, k) for k in LOADER_SETTINGS})


def _all_ranks_finite(loss: torch.Tensor) -> bool:
    """Whether the loss is finite on every rank: a rank that stopped alone would leave the others
    waiting in the gradient all-reduce until the group's timeout."""
    flag = torch.isfinite(loss.detach()).float().reshape(1)
    dist.all_reduce(flag, op=dist.ReduceOp.MIN)
    return bool(flag.item())


def _sum_over_ranks(seen: int, correct: int, sums: dict[str, float],
                    device: torch.device) -> tuple[int, int, dict[str, float]]:
    """An epoch's clips seen, correct and loss sums added up over the group (the same on every rank)."""
    keys = sorted(sums)
    total = torch.tensor([seen, correct, *(sums[k] for k in keys)], dtype=torch.float64, device=device)
    dist.all_reduce(total)
    seen_all, correct_all, *rest = total.tolist()
    return int(seen_all), int(correct_all), dict(zip(keys, rest))


def _from_rank0(t: _Trial, compute: Callable[[], Any]) -> Any:
    """``compute()`` on rank 0, its result on every rank (the others wait in the broadcast)."""
    box = [compute() if t.writer else None]
    dist.broadcast_object_list(box, src=0)
    return box[0]


# ----------------------------------------------------------------------------- train / evaluate


def _train_epoch(t: _Trial, epoch: int, progress: bool) -> dict[str, float]:
    """One pass over the train loader; raises :class:`NonFinite` before a bad step is applied."""
    from tqdm import tqdm

    r = t.cfg.recipe
    t.model.train()
    sampler = getattr(t.train_loader, "sampler", None)
    if hasattr(sampler, "set_epoch"):  # order and augmentation seeds depend on the epoch, so a resume replays them
        sampler.set_epoch(epoch)
    sums: dict[str, float] = {}
    seen = correct = 0
    start = time.perf_counter()
    bar = tqdm(t.train_loader, desc=f"epoch {epoch + 1}/{r.epochs}", disable=not progress,
               leave=False, dynamic_ncols=True)
    for step, (clips, labels) in enumerate(bar):
        clips, labels = on_device(clips, t.device), labels.to(t.device, non_blocking=True)  # uint8 -> normalised there
        with _autocast(t.device, t.amp_dtype):
            logits = t.model(clips) if t.ddp is None else t.ddp(clips)  # DDP all-reduces in backward
        aux = t.model.aux_losses() if hasattr(t.model, "aux_losses") else {}
        loss, parts = compute_loss(logits, labels, aux, alpha=r.alpha, beta=r.beta)
        if not (torch.isfinite(loss) if t.ddp is None else _all_ranks_finite(loss)):
            raise NonFinite(f"non-finite loss at epoch {epoch + 1} step {step + 1}: "
                            + ", ".join(f"{k}={v.item():.4g}" for k, v in parts.items()))
        _step(t, loss, epoch, step)
        n = labels.shape[0]
        seen += n
        correct += (logits.argmax(1) == labels).sum().item()
        for k, v in {"loss": loss.detach(), **parts}.items():
            sums[k] = sums.get(k, 0.0) + v.item() * n
        bar.set_postfix(loss=f"{sums['loss'] / seen:.4f}")
    if t.device.type == "cuda":
        torch.cuda.synchronize()
    elapsed = time.perf_counter() - start
    if t.world > 1:  # the epoch's numbers over every rank's clips, the same on each rank
        seen, correct, sums = _sum_over_ranks(seen, correct, sums, t.device)
    out = {f"train_{k}": v / seen for k, v in sums.items()}  # train_loss, train_ce, train_interaction, ...
    out.update(train_top1=100.0 * correct / seen, clips_per_s=seen / max(elapsed, 1e-9))
    return out


def _step(t: _Trial, loss: torch.Tensor, epoch: int, step: int) -> None:
    """Backward, clip, optimiser and schedule step; a non-finite gradient norm stops the run."""
    t.optimizer.zero_grad(set_to_none=True)
    t.scaler.scale(loss).backward()
    clip = t.cfg.recipe.clip_grad
    if clip:
        t.scaler.unscale_(t.optimizer)
        norm = nn.utils.clip_grad_norm_(t.model.parameters(), clip)
        # With fp16 a non-finite norm is the GradScaler's business (it skips the step).
        if not t.scaler.is_enabled() and not torch.isfinite(norm):
            raise NonFinite(f"non-finite gradient norm at epoch {epoch + 1} step {step + 1}")
    t.scaler.step(t.optimizer)
    t.scaler.update()
    t.scheduler.step()


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
def evaluate(model: nn.Module, loader: Any, *, progress: bool = False,
             buckets: list[str | None] | None = None) -> dict[str, float]:
    """Val loss (CE of the view-averaged logits), top-1 and top-5 in percent.

    With ``buckets`` (one per dataset entry; the loader must yield entry
    indices, ``with_index=True``) also top-1 per bucket, see :mod:`harness.probe`.
    """
    from tqdm import tqdm

    device = next(model.parameters()).device
    amp_dtype = _device()[1] if device.type == "cuda" else None
    was_training = model.training
    model.eval()
    loss_sum, top1, top5, seen = 0.0, 0, 0, 0
    kept: list[tuple[torch.Tensor, torch.Tensor, torch.Tensor]] = []  # (logits, labels, entry index) for buckets
    for clips, labels, *index in tqdm(loader, desc="eval", disable=not progress, leave=False, dynamic_ncols=True):
        if buckets is not None and not index:
            raise ValueError("evaluate(buckets=...) needs a loader that yields entry indices; "
                             "build it with build_loader(..., with_index=True)")
        clips, labels = on_device(clips, device), labels.to(device, non_blocking=True)  # uint8 -> normalised there
        with _autocast(device, amp_dtype):
            logits = view_logits(model, clips).float()
        loss_sum += F.cross_entropy(logits, labels, reduction="sum").item()
        best = logits.topk(min(5, logits.shape[1]), dim=1).indices
        hits = best == labels[:, None]
        top1 += hits[:, 0].sum().item()
        top5 += hits.any(1).sum().item()
        seen += labels.shape[0]
        if buckets is not None:
            kept.append((logits.cpu(), labels.cpu(), index[0]))
    model.train(was_training)
    if seen == 0:
        raise ValueError("the evaluation loader yielded no clip; check the val split")
    out = {"val_loss": loss_sum / seen, "val_top1": 100.0 * top1 / seen, "val_top5": 100.0 * top5 / seen}
    if buckets is not None:
        from harness import probe

        logits, labels, index = (torch.cat(parts) for parts in zip(*kept))
        out.update(probe.stratified_top1(logits, labels, [buckets[i] for i in index.tolist()]))
    return out


# ----------------------------------------------------------------------------- checkpoints


def _state(t: _Trial, epoch: int, history: list[dict], best_top1: float | None,
           pretrained: dict | None) -> dict[str, Any]:
    return {
        "format": checkpoint.FORMAT,
        "epoch": epoch,
        "model": t.model.state_dict(),
        "optimizer": t.optimizer.state_dict(),
        "scheduler": t.scheduler.state_dict(),
        "scaler": t.scaler.state_dict(),
        "rng": checkpoint.rng_state(),
        "loader_rng": checkpoint.generator_states(t.train_loader),
        "best_top1": best_top1,
        "history": history,
        "config": t.cfg.model_dump(mode="json"),
        "pretrained": pretrained,
    }


def _flat(d: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    out = {}
    for k, v in d.items():
        if isinstance(v, dict):
            out.update(_flat(v, f"{prefix}{k}."))
        else:
            out[f"{prefix}{k}"] = v
    return out


def check_same_trial(saved: dict[str, Any], cfg: TrainConfig, path: Path) -> None:
    """Refuse to resume a checkpoint that another configuration wrote (it would mix two trials)."""
    old, new = _flat(_with_defaults(saved)), _flat(cfg.model_dump(mode="json"))
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


def _restore(t: _Trial, state: dict[str, Any]) -> None:
    t.model.load_state_dict(state["model"])
    t.optimizer.load_state_dict(state["optimizer"])
    t.scheduler.load_state_dict(state["scheduler"])
    t.scaler.load_state_dict(state["scaler"])
    checkpoint.set_rng_state(state["rng"])
    checkpoint.set_generator_states(t.train_loader, state["loader_rng"])


def _write_json(obj: Any, path: Path) -> None:
    """Atomic JSON write (temp file + os.replace), so a reader never sees half a file."""
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            json.dump(obj, f, indent=1, allow_nan=True)
        os.replace(tmp, path)
    except BaseException as e:  # a full disk: no temp file left behind, and the error names the real file
        Path(tmp).unlink(missing_ok=True)
        if isinstance(e, OSError):
            raise named(e, path) from e
        raise


def _finite_weights(model: nn.Module) -> bool:
    return all(torch.isfinite(p).all().item() for p in model.parameters())


# ----------------------------------------------------------------------------- fit


def fit(cfg: TrainConfig, out_dir: str | Path, *, report: Report | None = None, resume: bool = False,
        progress: bool = False) -> TrainResult:
    """Train and evaluate one configuration; call ``report(metrics, checkpoint_dir)`` after each epoch.

    ``report`` runs once ``checkpoints/last.pt`` of that epoch is on disk, so a
    caller (Ray Tune) may hand the folder on. ``resume=True`` continues from
    ``out_dir/checkpoints/last.pt`` when it exists; without it an existing
    checkpoint is an error rather than silently overwritten.

    Data-parallel (see the module docstring), each rank needs its own
    ``out_dir``; only rank 0 writes there, and the other ranks' ``report`` gets
    ``None`` for the folder (the same metrics, no checkpoint).
    """
    out_dir = Path(out_dir)
    ckpt_dir = out_dir / "checkpoints"
    last = ckpt_dir / "last.pt"
    if last.exists() and not resume:
        raise FileExistsError(f"{last} exists; pass resume=True (--resume) to continue it, "
                              "or choose another output folder")
    _check_pretrained(cfg)
    ckpt_dir.mkdir(parents=True, exist_ok=True)
    t = _build(cfg)
    history: list[dict[str, Any]] = []
    best_top1: float | None = None
    start, pretrained = 0, None
    if resume and last.exists():
        state = checkpoint.load(last)
        check_same_trial(state["config"], cfg, last)
        _restore(t, state)
        start, history, best_top1 = state["epoch"], list(state["history"]), state["best_top1"]
        pretrained = state.get("pretrained")
        log.info("resuming %s after epoch %d of %d", last, start, cfg.recipe.epochs)
    elif cfg.backbone.pretrained:
        pretrained = _load_pretrained(t.model, cfg.backbone.pretrained)
    try:
        for epoch in range(start, cfg.recipe.epochs):
            metrics = _epoch(t, epoch, progress)
            best_top1 = metrics["val_top1"] if best_top1 is None else max(best_top1, metrics["val_top1"])
            history.append(metrics)
            if t.writer:
                _save(t, epoch, history, best_top1, pretrained, out_dir)
            if report is not None:
                report(dict(metrics), ckpt_dir if t.writer else None)
    except NonFinite as e:
        log.error("run FAILED: %s; %s left as it was", e, last if last.exists() else "no checkpoint")
        return _finish(t, out_dir, history, best_top1, pretrained, "FAILED", str(e))
    return _finish(t, out_dir, history, best_top1, pretrained, "FINISHED", None)


def _epoch(t: _Trial, epoch: int, progress: bool) -> dict[str, Any]:
    """Train + validate one epoch; the metrics dict, with ir_interactions on the last epoch."""
    lr = t.cfg.recipe.effective_lr * t.scheduler.lr_lambdas[0](t.scheduler.last_epoch)  # this epoch's first step
    train = _train_epoch(t, epoch, progress)
    last = epoch + 1 == t.cfg.recipe.epochs  # stratified val metrics (harness.probe) with the last epoch's only
    def validate() -> dict[str, float]:
        return evaluate(t.model, t.val_loader, progress=progress, buckets=t.val_buckets if last else None)

    # Data-parallel: rank 0 validates the weights it checkpoints (its BatchNorm statistics) and every rank
    # gets its numbers; all ranks hold the same weights, so they all stop, or go on, together.
    val = validate() if t.world == 1 else _from_rank0(t, validate)
    if not (math.isfinite(val["val_loss"]) and _finite_weights(t.model)):
        raise NonFinite(f"non-finite validation loss or weights after epoch {epoch + 1}")
    metrics = {"epoch": epoch + 1, "train_loss": train.pop("train_loss"), **val, "lr": lr,
               "clips_per_s": train.pop("clips_per_s"), **train}
    if last:
        ir = _ir_interactions(t.model)
        if ir is not None:
            metrics["ir_interactions"] = int(ir)
    log.info("epoch %d/%d: train_loss %.4f val_loss %.4f top1 %.2f top5 %.2f lr %.3g %.1f clips/s",
             epoch + 1, t.cfg.recipe.epochs, metrics["train_loss"], val["val_loss"], val["val_top1"],
             val["val_top5"], lr, metrics["clips_per_s"])
    return metrics


def _save(t: _Trial, epoch: int, history: list[dict], best_top1: float, pretrained: dict | None,
          out_dir: Path) -> None:
    ckpt_dir = out_dir / "checkpoints"
    last = checkpoint.save_atomic(_state(t, epoch + 1, history, best_top1, pretrained), ckpt_dir / "last.pt")
    if history[-1]["val_top1"] >= best_top1:
        checkpoint.copy_atomic(last, ckpt_dir / "best.pt")
    _write_json(history, out_dir / "metrics.json")


def _ir_interactions(model: nn.Module) -> int | None:
    fn = getattr(model, "ir_interactions", None)
    return None if fn is None else fn()


def _fusion_matrices(model: nn.Module) -> list[list[list[float]]]:
    fn = getattr(model, "fusion_matrices", None)
    return [] if fn is None else [m.detach().float().cpu().tolist() for m in fn()]


def _finish(t: _Trial, out_dir: Path, history: list[dict], best_top1: float | None,
            pretrained: dict | None, status: str, reason: str | None) -> TrainResult:
    ok = status == "FINISHED"
    result = TrainResult(
        status=status, reason=reason, history=history, best_top1=best_top1,
        last_top1=history[-1]["val_top1"] if history else None,
        fusion_matrices=_fusion_matrices(t.model) if ok else [],
        ir_interactions=_ir_interactions(t.model) if ok else None,
        num_params=sum(p.numel() for p in t.model.parameters()), pretrained=pretrained)
    if t.writer:
        _write_json(result.to_dict(), out_dir / "result.json")
    return result


# ----------------------------------------------------------------------------- evaluation only


def evaluate_checkpoint(cfg: TrainConfig, path: str | Path, *, progress: bool = False) -> dict[str, Any]:
    """Evaluate a saved model on the val split with ``cfg.data``'s test_clips x test_crops views."""
    state = checkpoint.load(path)
    torch.set_num_threads(cfg.recipe.threads)
    seed_everything(cfg.seed)
    device, _ = _device()
    from harness import probe
    from harness.data import build_loader

    loader, classes = build_loader(cfg.data, "val", batch_size=cfg.recipe.batch_size, seed=cfg.seed, train=False,
                                   **({"with_index": True} if probe.enabled(cfg.data) else {}))
    model = create_model(cfg, len(classes))
    try:
        model.load_state_dict(state["model"])
    except RuntimeError as e:
        raise ValueError(f"{path} does not fit the model of this config (block {cfg.row.block!r}, "
                         f"backbone {cfg.backbone.arch}): {e}") from e
    model = model.to(device)
    metrics = evaluate(model, loader, progress=progress, buckets=_val_buckets(cfg, loader))
    return {"checkpoint": str(path), "epoch": state["epoch"], "clips": cfg.data.test_clips,
            "crops": cfg.data.test_crops, **metrics}


# ----------------------------------------------------------------------------- CLI


def main(args: Any) -> int:
    """``harness train CONFIG [--out DIR] [--resume] [--evaluate CKPT --clips N --crops M]``."""
    from harness.config import load_train
    from harness.data.formats import DataError
    from harness.errors import fail_config, fail_environment

    try:
        cfg = load_train(args.config)
    except Exception as e:  # noqa: BLE001 - every config error becomes one line and exit code 2
        return fail_config(args.config, e)
    evaluate_only = getattr(args, "evaluate", None)
    if not evaluate_only and (getattr(args, "clips", None) or getattr(args, "crops", None)):
        log.error("--clips and --crops apply to --evaluate only; training validates with data.test_clips/test_crops")
        return 2
    if evaluate_only and args.resume:
        log.error("--evaluate and --resume exclude each other: evaluation does not train")
        return 2
    out = Path(args.out) if args.out else Path("work/train") / cfg.name
    try:
        if evaluate_only:
            return _main_evaluate(cfg, args, out)
        result = fit(cfg, out, resume=args.resume, progress=True)
    except (FileNotFoundError, FileExistsError, ValueError, DataError) as e:
        log.error("%s", e)
        return 2
    except OSError as e:  # a full disk or a folder turned read-only: one line, and the way back
        return fail_environment(e, 1, then=None if evaluate_only else "fix it, then continue with --resume")
    best = "n/a" if result.best_top1 is None else f"{result.best_top1:.2f}"
    last = "n/a" if result.last_top1 is None else f"{result.last_top1:.2f}"
    print(f"{result.status}: {cfg.name} best val top-1 {best}, last {last}, "
          f"{len(result.history)} epochs -> {out}" + (f" ({result.reason})" if result.reason else ""))
    return 0 if result.status == "FINISHED" else 1


def _main_evaluate(cfg: TrainConfig, args: Any, out: Path) -> int:
    update = {k: v for k, v in (("test_clips", args.clips), ("test_crops", args.crops)) if v is not None}
    if update:
        cfg = cfg.model_copy(update={"data": cfg.data.model_validate({**cfg.data.model_dump(), **update})})
    metrics = evaluate_checkpoint(cfg, args.evaluate, progress=True)
    out.mkdir(parents=True, exist_ok=True)
    _write_json(metrics, out / "eval.json")
    print(json.dumps(metrics))
    return 0
