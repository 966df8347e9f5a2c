"""The clip dataset and :func:`build_loader`, the one call the trainer makes.

::

    loader, classes = build_loader(data, "train", batch_size=16, seed=0, train=True)
    for clips, labels in loader:   # train: (N, T, 3, S, S); eval: (N, V, T, 3, S, S); labels int64 (N,)
        ...

Determinism: the sampler draws, from ``(seed, epoch)``, the order and one seed
per sample; the dataset derives every random choice of a sample (frame
offsets, crop, flip) from that seed alone. A run is therefore the same for any
number of workers, and epoch ``e`` can be replayed with ``loader.sampler.set_epoch(e)``.

Bad files: a missing entry is found when the dataset is built (one ``stat``
each); a truncated or undecodable one when it is first read. Either is marked
in a flag array shared by all DataLoader workers, logged with its path, and
replaced by the next readable entry (with that entry's label), so a worker
never dies on one file. When the marked entries exceed ``max_bad_fraction`` of
the split, the loader (in the main process, after the batch) raises
:class:`BadDataError` giving the count and the first paths. What this gives up: eval replaces a bad sample with its
neighbour instead of dropping it, so ``harness data inspect`` before a long
run is the way to know the split is clean.
"""
from __future__ import annotations

import ctypes
import logging
import multiprocessing as mp
from pathlib import Path
from typing import TYPE_CHECKING, Any, Iterator

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, Sampler

from ..config import Data
from .cache import FrameCache, open_cache
from .formats import DataError, Entry, read_split
from .sampling import clip_indices, train_indices
from .transforms import SOMETHING_FLIP_SWAP, eval_clip, symmetric_swap, train_clip
from .video import Clip, UnreadableError, open_entry

if TYPE_CHECKING:
    from .gpu import GpuVideoClip

log = logging.getLogger(__name__)

MAX_CONSECUTIVE_BAD = 64  # a run of unreadable neighbours this long means the data, not a file, is broken


class BadDataError(DataError):
    """More of a split is unreadable than ``Data.max_bad_fraction`` allows."""

    def __init__(self, message: str):
        super().__init__(message)


class BadEntries:
    """Which entries of a split are unreadable, shared across DataLoader worker processes.

    A byte per entry in shared memory (inherited by forked workers, pickled
    into spawned ones); the paths stay per process, which is enough to name
    the first bad ones in the error.
    """

    def __init__(self, entries: list[Entry], max_fraction: float, split: str):
        self._flags = mp.Array(ctypes.c_uint8, max(len(entries), 1), lock=True)  # shared with the workers
        self._paths = [str(e.path) for e in entries]
        self.max_fraction = max_fraction
        self.split = split

    def __contains__(self, index: int) -> bool:
        return bool(self._flags[index])

    def count(self) -> int:
        with self._flags.get_lock():
            return int(np.frombuffer(memoryview(self._flags.get_obj()), dtype=np.uint8).sum())

    def paths(self, limit: int | None = None) -> list[str]:
        flags = np.frombuffer(memoryview(self._flags.get_obj()), dtype=np.uint8)[: len(self._paths)]
        return [self._paths[i] for i in np.flatnonzero(flags)[:limit]]

    def mark(self, index: int, reason: str, quiet: bool = False) -> None:
        """Record an unreadable entry and log it; :meth:`check` (in the main process) decides whether to stop."""
        if not self._flags[index]:
            self._flags[index] = 1
            log.log(logging.DEBUG if quiet else logging.WARNING, "skipping unreadable %s entry: %s", self.split, reason)

    def check(self) -> None:
        n, total = self.count(), len(self._paths)
        if total and n > self.max_fraction * total:
            first = ", ".join(self.paths(5))
            raise BadDataError(  # one line: it is what the CLI prints
                f"{n} of {total} {self.split} entries ({n / total:.1%}) are unreadable, more than "
                f"max_bad_fraction={self.max_fraction:g}; first ones: {first}. "
                "Run `harness data inspect` on the split, fix or remove the files, or raise data.max_bad_fraction."
            )


def vanished_folder(path: Path) -> Path | None:
    """The topmost missing folder above a missing file (a data folder deleted or unmounted mid-run), or None."""
    gone = None
    for parent in path.parents:
        if parent.exists():
            break
        gone = parent
    return gone


class ClipDataset(Dataset):
    """Clips of ``frames`` segments from a list of entries; items are ``(clip, label)``.

    Keys are ``(index, sample_seed)`` pairs from :class:`SeededSampler`; a
    plain integer key uses seed 0 (deterministic, but the same every epoch).

    Args:
        entries: the split, from :func:`harness.data.formats.read_split`.
        frames: T, segments per clip.
        train: random segment offsets and multi-scale crops (else middle frames and fixed crops).
        multiscale: in training, TSM's multi-scale crop; False: a fixed-scale crop (scale probes).
        resize_to: short side before cropping. size: output side.
        flip: random horizontal flip in training. swap: label map applied to flipped clips.
        clips, crops: test views (eval only); items are ``(clips * crops, T, 3, S, S)``.
        max_bad_fraction: unreadable share of the split that stops the run.
        split: name used in messages.
        with_index: items are ``(clip, label, entry index)``, the index of the entry actually read
            (a bad entry's replacement), so an evaluator can map predictions back to entries.
        cache: decoded frames to read instead of decoding (``data.cache``, :mod:`harness.data.cache`).
        decoder: ``"cpu"`` (decord, simplejpeg) or ``"gpu"`` (torchcodec on CUDA, :mod:`harness.data.gpu`).
    """

    def __init__(self, entries: list[Entry], *, frames: int, train: bool, resize_to: int, size: int,
                 flip: bool = False, swap: dict[int, int] | None = None, clips: int = 1, crops: int = 1,
                 max_bad_fraction: float = 0.01, split: str = "train", with_index: bool = False,
                 multiscale: bool = True, cache: FrameCache | None = None, decoder: str = "cpu"):
        if not entries:
            raise DataError(f"the {split} split has no entries")
        self.entries = entries
        self.frames, self.train, self.resize_to, self.size = frames, train, resize_to, size
        self.flip, self.swap, self.clips, self.crops = flip, dict(swap or {}), clips, crops
        self.with_index, self.multiscale, self.cache, self.decoder = with_index, multiscale, cache, decoder
        self.bad = BadEntries(entries, max_bad_fraction, split)
        self._mark_missing()

    def _mark_missing(self) -> None:
        """Flag entries whose file or folder is absent now, before any worker starts (cheap: one stat each)."""
        missing = [i for i, e in enumerate(self.entries) if not (e.path.is_dir() if e.frames else e.path.is_file())]
        for i in missing:
            self.bad.mark(i, f"{self.entries[i].path}: missing ({self.entries[i].where})", quiet=len(missing) > 5)
        if len(missing) > 5:
            log.warning("skipping %d missing %s entries, e.g. %s", len(missing), self.bad.split,
                        ", ".join(str(self.entries[i].path) for i in missing[:3]))
        self.bad.check()

    def __len__(self) -> int:
        return len(self.entries)

    def __getitem__(self, key: int | tuple[int, int]) -> tuple[torch.Tensor, int] | tuple[torch.Tensor, int, int]:
        index, seed = key if isinstance(key, tuple) else (int(key), 0)
        rng = np.random.default_rng([seed, index])
        for step in range(min(len(self.entries), MAX_CONSECUTIVE_BAD)):
            i = (index + step) % len(self.entries)
            if i in self.bad:
                continue
            try:
                item = self._load(self.entries[i], rng)
                return (*item, i) if self.with_index else item
            except UnreadableError as e:
                self._raise_if_vanished(self.entries[i])
                self.bad.mark(i, str(e))
            except (ValueError, OSError, RuntimeError) as e:  # odd content (frame sizes, modes): still one file
                self.bad.mark(i, f"{self.entries[i].path}: {type(e).__name__}: {e}")
        raise BadDataError(
            f"no readable {self.bad.split} entry among the {MAX_CONSECUTIVE_BAD} after index {index} "
            f"(starting at {self.entries[index].path}); run `harness data inspect` on the split"
        )

    def _raise_if_vanished(self, entry: Entry) -> None:
        """Stop at once when the folder holding an entry is gone: every neighbour would fail the same way."""
        folder = vanished_folder(entry.path)
        if folder is not None:
            raise BadDataError(f"data folder {folder} disappeared during the run ({entry.path} is gone, "
                               f"{entry.where}); restore it, then continue with --resume")

    def _load(self, entry: Entry, rng: np.random.Generator) -> tuple[torch.Tensor, int]:
        clip: Clip | GpuVideoClip
        if self.cache is not None:
            clip = self.cache.clip(entry)
        elif self.decoder == "gpu":
            from .gpu import open_gpu

            clip = open_gpu(entry)
        else:
            clip = open_entry(entry)
        if self.train:
            frames = clip.get(train_indices(clip.num_frames, self.frames, rng))
            return train_clip(frames, entry.label, resize_to=self.resize_to, size=self.size,
                              flip=self.flip, swap=self.swap, rng=rng, multiscale=self.multiscale)
        idx = clip_indices(clip.num_frames, self.frames, self.clips, where=str(entry.path))
        frames = clip.get(idx.reshape(-1))  # one get_batch for all views
        views = [eval_clip(f, resize_to=self.resize_to, size=self.size, crops=self.crops)
                 for f in frames.reshape(self.clips, self.frames, *frames.shape[1:])]
        return torch.cat(views), entry.label


class ClipLoader(DataLoader):
    """A DataLoader that enforces ``max_bad_fraction`` in the main process, after every batch.

    Workers only mark and replace bad entries; the error is raised here, so
    it keeps its type and the workers shut down at once (after an error
    raised inside a worker, torch's DataLoader waits ~5 s per worker to join).
    """

    dataset: ClipDataset  # what build_loader gives it

    # A generator around torch's iterator (callers only iterate), not the _BaseDataLoaderIter torch types it as
    def __iter__(self) -> Iterator[Any]:  # type: ignore[override]
        bad = self.dataset.bad
        try:
            for batch in super().__iter__():
                bad.check()
                yield batch
        except DataError as e:  # raised in a worker, torch wraps the message in the worker's traceback
            if "Original Traceback" not in str(e):
                raise
            raise type(e)(str(e).rstrip().splitlines()[-1].partition(": ")[2]) from e


class SeededSampler(Sampler):
    """Yields ``(index, sample_seed)``: order and per-sample seeds from ``(seed, epoch)``, epoch advancing each pass."""

    def __init__(self, length: int, *, seed: int, shuffle: bool):
        self.length, self.seed, self.shuffle, self.epoch = length, seed, shuffle, 0

    def set_epoch(self, epoch: int) -> None:
        """Replay epoch ``epoch`` next (e.g. after resuming from a checkpoint)."""
        self.epoch = epoch

    def __len__(self) -> int:
        return self.length

    def __iter__(self) -> Iterator[tuple[int, int]]:
        rng = np.random.default_rng([self.seed, self.epoch])
        order = rng.permutation(self.length) if self.shuffle else np.arange(self.length)
        seeds = rng.integers(0, 2**63 - 1, size=self.length)
        self.epoch += 1
        return iter([(int(i), int(seeds[i])) for i in order])


def _worker_init(worker_id: int) -> None:
    """One intra-op thread per worker: the workers are the parallelism (2-core laptops oversubscribe otherwise)."""
    torch.set_num_threads(1)


def flip_swap(data: Data, classes: list[str]) -> dict[int, int]:
    """Label map for flipped clips: the configured one, else GST's (Something-Something), else the synth mirrors."""
    if data.flip_label_swap is not None:
        return symmetric_swap(data.flip_label_swap)
    if not data.flip:
        return {}
    if data.format in ("sthv1", "sthv2") and len(classes) == 174:
        log.info("flip on Something-Something: swapping labels %s (GST)", SOMETHING_FLIP_SWAP)
        return symmetric_swap(SOMETHING_FLIP_SWAP)
    if data.format == "synth":
        from .synth import mirror_pairs

        return symmetric_swap(mirror_pairs(classes))
    log.warning("flip is on for %s with no flip_label_swap: left/right classes, if any, will be mislabelled",
                data.format)
    return {}


def dataset_paths(data: Data) -> tuple[str, Path, Path]:
    """(reader format, media root, annotations folder) for a Data config; generates the synth set if needed."""
    if data.format == "synth":
        from .synth import ensure_synth

        root = ensure_synth(data)
        return "sthv2", root / "videos", Path(data.annotations) if data.annotations else root
    root = Path(data.root)
    return data.format, root, Path(data.annotations) if data.annotations else root


def build_dataset(data: Data, split: str, *, train: bool, with_index: bool = False) -> tuple[ClipDataset, list[str]]:
    if data.decoder == "gpu":  # what is missing, before any file is read
        from .gpu import check

        check(data)
    fmt, root, ann = dataset_paths(data)
    result = read_split(fmt, root, ann, split)
    entries = result.entries
    if train:  # TSM drops training rows with fewer than 3 frames
        short = [e for e in entries if e.num_frames is not None and e.num_frames < 3]
        if short:
            log.warning("dropping %d %s entries with fewer than 3 frames (TSM), e.g. %s",
                        len(short), split, short[0].where)
            entries = [e for e in entries if e.num_frames is None or e.num_frames >= 3]
    dataset = ClipDataset(
        entries, frames=data.frames, train=train, resize_to=data.resize, size=data.size,
        flip=data.flip and train, swap=flip_swap(data, result.classes), clips=data.test_clips,
        crops=data.test_crops, max_bad_fraction=data.max_bad_fraction, split=split, with_index=with_index,
        multiscale=data.multiscale_crop, cache=open_cache(data, split, entries, ann), decoder=data.decoder,
    )
    return dataset, result.classes


def build_loader(data: Data, split: str, *, batch_size: int, seed: int, train: bool,
                 with_index: bool = False) -> tuple[ClipLoader, list[str]]:
    """A DataLoader over one split, and the class names in the owners' order.

    Args:
        data: the ``data`` section of a train config.
        split: ``"train"`` or ``"val"``.
        batch_size: clips per batch.
        seed: fixes order, frame offsets, crops and flips (for any worker count).
        train: training sampling and augmentation, shuffled, last partial batch dropped;
            else middle frames, fixed crops, ``test_clips * test_crops`` views, in file order.
        with_index: batches are ``(clips, labels, entry indices)`` (see :class:`ClipDataset`).
    """
    dataset, classes = build_dataset(data, split, train=train, with_index=with_index)
    workers = data.workers
    if workers == 0 and (data.persistent_workers or data.prefetch_factor is not None):
        log.info("workers=0: persistent_workers and prefetch_factor have no effect")
    loader = ClipLoader(
        dataset,
        batch_size=batch_size,
        sampler=SeededSampler(len(dataset), seed=seed, shuffle=train),
        num_workers=workers,
        pin_memory=data.pin_memory,
        drop_last=train and len(dataset) >= batch_size,
        persistent_workers=data.persistent_workers and workers > 0,
        prefetch_factor=data.prefetch_factor if workers > 0 else None,
        worker_init_fn=_worker_init if workers > 0 else None,
        generator=torch.Generator().manual_seed(seed),
    )
    return loader, classes
