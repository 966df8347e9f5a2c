"""FLOP counts must not silently skip work: every op fvcore skips is declared or known zero-cost."""
import pytest
import torch
from torch import nn

import blocks
from blocks.resnet import VideoResNet
from harness.profile import uncounted_ops

TINY = {"arch": "tiny", "width": 4, "depths": [1, 1, 1, 1]}
VARIANTS = [(name, {}) for name in blocks.available()] + [
    ("vps", {"fusion": "shuffle"}), ("vps", {"fusion": "dropout", "dropout_rate": 0.5}),
    ("vps", {"pool": "avg"}), ("vps", {"factorization": "1+1+1"}), ("vps", {"dilation": False})]


@pytest.mark.parametrize("name, options", VARIANTS)
def test_every_block_op_is_counted_or_declared_free(name, options):
    model = blocks.create(name, backbone=TINY, num_classes=3, num_frames=4, **options).eval()
    assert uncounted_ops(model, torch.zeros(1, 4, 3, 16, 16)) == set()


class CumulativeTime(nn.Module):
    """A toy block whose op (cumsum) fvcore has no handle for."""

    placement = "stage"

    def __init__(self, channels, num_frames):
        super().__init__()
        self.num_frames = num_frames

    def forward(self, x):
        return x.unflatten(0, (-1, self.num_frames)).cumsum(1).flatten(0, 1)


def toy_model(block_cls):
    return VideoResNet([1, 1, 1, 1], width=4, num_classes=3, num_frames=4, small_stem=True,
                       stage_op=lambda p, c: block_cls(c, 4), stages=(0,)).eval()


def test_an_uncovered_toy_op_fails_the_check(monkeypatch):
    monkeypatch.setattr(blocks, "block_modules", lambda m: [m.inserts[0]])
    assert uncounted_ops(toy_model(CumulativeTime), torch.zeros(1, 4, 3, 16, 16)) == {"aten::cumsum"}


def test_a_declared_flop_handle_covers_the_op(monkeypatch):
    class Declared(CumulativeTime):
        flop_handles = {"aten::cumsum": lambda inputs, outputs: 0}

    monkeypatch.setattr(blocks, "block_modules", lambda m: [m.inserts[0]])
    assert uncounted_ops(toy_model(Declared), torch.zeros(1, 4, 3, 16, 16)) == set()
