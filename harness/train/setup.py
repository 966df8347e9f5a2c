"""Everything one trial builds before its first step, in a fixed order (the order is part of the seed)."""
from __future__ import annotations

import contextlib
import hashlib
import logging
import pickle
import random
from contextlib import AbstractContextManager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn
from torch.utils.data import DataLoader

import blocks
from harness import checkpoint
from harness.config import TrainConfig
from harness.device import choose
from harness.data import build_loader
from harness.train.distributed import process_group, shard_loader
from harness.train.memory import keep_freed_memory
from harness.train.recipe import lr_lambda, param_groups

log = logging.getLogger(__name__)


@dataclass
class Setup:
    """A built trial: config, device, model, loaders, optimiser, schedule, scaler, and its rank."""

    cfg: TrainConfig
    device: torch.device
    model: nn.Module
    train_loader: DataLoader[Any]
    val_loader: DataLoader[Any]
    optimizer: torch.optim.Optimizer
    scheduler: torch.optim.lr_scheduler.LambdaLR
    scaler: torch.amp.GradScaler
    amp_dtype: torch.dtype | None
    rank: int = 0  # this process in a data-parallel group; (0, 1) on one process
    world: int = 1
    ddp: nn.Module | None = None  # the DDP wrapper that trains ``model`` across ranks; None on one process

    @property
    def writer(self) -> bool:
        """Only rank 0 writes checkpoints and files; the other ranks hold the same weights."""
        return self.rank == 0


def seed_everything(seed: int) -> None:
    """Seed torch (CPU and CUDA), numpy and Python, so two runs of one config agree on CPU."""
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def device() -> tuple[torch.device, torch.dtype | None]:
    """CUDA with autocast when present (bf16 if supported, else fp16); CPU in full precision.
    A trial that was given a GPU raises instead of training on the CPU (:mod:`harness.device`)."""
    if choose(torch.cuda.is_available()) == "cpu":
        return torch.device("cpu"), None
    torch.backends.cudnn.benchmark = True
    return torch.device("cuda"), torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16


def autocast(dev: torch.device, dtype: torch.dtype | None) -> AbstractContextManager[Any]:
    return torch.autocast(dev.type, dtype=dtype) if dtype is not None else contextlib.nullcontext()


def loaders(cfg: TrainConfig) -> tuple[DataLoader[Any], DataLoader[Any], list[str]]:
    """The train loader and the val loader; val batches carry each clip's entry index (per-clip predictions)."""
    kw = dict(batch_size=cfg.recipe.batch_size, seed=cfg.seed)
    train_loader, classes = build_loader(cfg.data, "train", train=True, **kw)
    val_loader, val_classes = build_loader(cfg.data, "val", train=False, with_index=True, **kw)
    if list(classes) != list(val_classes):
        raise ValueError(f"train and val splits of {cfg.data.root} disagree on the classes "
                         f"({len(classes)} vs {len(val_classes)}); fix the annotations")
    return train_loader, val_loader, list(classes)


def create_model(cfg: TrainConfig, num_classes: int) -> nn.Module:
    """The row's block in ``cfg.backbone`` (the row's own backbone: harness.config.trial_config); pretrained
    weights are loaded by the caller (see :func:`harness.train.fit`)."""
    return blocks.create(cfg.row.block, backbone=cfg.backbone.create_kwargs(), num_classes=num_classes,
                         num_frames=cfg.data.frames, dropout=cfg.recipe.dropout, pretrained=None,
                         **cfg.row.options)


def build(cfg: TrainConfig) -> Setup:
    """Seed, then build loaders, model and optimiser in a fixed order (the order is part of the seed)."""
    torch.set_num_threads(cfg.recipe.threads)
    keep_freed_memory()
    seed_everything(cfg.seed)
    dev, amp_dtype = device()
    train_loader, val_loader, classes = loaders(cfg)
    rank, world = process_group()
    if world > 1:
        train_loader = shard_loader(train_loader, rank, world)
    if len(train_loader) == 0:
        raise ValueError(f"the train split of {cfg.data.root} yields no batch; "
                         f"check the data or lower recipe.batch_size ({cfg.recipe.batch_size})")
    model = create_model(cfg, len(classes)).to(dev)
    if dev.type == "cuda":
        model = model.to(memory_format=torch.channels_last)  # type: ignore[call-overload]
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
            model, device_ids=[torch.cuda.current_device()] if dev.type == "cuda" else None)
    return Setup(cfg, dev, model, train_loader, val_loader, optimizer, scheduler, scaler, amp_dtype, rank, world,
                 ddp)


def check_pretrained(cfg: TrainConfig) -> None:
    """Fail before any data is generated or read when the ImageNet file is not there."""
    path = cfg.backbone.weights(cfg.backbone.arch)
    if path and not Path(path).is_file():
        raise FileNotFoundError(f"backbone.pretrained: no file at {path}; give the path of a "
                                "torchvision ResNet state_dict (e.g. resnet50-11ad3fa6.pth)")


def load_pretrained(model: nn.Module, path: str) -> dict[str, Any]:
    """Load a torchvision-format ImageNet ResNet (weights_only=True); blocks.load_pretrained logs the keys.
    Returns what was loaded: the path, the file's SHA-256 (torchvision names its files after the first 8 hex
    digits; ``harness doctor`` knows them), and the missing and unexpected keys."""
    try:
        missing, unexpected = blocks.load_pretrained(model, path)
    except pickle.UnpicklingError as e:  # torch's own text advises weights_only=False: never
        raise ValueError(f"backbone.pretrained {path}: refused by torch.load(weights_only=True): "
                         f"{checkpoint.refusal(e)}; use a plain state_dict file") from e
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return {"path": str(path), "sha256": digest.hexdigest(), "missing": list(missing),
            "unexpected": list(unexpected)}
