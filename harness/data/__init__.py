"""Video data: annotation readers, TSN sampling, decoding, transforms, loaders and the synth set.

The trainer's two calls::

    from harness.data import build_loader, ensure_synth
    loader, classes = build_loader(data, "train", batch_size=16, seed=0, train=True)

Modules, one concern each: ``formats`` (annotation readers), ``sampling``
(TSN / TSM frame indices), ``video`` (decord / Pillow decoding), ``transforms``
(batched uint8 clip transforms), ``dataset`` (Dataset, sampler, loader),
``synth`` (the reversal-paired synthetic set), ``inspect`` (``harness data inspect``),
``fingerprint`` (``harness data fingerprint``), ``cache`` (``data.cache``: decode once),
``gpu`` (``data.decoder: gpu``), ``realsize`` and ``speed`` (``harness bench data`` on real formats).

Names are imported lazily so that ``harness data synth`` and the synth pool
workers do not pay for importing torch.
"""
from __future__ import annotations

import importlib
from typing import Any

_EXPORTS = {
    "build_loader": "dataset",
    "build_dataset": "dataset",
    "ClipDataset": "dataset",
    "ClipLoader": "dataset",
    "BadDataError": "dataset",
    "ensure_synth": "synth",
    "read_split": "formats",
    "Entry": "formats",
    "Split": "formats",
    "DataError": "formats",
    "AnnotationError": "formats",
    "UnreadableError": "video",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    if name in _EXPORTS:
        return getattr(importlib.import_module(f".{_EXPORTS[name]}", __name__), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
