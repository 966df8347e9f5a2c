"""``blocks.create``: a registered block inserted into a VideoResNet."""
from __future__ import annotations

from typing import Any, Mapping

from torch import nn

from . import registry
from .resnet import ARCHS, VideoResNet, load_pretrained


def _backbone_spec(backbone: str | Mapping[str, Any]) -> dict[str, Any]:
    spec = {"arch": backbone} if isinstance(backbone, str) else dict(backbone)
    arch = spec.pop("arch", "resnet50")
    if arch in ARCHS:
        if spec:
            raise TypeError(f"backbone {arch!r} takes no options, got {sorted(spec)}")
        return {"depths": ARCHS[arch], "width": 64, "small_stem": False}
    if arch == "tiny":
        unknown = set(spec) - {"width", "depths", "stem_stride"}
        if unknown:
            raise TypeError(f"backbone 'tiny' has no option(s) {sorted(unknown)}; valid: width, depths, stem_stride")
        return {"depths": list(spec.get("depths", [1, 1, 1, 1])), "width": int(spec.get("width", 16)),
                "small_stem": int(spec.get("stem_stride", 1))}
    raise KeyError(f"unknown backbone {arch!r}; available: {', '.join([*ARCHS, 'tiny'])}")


def create(name: str, *, backbone: str | Mapping[str, Any] = "resnet50", num_classes: int,
           num_frames: int, dropout: float = 0.5, pretrained: str | None = None,
           **options: Any) -> VideoResNet:
    """Build a VideoResNet with block ``name`` inserted where the block says.

    Args:
        name: a registered block (``blocks.available()``).
        backbone: "resnet50", "resnet101", or ``{"arch": "tiny", "width": 16, "depths": [1, 1, 1, 1]}``.
        num_classes: classes of the new fc.
        num_frames: T, frames per clip; every block is built for it.
        dropout: dropout before the fc.
        pretrained: path to a torchvision-format ImageNet checkpoint (loaded with weights_only=True).
        **options: the block's options (``blocks.options(name)``); unknown ones raise and list the valid ones.
    """
    cls, placement = registry.get(name), registry.placement(name)
    registry.check(name, options)
    spec = _backbone_spec(backbone)
    placement_defaults = registry.PLACEMENT_OPTIONS.get(placement, {})
    place = {k: options.pop(k, v) for k, v in placement_defaults.items()}
    kwargs = dict(num_frames=num_frames, **options)
    build: dict[str, Any] = {}
    if placement == "residual":
        # TSM shifts every bottleneck, every other one when layer3 is deep (ResNet-101).
        every = place["every"] or (2 if spec["depths"][2] >= 23 else 1)
        build["residual_op"] = lambda s, i, c: cls(channels=c, **kwargs) if i % every == 0 else None
    elif placement == "pre_conv2":  # channels = the bottleneck's width, what conv2 reads
        build["pre_conv2_op"] = lambda s, i, c: cls(channels=c, **kwargs)
    elif placement == "conv2":
        build["conv2_op"] = lambda s, i, cin, cout, stride: cls(
            in_channels=cin, out_channels=cout, stride=stride, **kwargs)
    elif placement == "stage":
        build["stage_op"] = lambda p, c: cls(channels=c, **kwargs)
        build["stages"] = tuple(place["stages"])
    else:
        cls(**kwargs)  # a block without a module still validates its options
    model = VideoResNet(spec["depths"], width=spec["width"], num_classes=num_classes,
                        num_frames=num_frames, dropout=dropout, small_stem=spec["small_stem"], **build)
    if pretrained:
        load_pretrained(model, pretrained)
    return model


def block_modules(model: nn.Module) -> list[nn.Module]:
    """The inserted block instances of a model (for profiling blocks apart from the backbone)."""
    registered = tuple(registry.get(name) for name in registry.available())  # once, not per module
    return [m for m in model.modules() if type(m) in registered]
