"""The action perceptron synthesizer (PSN, Tian et al., arXiv 2007.11460, Fig. 3, Eq. 1).

Mechanism, one residual block between ResNet stages (after conv1..conv4, i.e.
after the stem, layer1, layer2, layer3):

    x -> 1x1 reduce (C -> width = proportion * C)
      -> spatial bag: identity | 3x3 | 3x3 dilation 2 | 3x3 max-pool   (BN + ReLU after the convs only)
      -> fusion: a width x width matrix mixing spatial groups into temporal groups
      -> temporal bag: identity | k3 | k3 dilation 2 | temporal max-pool 3
      -> 1x1 expand (width -> C), zero-initialised, added to x.

Composing spatial kernel j with temporal kernel i through T_ij synthesises
kernels of G_s x G_t shapes (16 for 5x5x5), most of them irregular. The zero
expand keeps the pretrained network's output unchanged at init.

What we had to guess (the paper's supplement is not public; see
docs/vps-layout.md): the 1x1 reduce/expand pair that sets the "feature
proportion", full (non-grouped) convs inside each group, and temporal convs
without BN. This layout matches the paper's fusion params (0.086M),
Ours-1/16 params (24.05M) and Ours GFLOPs at 224 (36.19) exactly, but gives
24.77M params for Ours where the paper prints 27.55M, and 9.48 GFLOPs at 112
where it prints 9.12; no layout with these insertion points can match those
two (they contradict the other figures). We keep the faithful layout and show
the residual in ``harness profile``.
"""
from __future__ import annotations

import math
from typing import Literal

import torch
import torch.nn.functional as F
from torch import nn

from .fusion import Fusion
from .registry import register

Kernel = int | Literal["pool"]  # 1 = identity, k > 1 = a conv with receptive field k, "pool" = the pooling branch


def rf_kernels(max_rf: int) -> list[Kernel]:
    """Eq. 1's bag for a maximum receptive field L: 1, 3, ..., L and the pooling branch."""
    if max_rf not in (3, 5, 7):
        raise ValueError(f"maximum receptive field must be 3, 5 or 7, got {max_rf}")
    return [*range(1, max_rf + 1, 2), "pool"]


def group_sizes(width: int, groups: int) -> list[int]:
    return [width // groups] * groups


def bag_width(channels: int, proportion: float, groups: list[int]) -> int:
    """proportion * C rounded to a multiple of every bag's group count (at least one channel a group)."""
    step = math.lcm(*groups)
    return step * max(1, round(channels * proportion / step))


class SpatialConv(nn.Sequential):
    """k x k receptive field: a dilated 3x3 (dilation on) or a true k x k; "1+1+1" splits it into k x 1 and 1 x k."""

    def __init__(self, c: int, k: int, dilation: bool, factorization: str, relu: bool):
        taps, dil = (3, (k - 1) // 2) if dilation else (k, 1)
        pad = dil * (taps - 1) // 2
        if factorization == "2+1":
            convs = [nn.Conv2d(c, c, taps, padding=pad, dilation=dil, bias=False)]
        else:
            convs = [nn.Conv2d(c, c, (taps, 1), padding=(pad, 0), dilation=(dil, 1), bias=False),
                     nn.Conv2d(c, c, (1, taps), padding=(0, pad), dilation=(1, dil), bias=False)]
        super().__init__(*convs, nn.BatchNorm2d(c), *([nn.ReLU(inplace=True)] if relu else []))


class SpatialBag(nn.Module):
    """Applies one kernel per channel group of (N*T, C, H, W) and concatenates."""

    def __init__(self, sizes: list[int], kernels: list[Kernel], *, pool: str, dilation: bool,
                 factorization: str, relu: bool):
        super().__init__()
        self.sizes = sizes
        self.branches = nn.ModuleList(
            _pool2d(pool) if k == "pool" else nn.Identity() if k == 1
            else SpatialConv(c, k, dilation, factorization, relu)
            for c, k in zip(sizes, kernels)
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        parts = torch.split(x, self.sizes, dim=1)
        return torch.cat([b(p) for b, p in zip(self.branches, parts)], dim=1)


class TemporalConv(nn.Conv3d):
    """A (k, 1, 1) Conv3d applied to (N, C, T, H*W) as a (k, 1) conv2d: the same weights (and checkpoint
    keys) and the same result, but oneDNN's 2D kernel instead of the CPU's slow 3D fallback."""

    padding: tuple[int, ...]  # TemporalBag always gives a tuple, never Conv3d's "same" / "valid"

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.conv2d(x, self.weight.squeeze(-1), None, 1, (self.padding[0], 0), (self.dilation[0], 1))


class TemporalBag(nn.Module):
    """Per group: identity, a temporal conv (k taps or dilated 3 taps, no BN) or a temporal pool."""

    def __init__(self, sizes: list[int], kernels: list[Kernel], num_frames: int, *, pool: str,
                 dilation: bool):
        super().__init__()
        self.sizes = sizes
        self.num_frames = num_frames
        branches = []
        for c, k in zip(sizes, kernels):
            if k == "pool":
                branches.append(_pool_t(pool))
            elif k == 1:
                branches.append(nn.Identity())
            else:
                taps, dil = (3, (k - 1) // 2) if dilation else (k, 1)
                branches.append(TemporalConv(c, c, (taps, 1, 1), padding=(dil * (taps - 1) // 2, 0, 0),
                                             dilation=(dil, 1, 1), bias=False))
        self.branches = nn.ModuleList(branches)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        nt, c, h, w = x.shape
        t = self.num_frames
        # Each branch sees its group as (N, C_g, T, H*W), a transposed view of the (N, T, C, H*W) input;
        # transposing the outputs back lets one cat write the result in the input's layout (the identity
        # group is read in place, never copied through a transposed layout and back).
        parts = torch.split(x.view(nt // t, t, c, -1), self.sizes, dim=2)  # -1: no traced h * w
        out = [b(p.transpose(1, 2)).transpose(1, 2) for b, p in zip(self.branches, parts)]
        return torch.cat(out, dim=2).view(nt, c, h, w)


def _pool2d(kind: str) -> nn.Module:
    return {"max": nn.MaxPool2d(3, 1, 1), "avg": nn.AvgPool2d(3, 1, 1, count_include_pad=False),
            "none": nn.Identity()}[kind]


def _pool_t(kind: str) -> nn.Module:
    """Pooling over 3 frames of (N, C, T, H*W)."""
    return {"max": nn.MaxPool2d((3, 1), 1, (1, 0)),
            "avg": nn.AvgPool2d((3, 1), 1, (1, 0), count_include_pad=False),
            "none": nn.Identity()}[kind]


class Synthesizer(nn.Module):
    """reduce -> spatial bag -> fusion -> temporal bag -> expand, added to the input.

    The general form that VPS and the RF-* baselines instantiate. An empty
    spatial bag skips the spatial stage (RF-L-Inception-T).
    """

    placement = "stage"

    def __init__(self, *, channels: int, num_frames: int, proportion: float,
                 spatial: list[Kernel], temporal: list[Kernel], fusion: str = "learned",
                 dropout_rate: float | None = None, pool: str = "max", inter_relu: bool = True,
                 dilation: bool = True, factorization: str = "2+1"):
        super().__init__()
        if not 0 < proportion <= 1:
            raise ValueError(f"proportion must be in (0, 1], got {proportion}")
        if pool not in ("max", "avg", "none"):
            raise ValueError(f"pool must be max, avg or none, got {pool!r}")
        if factorization not in ("2+1", "1+1+1"):
            raise ValueError(f"factorization must be '2+1' or '1+1+1', got {factorization!r}")
        counts = [len(b) for b in (spatial, temporal) if b]
        width = bag_width(channels, proportion, counts)
        self.reduce = nn.Conv2d(channels, width, 1, bias=False)
        self.spatial = None
        if spatial:
            s_sizes = group_sizes(width, len(spatial))
            self.spatial = SpatialBag(s_sizes, spatial, pool=pool, dilation=dilation,
                                      factorization=factorization, relu=inter_relu)
        self.fusion = None
        if spatial and temporal and len(spatial) > 1:
            self.fusion = Fusion(s_sizes, group_sizes(width, len(temporal)), num_frames,
                                 kind=fusion, rate=dropout_rate)
        self.temporal = TemporalBag(group_sizes(width, len(temporal)), temporal, num_frames,
                                    pool=pool, dilation=dilation)
        self.expand = nn.Conv2d(width, channels, 1, bias=False)

    def init_weights(self) -> None:
        nn.init.zeros_(self.expand.weight)  # the pretrained network's output is unchanged at init

    @staticmethod
    def validate_options(opts: dict) -> None:
        """Checks a study file can fail on before anything is built."""
        if not 0 < opts["proportion"] <= 1:
            raise ValueError(f"proportion must be in (0, 1], got {opts['proportion']}")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        z = self.reduce(x)
        if self.spatial is not None:
            z = self.spatial(z)
        if self.fusion is not None:
            z = self.fusion(z)
        return x + self.expand(self.temporal(z))


@register("vps")
class VPS(Synthesizer):
    """The paper's synthesizer ("Ours").

    Args:
        proportion: feature proportion routed through the synthesizer (paper: 1/4; 1/16 for Ours-1/16).
        spatial_rf: maximum spatial receptive field, 3 | 5 | 7 (paper: 5).
        temporal_rf: maximum temporal receptive field, 3 | 5 | 7 (paper: 5; 7 in Table 4).
        fusion: learned | grouping | shuffle | dropout (Table 2).
        dropout_rate: rate of the dropout fusion (required for it, paper: 0.75).
        pool: max | avg | none: the pooling branches (Table 3).
        inter_relu: ReLU after the spatial convs, between spatial and temporal (Table 3).
        dilation: dilated 3-tap kernels for RF 5/7; False = true 5x5 / k5 kernels (Table 3).
        factorization: "2+1" (2D spatial then 1D temporal) or "1+1+1" (spatial split into k x 1, 1 x k).
    """

    def __init__(self, *, channels: int = 0, num_frames: int = 8, proportion: float = 0.25,
                 spatial_rf: int = 5, temporal_rf: int = 5, fusion: str = "learned",
                 dropout_rate: float | None = None, pool: str = "max", inter_relu: bool = True,
                 dilation: bool = True, factorization: str = "2+1"):
        super().__init__(channels=channels, num_frames=num_frames, proportion=proportion,
                         spatial=rf_kernels(spatial_rf), temporal=rf_kernels(temporal_rf),
                         fusion=fusion, dropout_rate=dropout_rate, pool=pool,
                         inter_relu=inter_relu, dilation=dilation, factorization=factorization)

    @staticmethod
    def validate_options(opts: dict) -> None:
        """Contradictions a study file can contain, caught before anything is built."""
        if opts["fusion"] not in ("learned", "grouping", "shuffle", "dropout"):
            raise ValueError(f"fusion must be learned, grouping, shuffle or dropout, got {opts['fusion']!r}")
        if opts["fusion"] == "dropout" and opts["dropout_rate"] is None:
            raise ValueError("fusion='dropout' needs dropout_rate (the paper uses 0.75)")
        if opts["fusion"] != "dropout" and opts["dropout_rate"] is not None:
            raise ValueError(f"dropout_rate is only used by fusion='dropout', not {opts['fusion']!r}")
        Synthesizer.validate_options(opts)
        if opts["pool"] not in ("max", "avg", "none"):
            raise ValueError(f"pool must be max, avg or none, got {opts['pool']!r}")
        if opts["factorization"] not in ("2+1", "1+1+1"):
            raise ValueError(f"factorization must be '2+1' or '1+1+1', got {opts['factorization']!r}")
        for key in ("spatial_rf", "temporal_rf"):
            if opts[key] not in (3, 5, 7):
                raise ValueError(f"{key} must be 3, 5 or 7, got {opts[key]}")
