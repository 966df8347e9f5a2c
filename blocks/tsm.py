"""TSM (Lin, Gan, Han, ICCV 2019, arXiv 1811.08383): the temporal shift.

Mechanism: on the residual branch of a bottleneck, before conv1, 1/fold_div of
the channels take their value from the next frame and another 1/fold_div from
the previous one; clip ends are zero padded (no wrap-around). The identity path
sees the unshifted tensor ("residual shift"). No parameters, no FLOPs.

Placement as the official code: every bottleneck of layer1..4, every other one
when layer3 has 23+ blocks (ResNet-101); ``every`` overrides it.
"""
from __future__ import annotations

import torch
from torch import nn

from .registry import register


def temporal_shift(x: torch.Tensor, num_frames: int, fold: int) -> torch.Tensor:
    """Shift (N*T, C, H, W): channels [0, fold) from t+1, [fold, 2 fold) from t-1, rest unchanged."""
    v = x.unflatten(0, (-1, num_frames))  # (N, T, C, H, W)
    zeros = torch.zeros_like(v[:, :1, :fold])
    # One cat per direction; the untouched channels are a view, copied once by the final cat.
    left = torch.cat([v[:, 1:, :fold], zeros], dim=1)
    right = torch.cat([zeros, v[:, :-1, fold:2 * fold]], dim=1)
    return torch.cat([left, right, v[:, :, 2 * fold:]], dim=2).flatten(0, 1)


@register("tsm")
class TemporalShift(nn.Module):
    """Residual temporal shift.

    Args:
        channels: input channels of the bottleneck (set by the ResNet).
        num_frames: T.
        fold_div: 1/fold_div of the channels move each way (paper: 8).
    """

    placement = "residual"

    def __init__(self, *, channels: int = 0, num_frames: int, fold_div: int = 8):
        super().__init__()
        if fold_div < 2:
            raise ValueError(f"tsm fold_div must be >= 2, got {fold_div}")
        self.num_frames = num_frames
        self.fold = channels // fold_div  # a constant, so tracing (fvcore) sees no size arithmetic

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return temporal_shift(x, self.num_frames, self.fold)
