"""Clip transforms on batched uint8 tensors ``(T, 3, H, W)``: one op per clip, no per-frame PIL.

The recipe is TSM's (``ops/transforms.py``), with the same crop for every frame
of a clip:

* train: short side to ``resize`` (128 for the ablations, 256 for the main
  results), then ``GroupMultiScaleCrop``: a crop side drawn from
  ``scales x min(H, W)`` for height and width (aspect distortion at most one
  scale step, sides within 3 px of the output snapped to it), placed at one of
  13 fixed positions, resized to ``size`` (``data.multiscale_crop: false``: a
  ``size`` crop at one of those positions, no zoom, for scale probes); optional
  horizontal flip;
* eval: short side to ``resize``, then 1 centre crop, 3 crops along the long
  side (``GroupFullResSample``), 5 (corners + centre, ``GroupOverSample``) or
  10 (those 5 and their mirror images);
* uint8 out: ImageNet mean / std normalisation is the trainer's, after the
  batch is on its device (:func:`on_device`). A float clip is 4x the bytes to
  collate, pin and copy, and normalising in the worker cost as much as
  decoding a 176 x 100 JPEG clip (``harness bench data``); on the device it is
  one op per batch. The values are those of per-clip normalisation bit for
  bit: the same elementwise float32 ops, in the same order.

Resizing is bilinear with antialiasing directly on uint8 (torch >= 2.1), which
is faster than on float and close to Pillow's resize.
"""
from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

MEAN = (0.485, 0.456, 0.406)
STD = (0.229, 0.224, 0.225)
TSM_SCALES = (1.0, 0.875, 0.75, 0.66)
SOMETHING_FLIP_SWAP = {86: 87, 93: 94, 166: 167}  # GST: left/right classes of Something-Something v1/v2

Box = tuple[int, int, int, int]  # top, left, height, width


def to_tensor(frames: np.ndarray | torch.Tensor) -> torch.Tensor:
    """``(T, H, W, 3)`` uint8 array -> ``(T, 3, H, W)`` uint8 tensor (a channels-last view, no copy).

    A tensor is taken as ``(T, 3, H, W)`` uint8 already (what the GPU decoder returns, on its device).
    """
    if isinstance(frames, torch.Tensor):
        if frames.dim() != 4 or frames.shape[1] != 3 or frames.dtype != torch.uint8:
            raise ValueError(f"expected uint8 frames (T, 3, H, W), got {frames.dtype} {tuple(frames.shape)}")
        return frames
    if frames.ndim != 4 or frames.shape[-1] != 3 or frames.dtype != np.uint8:
        raise ValueError(f"expected uint8 frames (T, H, W, 3), got {frames.dtype} {frames.shape}")
    return torch.from_numpy(np.ascontiguousarray(frames)).permute(0, 3, 1, 2)


def resize(x: torch.Tensor, height: int, width: int) -> torch.Tensor:
    """Bilinear, antialiased resize of a ``(T, 3, H, W)`` uint8 clip."""
    if x.shape[-2:] == (height, width):
        return x
    if x.is_cuda:  # CUDA's antialiased resize takes float only (GPU decoder): resize, round back to uint8
        y = F.interpolate(x.float(), size=(height, width), mode="bilinear", antialias=True, align_corners=False)
        return y.round_().clamp_(0, 255).to(torch.uint8)
    return F.interpolate(x, size=(height, width), mode="bilinear", antialias=True, align_corners=False)


def resize_short(x: torch.Tensor, side: int) -> torch.Tensor:
    """Scale so the shorter side is ``side``, keeping the aspect ratio (TSM ``GroupScale``)."""
    h, w = x.shape[-2:]
    if h <= w:
        return resize(x, side, max(side, round(w * side / h)))
    return resize(x, max(side, round(h * side / w)), side)


def crop(x: torch.Tensor, box: Box) -> torch.Tensor:
    top, left, h, w = box
    return x[..., top:top + h, left:left + w]


def fix_offsets(height: int, width: int, crop_h: int, crop_w: int, more: bool = True) -> list[tuple[int, int]]:
    """TSM ``fill_fix_offset``: 5 (corners + centre) or 13 (plus edge middles and quarter points) (top, left)."""
    hs, ws = (height - crop_h) // 4, (width - crop_w) // 4
    grid = [(0, 0), (0, 4), (4, 0), (4, 4), (2, 2)]
    if more:
        grid += [(2, 0), (2, 4), (4, 2), (0, 2), (1, 1), (1, 3), (3, 1), (3, 3)]
    return [(i * hs, j * ws) for i, j in grid]


def multiscale_box(height: int, width: int, size: int, rng: np.random.Generator,
                   scales: tuple[float, ...] = TSM_SCALES, max_distort: int = 1) -> Box:
    """A random TSM ``GroupMultiScaleCrop`` box on a ``height x width`` frame (output side ``size``)."""
    base = min(height, width)
    sides = [size if abs(int(base * s) - size) < 3 else int(base * s) for s in scales]
    pairs = [(h, w) for i, h in enumerate(sides) for j, w in enumerate(sides) if abs(i - j) <= max_distort]
    ch, cw = pairs[rng.integers(len(pairs))]
    ch, cw = min(ch, height), min(cw, width)
    offsets = fix_offsets(height, width, ch, cw)
    top, left = offsets[rng.integers(len(offsets))]
    return top, left, ch, cw


def fixed_scale_box(height: int, width: int, size: int, rng: np.random.Generator) -> Box:
    """A ``size`` crop at a random one of the 13 ``fix_offsets`` positions: the position jitter of
    :func:`multiscale_box` without its zoom, so objects keep the size and speed they have at test time."""
    ch, cw = min(size, height), min(size, width)
    offsets = fix_offsets(height, width, ch, cw)
    top, left = offsets[rng.integers(len(offsets))]
    return top, left, ch, cw


def center_box(height: int, width: int, size: int) -> Box:
    return (height - size) // 2, (width - size) // 2, size, size


def view_boxes(height: int, width: int, size: int, crops: int) -> list[tuple[Box, bool]]:
    """Test crops as (box, mirrored): 1 centre, 3 along the long side, 5 corners + centre, 10 those 5 + mirrors."""
    if crops == 1:
        return [(center_box(height, width, size), False)]
    if crops == 3:  # GroupFullResSample: start, end and middle of the long side
        hs, ws = (height - size) // 4, (width - size) // 4
        if width >= height:
            pos = [(2 * hs, 0), (2 * hs, 4 * ws), (2 * hs, 2 * ws)]
        else:
            pos = [(0, 2 * ws), (4 * hs, 2 * ws), (2 * hs, 2 * ws)]
        return [((t, l, size, size), False) for t, l in pos]
    if crops in (5, 10):
        five = [((t, l, size, size), False) for t, l in fix_offsets(height, width, size, size, more=False)]
        return five + [(b, True) for b, _ in five] if crops == 10 else five
    raise ValueError(f"test crops must be 1, 3, 5 or 10, got {crops}")


def normalize(x: torch.Tensor) -> torch.Tensor:
    """uint8 ``(..., 3, H, W)`` -> float32 with ImageNet mean / std, on ``x``'s device."""
    mean = torch.tensor(MEAN, dtype=torch.float32, device=x.device).view(3, 1, 1)
    std = torch.tensor(STD, dtype=torch.float32, device=x.device).view(3, 1, 1)
    # contiguous first, on the uint8: the float ops on a channels-last-strided clip (what the uint8 resize
    # returns) run ~6x slower than on a contiguous one; the values do not depend on the layout.
    return (x.contiguous().float().div_(255.0) - mean).div_(std).contiguous()


def on_device(clips: torch.Tensor, device: torch.device | str) -> torch.Tensor:
    """A loader batch as model input: moved to ``device``, then normalised there if it is uint8 pixels.

    The one call the trainer makes where a batch meets the model. A float batch
    passes unchanged (moved only): it is model input already (the synthetic
    batches of ``harness.tune``'s checks, test loaders).
    """
    clips = clips.to(device, non_blocking=True)
    return normalize(clips) if clips.dtype == torch.uint8 else clips


def symmetric_swap(pairs: dict[int, int] | None) -> dict[int, int]:
    """``{86: 87}`` -> ``{86: 87, 87: 86}``; refuses a class mapped two ways."""
    out: dict[int, int] = {}
    for a, b in (pairs or {}).items():
        for k, v in ((a, b), (b, a)):
            if out.get(k, v) != v:
                raise ValueError(f"flip_label_swap maps class {k} to both {out[k]} and {v}")
            out[k] = v
    return out


def train_clip(frames: np.ndarray | torch.Tensor, label: int, *, resize_to: int, size: int, flip: bool,
               swap: dict[int, int], rng: np.random.Generator, multiscale: bool = True) -> tuple[torch.Tensor, int]:
    """Training view: short-side resize, multi-scale crop (or, ``multiscale=False``, a fixed-scale crop),
    optional flip (+label swap); ``(T, 3, S, S)`` uint8."""
    x = resize_short(to_tensor(frames), resize_to)
    box = (multiscale_box if multiscale else fixed_scale_box)(x.shape[-2], x.shape[-1], size, rng)
    x = resize(crop(x, box), size, size)
    if flip and rng.random() < 0.5:
        x = x.flip(-1)
        label = swap.get(label, label)
    return x, label


def eval_clip(frames: np.ndarray | torch.Tensor, *, resize_to: int, size: int, crops: int) -> torch.Tensor:
    """Test views of one clip: ``(crops, T, 3, S, S)`` uint8."""
    x = resize_short(to_tensor(frames), max(resize_to, size))
    views = []
    for box, mirrored in view_boxes(x.shape[-2], x.shape[-1], size, crops):
        v = crop(x, box)
        views.append(v.flip(-1) if mirrored else v)
    return torch.stack(views)
