"""A TAM-style temporal gate before each bottleneck's 3x3 conv (after TANet's local branch, arXiv 2005.06803)."""
import math

import torch
from torch import nn

import blocks


def elementwise(inputs, outputs) -> int:
    """fvcore handle: one FLOP per output element (a product; a sigmoid counted as one)."""
    return math.prod(outputs[0].type().sizes())


@blocks.register("temporal_gate")
class TemporalGate(nn.Module):
    """x * 2 sigmoid(a depthwise k-tap conv over time of x's spatial mean), zero-initialised (a gate of 1).

    Args:
        kernel: taps along time (odd).
    """

    placement = "pre_conv2"  # between conv1 and conv2 of each bottleneck; channels = the bottleneck width
    flop_handles = {"aten::mul": elementwise, "aten::sigmoid": elementwise}  # fvcore skips both

    def __init__(self, *, channels: int = 0, num_frames: int = 8, kernel: int = 3):
        super().__init__()
        self.num_frames = num_frames
        self.conv = nn.Conv1d(channels, channels, kernel, padding=kernel // 2, groups=channels, bias=False)

    @staticmethod
    def validate_options(opts: dict) -> None:
        """Checks a study file fails on before anything is built (types are checked already)."""
        if opts["kernel"] < 1 or opts["kernel"] % 2 == 0:
            raise ValueError(f"kernel must be odd and positive, got {opts['kernel']}")

    def init_weights(self) -> None:
        nn.init.zeros_(self.conv.weight)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        nt, c, h, w = x.shape  # blocks see (N*T, C, H, W)
        pooled = x.mean(dim=(2, 3)).view(nt // self.num_frames, self.num_frames, c).transpose(1, 2)
        gate = 2 * torch.sigmoid(self.conv(pooled))  # (N, C, T), 1 at init
        return x * gate.transpose(1, 2).reshape(nt, c, 1, 1)
