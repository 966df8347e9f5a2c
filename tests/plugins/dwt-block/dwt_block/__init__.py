"""A depthwise temporal conv between ResNet stages: the smallest learnable temporal block."""
import torch
from torch import nn

import blocks


@blocks.register("dw_temporal")
class DepthwiseTemporal(nn.Module):
    """x + a depthwise k-tap conv along time, zero-initialised (the pretrained output is kept).

    Args:
        kernel: taps along time (odd).
    """

    placement = "stage"  # after the stem and after layer1..3, like VPS

    def __init__(self, *, channels: int = 0, num_frames: int = 8, kernel: int = 3):
        super().__init__()
        self.num_frames = num_frames
        self.conv = nn.Conv3d(channels, channels, (kernel, 1, 1), padding=(kernel // 2, 0, 0),
                              groups=channels, bias=False)

    def init_weights(self) -> None:
        nn.init.zeros_(self.conv.weight)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        nt, c, h, w = x.shape  # blocks see (N*T, C, H, W)
        clip = x.view(nt // self.num_frames, self.num_frames, c, h, w).transpose(1, 2)
        return x + self.conv(clip).transpose(1, 2).reshape(nt, c, h, w)
