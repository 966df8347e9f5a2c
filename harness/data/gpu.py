"""``data.decoder: gpu``: videos decoded on the CUDA device (NVDEC) by torchcodec, instead of decord on a CPU.

Why: at the paper's 8 x 112 a GPU trains ResNet-50 at hundreds to thousands of
clips/s, while one CPU core decodes ~10-50 WebM / MP4 clips/s (``harness bench
data``): tens of cores per GPU. NVDEC decodes on the GPU's own video engine.

Status, said plainly: this path was written against torchcodec 0.17's
documented API (``VideoDecoder(path, device="cuda")``, ``get_frames_at``) and
has not run: the machine it was written on has no GPU, and torchcodec's PyPI
wheel is a CUDA build that cannot load beside CPU torch. The CPU path
(decord, simplejpeg) stays the default and the tested one. ``python -m
harness.data.gpu FILE...`` (a section of ``make gpu-check``) decodes files both ways on a
GPU machine and prints the pixel difference and the speed of each.

What it needs: a CUDA GPU, a CUDA build of torch (PyPI's default on Linux),
``pip install torchcodec`` (its wheel matches that torch) and FFmpeg's shared
libraries 4-7 (``apt-get install ffmpeg``). What changes: the decoder's colour
conversion and NVDEC are not decord's swscale, so pixels differ slightly from
the CPU path (not bit for bit; the check prints by how much); resizes run on
float on the device and round back to uint8; decoding runs in the training
process, so ``data.workers`` must be 0 (CUDA does not work in forked
DataLoader workers). JPEG frame folders decode on the CPU.
"""
from __future__ import annotations

import sys
import time
from pathlib import Path

import numpy as np
import torch

from ..config import Data
from .formats import DataError, Entry
from .video import UnreadableError, check_count

INSTALL = ("a CUDA GPU, CUDA torch, torchcodec and FFmpeg's shared libraries: pip install torchcodec; "
           "apt-get install ffmpeg (see docs/paper-profile.md)")


def check(data: Data) -> None:
    """Raise :class:`DataError` saying what to fix when ``data.decoder: gpu`` cannot run here."""
    if data.format in ("sthv1", "list"):
        raise DataError(f"data.decoder: gpu decodes videos; {data.format} is JPEG frame folders, which decode on "
                        "the CPU: set data.decoder: cpu")
    if data.cache != "off":
        raise DataError("data.cache keeps CPU-decoded frames; with data.decoder: gpu set data.cache: off")
    if data.pin_memory:
        raise DataError("data.decoder: gpu yields batches already on the GPU, which cannot be pinned: "
                        "set data.pin_memory: false")
    if data.workers:
        raise DataError("data.decoder: gpu decodes in the training process (CUDA does not work in forked "
                        f"DataLoader workers): set data.workers: 0 (it is {data.workers})")
    if not torch.cuda.is_available():
        raise DataError(f"data.decoder: gpu needs {INSTALL}; torch {torch.__version__} sees no CUDA device here. "
                        "Use data.decoder: cpu")
    try:
        import torchcodec.decoders  # noqa: F401
    except (ImportError, OSError, RuntimeError) as e:
        raise DataError(f"data.decoder: gpu needs {INSTALL}; importing torchcodec failed: "
                        f"{str(e).splitlines()[0] if str(e) else type(e).__name__}") from e


class GpuVideoClip:
    """A video opened by torchcodec on the GPU: ``num_frames`` and ``get`` like :class:`~harness.data.video.VideoClip`.

    ``get`` returns a uint8 ``(T, 3, H, W)`` CUDA tensor; the transforms accept it as it is.
    """

    def __init__(self, path: Path, promised: int | None = None):
        from torchcodec.decoders import VideoDecoder

        if not path.is_file():
            raise UnreadableError(f"{path}: missing")
        try:  # exact seek mode scans the file once: the frame count is what decodes, as decord's is
            self._decoder = VideoDecoder(str(path), device="cuda", seek_mode="exact")
            self.num_frames = int(self._decoder.metadata.num_frames or 0)
        except (RuntimeError, ValueError) as e:
            raise UnreadableError(f"{path}: cannot decode on the GPU ({str(e).splitlines()[0]})") from e
        check_count(path, self.num_frames, promised)
        self.path = path

    def get(self, indices: np.ndarray) -> torch.Tensor:
        idx = np.clip(np.asarray(indices, dtype=np.int64), 0, self.num_frames - 1).tolist()
        try:
            return self._decoder.get_frames_at(indices=idx).data
        except (RuntimeError, ValueError) as e:
            raise UnreadableError(f"{self.path}: cannot decode frames on the GPU ({str(e).splitlines()[0]})") from e


def open_gpu(entry: Entry) -> GpuVideoClip:
    """:func:`~harness.data.video.open_entry` for ``data.decoder: gpu``."""
    return GpuVideoClip(entry.path, entry.num_frames)


def compare(paths: list[str]) -> list[str]:
    """Each file decoded by decord (CPU) and torchcodec (GPU): a line with frame counts, pixel difference, times."""
    from .sampling import val_indices
    from .video import open_entry

    lines = []
    for p in paths:
        cpu = open_entry(Entry(Path(p), 0))
        gpu = GpuVideoClip(Path(p))
        idx = val_indices(cpu.num_frames, 8)
        t0 = time.perf_counter()
        a = cpu.get(idx)
        t1 = time.perf_counter()
        b = gpu.get(idx).permute(0, 2, 3, 1).cpu().numpy()
        t2 = time.perf_counter()
        diff = np.abs(a.astype(np.int16) - b.astype(np.int16)) if a.shape == b.shape else None
        what = (f"mean |diff| {diff.mean():.2f}, max {diff.max()}" if diff is not None
                else f"shapes differ: {a.shape} vs {b.shape}")
        lines.append(f"{p}: frames {cpu.num_frames} (cpu) / {gpu.num_frames} (gpu); {what}; "
                     f"8 frames in {1e3 * (t1 - t0):.1f} ms (cpu) / {1e3 * (t2 - t1):.1f} ms (gpu)")
    return lines


def main(paths: list[str]) -> int:
    """``python -m harness.data.gpu FILE...``: each file decoded by decord (CPU) and torchcodec (GPU)."""
    try:
        check(Data(format="sthv2", root=".", decoder="gpu"))
    except DataError as e:
        print(f"gpu decoder: {e}", file=sys.stderr)
        return 2
    print("\n".join(compare(paths)))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
