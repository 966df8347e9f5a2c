"""TSN (Wang et al., ECCV 2016): the plain 2D network, frames averaged.

Nothing is inserted; the head every model shares (dropout, new fc initialised
N(0, 0.001), logits averaged over T) is TSN's and lives in
``blocks.resnet.VideoResNet``.
"""
from __future__ import annotations

from torch import nn

from .registry import register


@register("tsn")
class TSN(nn.Module):
    """No temporal modelling: the control row of every table."""

    placement = "none"

    def __init__(self, *, num_frames: int):
        super().__init__()
