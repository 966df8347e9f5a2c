"""ResNet v1.5 for clips, with torchvision's state_dict names.

Layout of a clip: the model takes ``(N, T, C, H, W)`` and folds it once into
``(N*T, C, H, W)``; every block receives that 4D tensor and the ``num_frames``
T it was built with, and unfolds time itself where it needs it. T is checked in
one place, :meth:`VideoResNet.forward`.

Parameter names are torchvision's (``conv1``, ``bn1``, ``layerN.i.convK``,
``layerN.i.downsample.0/1``, ``fc``), so an ImageNet checkpoint saved by
torchvision loads with :func:`load_pretrained`. Blocks are siblings the
network calls, never wrappers around a pretrained conv, so no key is renamed:
a residual op lives in ``layerN.i.temporal`` (no parameters for TSM), an op
before the 3x3 conv in ``layerN.i.pre_conv2``, a conv2 replacement in
``layerN.i.conv2`` and a between-stage block in ``inserts.K``.

The head is TSN's: dropout, a new ``fc`` initialised N(0, 0.001), logits
averaged over T (before any softmax).
"""
from __future__ import annotations

import logging
from typing import Callable, Protocol, TypeGuard

import torch
from torch import nn

log = logging.getLogger(__name__)

ARCHS = {"resnet50": [3, 4, 6, 3], "resnet101": [3, 4, 23, 3]}
EXPANSION = 4

# Builders a block supplies; each returns a module or None (= nothing there).
ResidualOp = Callable[[int, int, int], nn.Module | None]  # (stage, index, channels)
Conv2Op = Callable[[int, int, int, int, int], nn.Module | None]  # (stage, index, in, out, stride)
StageOp = Callable[[int, int], nn.Module | None]  # (point, channels); point 0 = after stem


class FusionLayer(Protocol):
    """What the trainer and the profile read from a block's fusion layer (blocks.fusion.Fusion, or a plugin's
    layer with the same methods): found by its ``interaction_loss``, so that the ResNet imports no block."""

    learnable: bool

    def interaction_loss(self) -> torch.Tensor: ...
    def capacity_loss(self) -> torch.Tensor | None: ...
    def ir_interactions(self, include_diagonal: bool = False) -> int: ...
    def block_norms(self) -> torch.Tensor: ...


def _is_fusion(module: nn.Module) -> TypeGuard[FusionLayer]:
    return hasattr(module, "interaction_loss")


def conv3x3(cin: int, cout: int, stride: int = 1) -> nn.Conv2d:
    return nn.Conv2d(cin, cout, 3, stride=stride, padding=1, bias=False)


class Bottleneck(nn.Module):
    """torchvision's Bottleneck (v1.5: stride on the 3x3), plus three optional slots.

    ``temporal`` runs on the residual branch's input only (the identity path
    sees the unshifted tensor: TSM's "residual shift"). ``pre_conv2`` runs on
    conv1's output (after bn1 and ReLU), at the bottleneck's width, right
    before the 3x3 conv (TAM, TEA, TIN), so such a block keeps the pretrained
    conv2 instead of owning it. ``conv2`` may be a block that replaces the 3x3
    conv (GST).
    """

    def __init__(self, inplanes: int, planes: int, stride: int = 1,
                 temporal: nn.Module | None = None, conv2: nn.Module | None = None,
                 pre_conv2: nn.Module | None = None):
        super().__init__()
        width = planes
        self.temporal = temporal or nn.Identity()
        self.conv1 = nn.Conv2d(inplanes, width, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(width)
        self.pre_conv2 = pre_conv2 or nn.Identity()  # an empty slot has no parameters: torchvision's keys stay
        self.conv2 = conv2 or conv3x3(width, width, stride)
        self.bn2 = nn.BatchNorm2d(width)
        self.conv3 = nn.Conv2d(width, planes * EXPANSION, 1, bias=False)
        self.bn3 = nn.BatchNorm2d(planes * EXPANSION)
        self.relu = nn.ReLU(inplace=True)
        self.downsample = None
        if stride != 1 or inplanes != planes * EXPANSION:
            self.downsample = nn.Sequential(
                nn.Conv2d(inplanes, planes * EXPANSION, 1, stride=stride, bias=False),
                nn.BatchNorm2d(planes * EXPANSION),
            )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        identity = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(self.temporal(x))))
        out = self.relu(self.bn2(self.conv2(self.pre_conv2(out))))
        out = self.bn3(self.conv3(out))
        return self.relu(out + identity)


class VideoResNet(nn.Module):
    """A 2D ResNet applied per frame, with a block inserted, and TSN's head.

    Args:
        depths: bottlenecks per stage ([3, 4, 6, 3] for ResNet-50).
        width: channels of the stem and of layer1's bottleneck (64 for ResNet-50).
        num_classes: classes of the new fc.
        num_frames: T, frames per clip.
        dropout: dropout before the fc (the paper: 0.3).
        small_stem: a 3x3 stem of this stride (1 or 2) without max-pool, for the tiny inputs of the
            laptop profile; 0/False = ResNet's 7x7 stride-2 stem and max-pool.
        residual_op / pre_conv2_op / conv2_op / stage_op: builders from the block (see module docstring);
            ``pre_conv2_op`` gets the bottleneck's width as its channels.
        stages: the insertion points that ``stage_op`` fills (0 = after the stem, 1..3 = after layer1..3).
    """

    # set with setattr, one per entry of depths (torchvision's names, which pretrained weights are keyed by)
    layer1: nn.Sequential
    layer2: nn.Sequential
    layer3: nn.Sequential
    layer4: nn.Sequential

    def __init__(self, depths: list[int], *, width: int = 64, num_classes: int = 1000,
                 num_frames: int = 8, dropout: float = 0.5, small_stem: int = 0,
                 residual_op: ResidualOp | None = None, conv2_op: Conv2Op | None = None,
                 stage_op: StageOp | None = None, stages: tuple[int, ...] = (),
                 pre_conv2_op: ResidualOp | None = None):
        super().__init__()
        self.num_frames = num_frames
        self.maxpool: nn.Module
        if small_stem:
            self.conv1 = nn.Conv2d(3, width, 3, stride=int(small_stem), padding=1, bias=False)
            self.maxpool = nn.Identity()
        else:
            self.conv1 = nn.Conv2d(3, width, 7, stride=2, padding=3, bias=False)
            self.maxpool = nn.MaxPool2d(3, stride=2, padding=1)
        self.bn1 = nn.BatchNorm2d(width)
        self.relu = nn.ReLU(inplace=True)

        inplanes = width
        stage_widths = [width]  # channels at each insertion point
        for s, depth in enumerate(depths):
            planes = width * 2**s
            blocks = []
            for i in range(depth):
                stride = 2 if (s > 0 and i == 0) else 1
                temporal = residual_op(s, i, inplanes) if residual_op else None
                conv2 = conv2_op(s, i, planes, planes, stride) if conv2_op else None
                pre_conv2 = pre_conv2_op(s, i, planes) if pre_conv2_op else None
                blocks.append(Bottleneck(inplanes, planes, stride, temporal, conv2, pre_conv2))
                inplanes = planes * EXPANSION
            setattr(self, f"layer{s + 1}", nn.Sequential(*blocks))
            stage_widths.append(inplanes)
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.dropout = nn.Dropout(dropout)
        self.fc = nn.Linear(inplanes, num_classes)

        for bad in set(stages) - set(range(len(depths))):
            raise ValueError(f"insertion stage {bad} does not exist; valid: 0..{len(depths) - 1}")
        self.inserts = nn.ModuleList(
            (stage_op(p, stage_widths[p]) if stage_op and p in stages else None) or nn.Identity()
            for p in range(len(depths))
        )
        self._init_weights()

    def _init_weights(self) -> None:
        for m in self.modules():
            if isinstance(m, (nn.Conv2d, nn.Conv3d)):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            elif isinstance(m, (nn.BatchNorm2d, nn.BatchNorm3d)):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)
        nn.init.normal_(self.fc.weight, 0, 0.001)
        nn.init.zeros_(self.fc.bias)
        # Blocks come last: their own init (zero residuals, fixed fusion matrices) wins.
        for m in self.modules():
            init = getattr(m, "init_weights", None)  # a convention of blocks, not an nn.Module method
            if m is not self and init is not None:
                init()

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        """(N*T, 3, H, W) -> (N*T, C) pooled per-frame features."""
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        stages = [self.layer1, self.layer2, self.layer3, self.layer4][: len(self.inserts)]
        for insert, stage in zip(self.inserts, stages):
            x = stage(insert(x))
        return torch.flatten(self.avgpool(x), 1)

    def forward_head(self, features: torch.Tensor, batch: int) -> torch.Tensor:
        """Per-frame logits averaged over T (TSN's 'avg' consensus)."""
        logits = self.fc(self.dropout(features))
        return logits.view(batch, self.num_frames, -1).mean(dim=1)

    def forward(self, clips: torch.Tensor) -> torch.Tensor:
        """(N, T, 3, H, W) -> (N, num_classes)."""
        if clips.dim() != 5 or clips.shape[1] != self.num_frames:
            raise ValueError(
                f"expected clips (N, T={self.num_frames}, 3, H, W), got {tuple(clips.shape)}"
            )
        return self.forward_head(self.forward_features(clips.flatten(0, 1)), clips.shape[0])

    # --- what the trainer and the profile read from the fusion layers ---
    def _fusions(self) -> list[FusionLayer]:
        return [m for m in self.modules() if _is_fusion(m)]

    def aux_losses(self) -> dict[str, torch.Tensor]:
        """L_interaction and L_capacity averaged over insertion stages (from the last forward)."""
        fusions = [f for f in self._fusions() if f.learnable]
        if not fusions:
            return {}
        out = {"interaction": torch.stack([f.interaction_loss() for f in fusions]).mean()}
        capacity = [c for f in fusions if (c := f.capacity_loss()) is not None]
        if len(capacity) == len(fusions):  # every stage has one
            out["capacity"] = torch.stack(capacity).mean()
        return out

    def ir_interactions(self, include_diagonal: bool = False) -> int | None:
        fusions = self._fusions()
        if not fusions:
            return None
        return sum(f.ir_interactions(include_diagonal) for f in fusions)

    def fusion_matrices(self) -> list[torch.Tensor]:
        """One G x G matrix of ||T_ij||_1 per insertion stage (Fig. 5)."""
        return [f.block_norms().detach() for f in self._fusions()]


def load_pretrained(model: nn.Module, path: str) -> tuple[list[str], list[str]]:
    """Load a torchvision-format ResNet checkpoint; report missing and unexpected keys.

    The ImageNet fc (1000 classes) is skipped when its shape differs from ours.
    Blocks may adapt pretrained tensors in their ``_load_from_state_dict``
    (GST slices the 3x3 kernel); what stays missing is the blocks' own weights.
    """
    state = torch.load(path, map_location="cpu", weights_only=True)
    if isinstance(state, dict) and "state_dict" in state:
        state = state["state_dict"]
    own = model.state_dict()
    state = {k: v for k, v in state.items()
             if not (k.startswith("fc.") and k in own and own[k].shape != v.shape)}
    result = model.load_state_dict(state, strict=False)
    log.info("pretrained %s: %d missing keys %s, %d unexpected keys %s", path,
             len(result.missing_keys), result.missing_keys[:8],
             len(result.unexpected_keys), result.unexpected_keys[:8])
    return list(result.missing_keys), list(result.unexpected_keys)
