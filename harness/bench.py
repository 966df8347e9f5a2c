"""``harness bench``: what a block costs in time and memory, as ratios measured in one run.

FLOPs are not time: a block built from many small ops can cost far more wall
time than its FLOPs say. Every figure here is a ratio against TSN measured in
the same process, interleaved (TSN, TSM, ..., TSN, TSM, ...), so machine load
and clock changes hit every block alike. No test asserts a time.

    harness bench blocks --size 112 --frames 8 --format md
"""
from __future__ import annotations

import json
import logging
import platform
import sys
import time
from contextlib import contextmanager
from typing import Any, Iterator

import numpy as np
import torch
from torch.utils import benchmark

import blocks

from .config import Row, load_study
from .profile import profile_row

log = logging.getLogger(__name__)


@contextmanager
def saved_activation_bytes() -> Iterator[list[int]]:
    """Bytes of the tensors autograd keeps for backward: a block's training-memory cost on CPU."""
    total = [0]
    seen: set[int] = set()

    def pack(t: torch.Tensor) -> torch.Tensor:
        key = t.untyped_storage().data_ptr()
        if key not in seen:  # views of one storage count once
            seen.add(key)
            total[0] += t.untyped_storage().nbytes()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        yield total


def _step_fn(model: torch.nn.Module, clip: torch.Tensor):
    def step() -> None:
        model.zero_grad(set_to_none=True)
        model(clip).sum().backward()
    return step


def _peak_memory(model: torch.nn.Module, clip: torch.Tensor, device: str) -> int:
    if device == "cuda":
        torch.cuda.reset_peak_memory_stats()
        _step_fn(model, clip)()
        torch.cuda.synchronize()
        return torch.cuda.max_memory_allocated()
    with saved_activation_bytes() as total:
        model(clip).sum().backward()
    model.zero_grad(set_to_none=True)
    return total[0]


def bench_blocks(rows: dict[str, Row], *, size: int = 112, frames: int = 8, batch: int = 1,
                 device: str = "cpu", repeats: int = 5, num_classes: int = 174,
                 threads: int | None = None) -> list[dict[str, Any]]:
    """Forward+backward step time of each row on its paper backbone; ratios against the first row."""
    threads = threads or torch.get_num_threads()
    torch.manual_seed(0)
    clip = torch.randn(batch, frames, 3, size, size, device=device)
    models = {name: blocks.create(row.block, backbone=row.backbone, num_classes=num_classes,
                                  num_frames=frames, **row.options).to(device).train()
              for name, row in rows.items()}
    steps = {name: _step_fn(m, clip) for name, m in models.items()}
    for step in steps.values():  # warm-up: allocator, caches, lazy init
        step()
    times: dict[str, list[float]] = {name: [] for name in models}
    for r in range(repeats):
        for name, step in steps.items():  # interleaved, so drift hits every block alike
            timer = benchmark.Timer(stmt="step()", globals={"step": step}, num_threads=threads)
            times[name].append(timer.timeit(1).median)
        log.info("bench repeat %d/%d done", r + 1, repeats)
    out = []
    for name, row in rows.items():
        t = np.array(times[name])
        flops = profile_row(row, num_classes=num_classes, frames=frames, sizes=[size])["gflops"][str(size)]
        out.append({"row": name, "block": row.block, "median_s": float(np.median(t)),
                    "iqr_s": float(np.percentile(t, 75) - np.percentile(t, 25)), "gflops": flops,
                    "memory_mb": _peak_memory(models[name], clip, device) / 2**20})
    base = out[0]
    for r in out:
        r["time_ratio"] = r["median_s"] / base["median_s"]
        r["flops_ratio"] = r["gflops"] / base["gflops"]
        r["memory_ratio"] = r["memory_mb"] / base["memory_mb"]
    return out


def machine() -> str:
    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as f:
            cpu = next(l.split(":", 1)[1].strip() for l in f if l.startswith("model name"))
    except (OSError, StopIteration):
        pass
    return f"{cpu}, {torch.get_num_threads()} threads, torch {torch.__version__}"


def _print(rows: list[dict], fmt: str, title: str) -> None:
    if fmt == "json":
        json.dump(rows, sys.stdout, indent=1)
        print()
        return
    import pandas as pd

    print(f"{title}\n")
    print(pd.DataFrame(rows).round(3).to_markdown(index=False))


def loader_rate(data, *, workers: int, batch_size: int, batches: int, seed: int = 0) -> float:
    """Training-loader clips/s: decode, sample, augment and collate, nothing else."""
    from .data import build_loader

    loader, _ = build_loader(data.model_copy(update={"workers": workers}), "train",
                             batch_size=batch_size, seed=seed, train=True)
    it = iter(loader)
    next(it)  # worker start-up and first decode are not throughput
    start, clips = time.perf_counter(), 0
    for _ in range(batches):
        try:
            clips += len(next(it)[1])
        except StopIteration:
            it = iter(loader)
    return clips / (time.perf_counter() - start)


def model_rate(cfg, *, batch_size: int, steps: int) -> float:
    """Training clips/s of the profile's model on in-memory clips (forward, backward, SGD step)."""
    torch.set_num_threads(cfg.recipe.threads)
    model = blocks.create(cfg.row.block, backbone=cfg.backbone.create_kwargs(), num_classes=10,
                          num_frames=cfg.data.frames, **cfg.row.options).train()
    opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
    clips = torch.randn(batch_size, cfg.data.frames, 3, cfg.data.size, cfg.data.size)
    labels = torch.randint(0, 10, (batch_size,))

    def step() -> None:
        opt.zero_grad(set_to_none=True)
        torch.nn.functional.cross_entropy(model(clips), labels).backward()
        opt.step()

    step()
    start = time.perf_counter()
    for _ in range(steps):
        step()
    return steps * batch_size / (time.perf_counter() - start)


def bench_data(study_path: str, *, profile: str = "laptop", row: str | None = None,
               workers: tuple[int, ...] = (0, 1, 2), batches: int = 20, steps: int = 10) -> list[dict]:
    """Loader clips/s with 0, 1, 2 workers next to the laptop model's training clips/s."""
    from .config import trial_config
    from .data import ensure_synth

    study = load_study(study_path)
    cfg = trial_config(study, profile, row or next(iter(study.rows)), seed=0)
    if cfg.data.format == "synth":
        ensure_synth(cfg.data)
    batch = cfg.recipe.batch_size
    model = model_rate(cfg, batch_size=batch, steps=steps)
    out = [{"what": f"model {cfg.row.block} train step ({cfg.recipe.threads} thread(s))",
            "clips_per_s": model, "ratio_to_model": 1.0}]
    for w in workers:
        rate = loader_rate(cfg.data, workers=w, batch_size=batch, batches=batches)
        out.append({"what": f"loader, {w} worker(s)", "clips_per_s": rate, "ratio_to_model": rate / model})
    return out


def main(args) -> int:
    if args.bench_command == "blocks":
        return _main_blocks(args)
    if args.bench_command == "data":
        rows = bench_data(args.study, profile=args.profile, batches=args.batches, steps=args.steps)
        _print(rows, args.format, f"Training loader vs model, {args.study} ({args.profile} profile), "
               f"{machine()}; goal: loader >= 1.5x model.")
        return 0
    raise SystemExit(f"unknown bench {args.bench_command}")


def _main_blocks(args) -> int:
    study = load_study(args.study)
    if args.device == "cuda" and not torch.cuda.is_available():
        print("error: --device cuda: no CUDA device here; use --device cpu", file=sys.stderr)
        return 2
    if args.threads:
        torch.set_num_threads(args.threads)
    rows = bench_blocks(study.rows, size=args.size, frames=args.frames, batch=args.batch,
                        device=args.device, repeats=args.repeats, num_classes=study.num_classes)
    memory = "peak CUDA memory" if args.device == "cuda" else "activations saved for backward"
    _print(rows, args.format,
           f"Forward+backward step, {args.frames}x{args.size}, batch {args.batch}, {args.device} "
           f"({machine()}); median and IQR of {args.repeats} interleaved repeats; ratios against "
           f"{rows[0]['row']}; memory_mb = {memory}.")
    return 0
