"""The ``pre_conv2`` placement: a block between conv1 and conv2 of every bottleneck, at the bottleneck's width.

A toy block is registered for the length of each test (and removed after), so the
registry-parametrised tests elsewhere never see it.
"""
import logging

import pytest
import torch
from torch import nn

import blocks
from blocks import registry
from harness.config import Row
from harness.profile import profile_row

TINY = {"arch": "tiny", "width": 4, "depths": [1, 1, 1, 1]}
NAME = "toy_pre_conv2"
R50_WIDTHS = 3 * 64 + 4 * 128 + 6 * 256 + 3 * 512  # the bottleneck widths of ResNet-50, summed


class ChannelScale(nn.Module):
    """x times one learned scale per channel (an elementwise product: fvcore skips it)."""

    placement = "pre_conv2"

    def __init__(self, *, channels: int = 0, num_frames: int = 8, init: float = 1.0):
        super().__init__()
        self.channels = channels
        self.scale = nn.Parameter(torch.full((channels,), init))  # consumes no random numbers

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * self.scale.view(1, -1, 1, 1)


@pytest.fixture
def toy(monkeypatch):
    blocks.available()  # plugins loaded first, so the toy is not mistaken for one
    monkeypatch.setitem(registry._BLOCKS, NAME, ChannelScale)
    monkeypatch.setitem(registry._ORIGIN, NAME, "tests")
    return NAME


def test_every_bottleneck_gets_the_block_at_its_width(toy):
    model = blocks.create(toy, backbone=TINY, num_classes=3, num_frames=4)
    bottlenecks = [m for m in model.modules() if isinstance(m, blocks.resnet.Bottleneck)]
    assert len(bottlenecks) == 4
    for b in bottlenecks:
        assert isinstance(b.pre_conv2, ChannelScale)
        assert b.pre_conv2.channels == b.conv1.out_channels == b.conv2.in_channels
        assert isinstance(b.conv2, nn.Conv2d)  # the block does not own the 3x3 conv


def test_it_runs_between_conv1_and_conv2(toy):
    torch.manual_seed(0)
    plain = blocks.create("tsn", backbone=TINY, num_classes=3, num_frames=4).eval()
    torch.manual_seed(0)
    unit = blocks.create(toy, backbone=TINY, num_classes=3, num_frames=4).eval()
    torch.manual_seed(0)
    halved = blocks.create(toy, backbone=TINY, num_classes=3, num_frames=4, init=0.5).eval()
    clips = torch.randn(2, 4, 3, 16, 16)
    assert torch.allclose(unit(clips), plain(clips))
    # Halving conv2's input halves conv2's output, which bn2 (eval: a fixed affine map) sees.
    x = plain.maxpool(plain.relu(plain.bn1(plain.conv1(clips.flatten(0, 1)))))
    b, h = plain.layer1[0], halved.layer1[0]
    mid = b.relu(b.bn1(b.conv1(x)))
    assert torch.allclose(h.conv2(h.pre_conv2(mid)), b.conv2(mid) / 2, atol=1e-6)


def test_pretrained_keys_keep_torchvisions_names(toy, tmp_path):
    imagenet = blocks.create("tsn", num_classes=1000, num_frames=1)
    path = tmp_path / "resnet50.pth"
    torch.save(imagenet.state_dict(), path)
    model = blocks.create(toy, num_classes=174, num_frames=8)
    own = [k for k in model.state_dict() if ".pre_conv2." in k]
    assert len(own) == 16 and all(k.endswith("pre_conv2.scale") for k in own)
    assert [k for k in model.state_dict() if k not in own] == list(blocks.create("tsn", num_classes=174,
                                                                                 num_frames=8).state_dict())
    missing, unexpected = blocks.load_pretrained(model, str(path))
    assert unexpected == [] and sorted(missing) == sorted(own + ["fc.weight", "fc.bias"])
    assert torch.equal(model.layer2[1].conv2.weight, imagenet.layer2[1].conv2.weight)


def test_params_attributed_to_the_block_are_its_own(toy, caplog):
    with caplog.at_level(logging.WARNING, logger="harness.profile"):
        mine = profile_row(Row(block=toy), num_classes=174, sizes=[112])
    tsn = profile_row(Row(block="tsn"), num_classes=174, sizes=[112])
    assert mine["params_blocks"] == R50_WIDTHS  # one scale per channel of each bottleneck's width
    assert mine["params_backbone"] == tsn["params_backbone"] and mine["params_head"] == tsn["params_head"]
    assert mine["frames"] == 8
    # The product is skipped by fvcore: said as a warning naming the block and the op.
    assert any(NAME in r.message and "aten::mul" in r.message for r in caplog.records)
