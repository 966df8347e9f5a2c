"""Spatio-temporal blocks for 2D ResNets: one registry, one factory.

    import blocks
    model = blocks.create("vps", backbone="resnet50", num_classes=174, num_frames=8, proportion=0.25)
    logits = model(clips)            # clips: (N, T, 3, H, W) -> (N, 174)

Every block module is imported here, so what is registered, and in what order,
is visible in one place.
"""
from .registry import available, check, get, option_types, options, origin, placement, plugins, register
from .resnet import VideoResNet, load_pretrained
from .factory import block_modules, create

from . import tsn, tsm, gst, vps, rf  # noqa: E402,F401  (registration)

__all__ = ["available", "block_modules", "check", "create", "get", "load_pretrained",
           "option_types", "options", "origin", "placement", "plugins", "register", "VideoResNet"]
