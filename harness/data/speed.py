"""``harness bench data`` on real formats: the loader against the raw decoder, and cores per GPU.

For each format, on files in the official layout at the real size
(:mod:`harness.data.realsize`, or a folder you point at), one run measures,
interleaved round by round so that load from other processes hits both alike:

* raw: the decoder alone on the 8 sampled frames of a clip, one core, one
  thread (the ceiling): decord ``VideoReader`` + ``get_batch`` for video,
  Pillow open + RGB for JPEG (and simplejpeg, the decoder the loader uses),
  on exactly the clips and frame indices the loader draws in the same epochs
  (a 250-frame MP4's cost depends on how far into it the sampled frames lie);
* loader, 0 workers: the training loader (decode, TSN sampling, TSM
  multi-scale crop, uint8 collate), batch 8, in this process, one thread;
* loader, one worker per core: the same with ``os.cpu_count()`` workers;

and reports loader / raw (the goals: >= 0.85 for JPEG, >= 0.9 for video) and
the cores a GPU training at ``gpu_rate`` clips/s needs: ``gpu_rate`` / the
per-core loader rate of 0 workers (workers scale by processes; the
one-worker-per-core row shows what this machine gives in parallel).
"""
from __future__ import annotations

import math
import os
import statistics
import time
from pathlib import Path
from typing import Callable

import numpy as np
import torch

from ..config import Data
from .formats import Entry
from .sampling import train_indices
from .video import open_entry

GOALS = {"sthv1": 0.85, "sthv2": 0.9, "k400": 0.9}
FRAMES, SIZE, SCALE, BATCH = 8, 112, 128, 8  # the paper's ablation input: 8 frames at 112 from a 128 short side


def _pillow(entry: Entry, idx: np.ndarray) -> None:
    from PIL import Image

    for i in idx.tolist():
        with Image.open(entry.path / f"{i + 1:05d}.jpg") as im:
            np.asarray(im.convert("RGB"))


def _simplejpeg(entry: Entry, idx: np.ndarray) -> None:
    import simplejpeg

    for i in idx.tolist():
        simplejpeg.decode_jpeg((entry.path / f"{i + 1:05d}.jpg").read_bytes(), colorspace="RGB")


def _decord(entry: Entry, idx: np.ndarray) -> None:
    import decord

    decord.VideoReader(str(entry.path), num_threads=1).get_batch(idx.tolist()).asnumpy()


def raw_decoders(fmt: str) -> dict[str, Callable[[Entry, np.ndarray], None]]:
    """The raw decoders of a format by name; the first is the ceiling the goal is judged against."""
    if fmt == "sthv1":
        return {"Pillow open + RGB": _pillow, "simplejpeg (the loader's decoder)": _simplejpeg}
    return {"decord VideoReader + get_batch": _decord}


def epoch_keys(length: int, epoch: int, seed: int = 0) -> list[tuple[int, int]]:
    """The (index, sample seed) pairs the training loader's sampler hands out in ``epoch``, whole batches only."""
    from .dataset import SeededSampler

    sampler = SeededSampler(length, seed=seed, shuffle=True)
    sampler.set_epoch(epoch)
    return list(sampler)[:length // BATCH * BATCH]


def raw_seconds(decode: Callable[[Entry, np.ndarray], None], entries: list[Entry], counts: list[int],
                epochs: range) -> tuple[float, int]:
    """(seconds, clips) for ``decode`` on exactly the frames the loader samples in ``epochs``: the same clips,
    the same indices (:class:`~harness.data.dataset.ClipDataset` draws them first from ``(seed, index)``)."""
    jobs = [(entries[i], train_indices(counts[i], FRAMES, np.random.default_rng([s, i])))
            for e in epochs for i, s in epoch_keys(len(entries), e)]
    start = time.perf_counter()
    for entry, idx in jobs:
        decode(entry, idx)
    return time.perf_counter() - start, len(jobs)


class LoaderClock:
    """A training loader kept open across rounds (workers started once) that runs chosen epochs, so the raw
    decoders can be timed on the very clips and frames it decodes."""

    def __init__(self, data: Data, workers: int):
        from .dataset import build_loader

        self.loader, _ = build_loader(data.model_copy(update={"workers": workers, "persistent_workers": workers > 0}),
                                      "train", batch_size=BATCH, seed=0, train=True)
        self.next_epoch = 0
        self.epoch_seconds = self.run(1)[0]  # worker start-up and first decodes: not timed after this

    def run(self, epochs: int) -> tuple[float, int]:
        """(seconds, clips) for the next ``epochs`` epochs."""
        from .dataset import SeededSampler

        start, clips = time.perf_counter(), 0
        for _ in range(epochs):
            sampler = self.loader.sampler
            if isinstance(sampler, SeededSampler):  # build_loader's: the epoch sets the order and the crops
                sampler.set_epoch(self.next_epoch)
            self.next_epoch += 1
            for _, labels in self.loader:
                clips += len(labels)
        return time.perf_counter() - start, clips


def _rate(seconds: float, clips: int) -> float:
    return clips / seconds


def bench_format(fmt: str, root: Path, annotations: Path, *, seconds: float, rounds: int,
                 workers: int | None = None, gpu_rate: float = 1000.0) -> dict:
    """One format's row: raw decoders, the loader with 0 and one-per-core workers, ratios, cores per GPU."""
    from .dataset import build_dataset

    workers = workers or os.cpu_count() or 1
    data = Data(format=fmt, root=str(root), annotations=str(annotations), frames=FRAMES, size=SIZE, scale_size=SCALE)
    entries = build_dataset(data, "train", train=True)[0].entries
    if len(entries) < BATCH:
        raise ValueError(f"{root}: {len(entries)} train clips; the bench needs at least {BATCH} (one batch)")
    counts = [open_entry(e).num_frames for e in entries]
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # one core: what one DataLoader worker has
    try:
        decoders = raw_decoders(fmt)
        raw: dict[str, list[float]] = {name: [] for name in decoders}
        loader0, ratios = [], []
        clock = LoaderClock(data, 0)
        # One epoch per measurement, raw and loader back to back: load from other processes changes by the
        # second, so short pairs and the median of many pair ratios resist it better than long rounds.
        rounds = max(rounds, round(rounds * seconds / clock.epoch_seconds))
        for r in range(rounds):
            todo = range(clock.next_epoch, clock.next_epoch + 1)
            if r % 2:  # odd pairs time the loader first, so drift within a pair favours neither side
                loader0.append(_rate(*clock.run(1)))
            for name, decode in decoders.items():
                raw[name].append(_rate(*raw_seconds(decode, entries, counts, todo)))
            if not r % 2:
                loader0.append(_rate(*clock.run(1)))
            ratios.append(loader0[-1] / raw[next(iter(decoders))][-1])
        pooled = LoaderClock(data, workers)
        many = _rate(*pooled.run(max(1, round(2 * seconds * workers / clock.epoch_seconds))))
        del pooled
    finally:
        torch.set_num_threads(threads)
    first = next(iter(decoders))
    w0 = statistics.median(loader0)
    out = {"format": fmt, "files": f"{len(entries)} clips in {root}", "ceiling": first,
           "raw_clips_per_s": {k: statistics.median(v) for k, v in raw.items()},
           "loader_w0_clips_per_s": w0, "ratio_w0": statistics.median(ratios), "rounds": rounds,
           "workers": workers, "loader_workers_clips_per_s": many,
           "ratio_per_core": many / workers / statistics.median(raw[first]),
           "goal": GOALS.get(fmt), "gpu_clips_per_s": gpu_rate,
           "cores_per_gpu": math.ceil(gpu_rate / w0),
           "cores_per_gpu_parallel": math.ceil(gpu_rate / (many / workers))}
    if len(decoders) > 1:
        out["ratio_w0_to_loaders_decoder"] = w0 / statistics.median(raw[list(decoders)[1]])
    return out


def formats_markdown(rows: list[dict]) -> str:
    """The per-format table and one goal line per format."""
    import pandas as pd

    table, lines = [], []
    for r in rows:
        raws = ", ".join(f"{k} {v:.0f}" for k, v in r["raw_clips_per_s"].items())
        table.append({"format": r["format"], "raw decode, 1 core (clips/s)": raws,
                      "loader, 0 workers": round(r["loader_w0_clips_per_s"], 1),
                      "ratio": round(r["ratio_w0"], 3),
                      f"loader, {r['workers']} workers (1 per core)": round(r["loader_workers_clips_per_s"], 1),
                      "per core / raw": round(r["ratio_per_core"], 3),
                      f"cores per GPU at {r['gpu_clips_per_s']:.0f} clips/s": r["cores_per_gpu"]})
        verdict = "met" if r["ratio_w0"] >= r["goal"] else "missed"
        extra = (f"; against simplejpeg alone (the decoder it uses) {r['ratio_w0_to_loaders_decoder']:.3f}"
                 if "ratio_w0_to_loaders_decoder" in r else "")
        lines.append(f"- {r['format']}: loader / raw ({r['ceiling']}) = {r['ratio_w0']:.3f}, median of "
                     f"{r['rounds']} back-to-back pairs of one epoch each; goal >= {r['goal']}: {verdict}{extra}. "
                     f"Cores per GPU from the {r['workers']}-worker rate: {r['cores_per_gpu_parallel']}. "
                     f"Files: {r['files']}.")
    return pd.DataFrame(table).to_markdown(index=False) + "\n\n" + "\n".join(lines) + "\n"
