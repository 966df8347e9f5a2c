"""TSM (Lin, Gan, Han, ICCV 2019, arXiv 1811.08383): the temporal shift.

Mechanism: on the residual branch of a bottleneck, before conv1, 1/fold_div of
the channels take their value from the next frame and another 1/fold_div from
the previous one; clip ends are zero padded (no wrap-around). The identity path
sees the unshifted tensor ("residual shift"). No parameters, no FLOPs.

Placement as the official code: every bottleneck of layer1..4, every other one
when layer3 has 23+ blocks (ResNet-101); ``every`` overrides it.
"""
from __future__ import annotations

from typing import Any

import torch
from torch import nn

from .registry import register


def _shift(x: torch.Tensor, num_frames: int, fold: int, back: bool = False) -> torch.Tensor:
    """Channels [0, fold) read frame t+1 and [fold, 2 fold) frame t-1 (``back``: the other way round, the
    gradient of the forward shift); the ends are zeros and the other channels are copied as they are."""
    v = x.unflatten(0, (-1, num_frames))  # (N, T, C, H, W)
    out = torch.empty_like(v)
    for channels, later in ((slice(0, fold), not back), (slice(fold, 2 * fold), back)):
        src, dst, end = (slice(1, None), slice(None, -1), -1) if later else (slice(None, -1), slice(1, None), 0)
        out[:, dst, channels] = v[:, src, channels]
        out[:, end, channels] = 0
    out[:, :, 2 * fold:] = v[:, :, 2 * fold:]
    return out.flatten(0, 1)


class _TemporalShift(torch.autograd.Function):
    """The shift with a hand-written backward: the gradient is the opposite shift, one copy of the tensor.
    Autograd's own backward of the slices would allocate a zero-filled tensor per slice and sum them."""

    @staticmethod
    def forward(ctx: Any, x: torch.Tensor, num_frames: int, fold: int) -> torch.Tensor:
        ctx.num_frames, ctx.fold = num_frames, fold
        return _shift(x, num_frames, fold)

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> tuple[torch.Tensor, None, None]:
        return _shift(grad.contiguous(), ctx.num_frames, ctx.fold, back=True), None, None


def temporal_shift(x: torch.Tensor, num_frames: int, fold: int) -> torch.Tensor:
    """Shift (N*T, C, H, W): channels [0, fold) from t+1, [fold, 2 fold) from t-1, rest unchanged."""
    return _TemporalShift.apply(x, num_frames, fold)


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
