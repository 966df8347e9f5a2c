"""The receptive-field baselines of PSN's Table 1 / Fig. 4 (arXiv 2007.11460).

The paper describes them only by Fig. 4 and Table 1's columns (maximum RF,
number of kernel shapes, irregular?, multi-scale?) and by one sentence on
feature proportions ("RF-S 1/6 vs RF-L 1/8"). Our reading, each built from the
synthesizer's parts at the same insertion points (after conv1..conv4) so the
rows differ only in what the table varies:

- ``rf_s``: one regular 3x3x3 kernel: 3x3 spatial conv (BN, ReLU) then a k3
  temporal conv, on 1/6 of the features. 1 shape, single scale.
- ``rf_l``: one regular 5x5x5 kernel, built dilated as the paper's Fig. 4 says
  ("kernel size 5 implemented as dilated"), on 1/8 of the features.
- ``rf_l_inception``: the synthesizer's two bags (1, 3, 5, pool) with channel
  grouping, i.e. the 4 diagonal shapes 1x1x1, 3x3x3, 5x5x5 and pool; the paper's
  Table 2 says grouping "degenerates to the RF-L-Inception baseline".
- ``rf_l_inception_t``: the temporal bag only (1, 3, 5, pool along time, max RF
  1x5, 4 shapes), on 1/4 of the features.

The paper's parameter counts for these rows (27.28M-27.57M) are about 2.8M
above what such blocks can hold next to the FLOPs it reports for Ours; see
blocks/vps.py. ``harness profile`` shows our counts next to the paper's.
"""
from __future__ import annotations

from .registry import register
from .vps import Synthesizer, rf_kernels


@register("rf_s")
class RFS(Synthesizer):
    """Single regular 3x3x3 kernel. Args: proportion (default 1/6)."""

    def __init__(self, *, channels: int = 0, num_frames: int = 8, proportion: float = 1 / 6):
        super().__init__(channels=channels, num_frames=num_frames, proportion=proportion,
                         spatial=[3], temporal=[3])


@register("rf_l")
class RFL(Synthesizer):
    """Single regular 5x5x5 kernel (dilated 3-tap convs). Args: proportion (default 1/8)."""

    def __init__(self, *, channels: int = 0, num_frames: int = 8, proportion: float = 1 / 8):
        super().__init__(channels=channels, num_frames=num_frames, proportion=proportion,
                         spatial=[5], temporal=[5])


@register("rf_l_inception")
class RFLInception(Synthesizer):
    """Multi-scale bags, no routing between them. Args: proportion (default 1/4)."""

    def __init__(self, *, channels: int = 0, num_frames: int = 8, proportion: float = 0.25):
        super().__init__(channels=channels, num_frames=num_frames, proportion=proportion,
                         spatial=rf_kernels(5), temporal=rf_kernels(5), fusion="grouping")


@register("rf_l_inception_t")
class RFLInceptionT(Synthesizer):
    """Multi-scale temporal bag only (max RF 1x5). Args: proportion (default 1/4)."""

    def __init__(self, *, channels: int = 0, num_frames: int = 8, proportion: float = 0.25):
        super().__init__(channels=channels, num_frames=num_frames, proportion=proportion,
                         spatial=[], temporal=rf_kernels(5))
