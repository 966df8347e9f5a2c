"""``harness bench``: what a block costs in time and memory, as ratios measured in one run.

FLOPs are not time: a block built from many small ops can cost far more wall
time than its FLOPs say. Every figure here is a ratio against TSN measured in
the same process, interleaved (TSN, TSM, ..., TSN, TSM, ...), so machine load
and clock changes hit every block alike. No test asserts a time.

    harness bench blocks --size 112 --frames 8 --format md
    harness bench blocks --default-malloc     # glibc's own malloc thresholds (before keep_freed_memory)
    harness bench data                        # laptop loader vs model (and the decode cache), then real formats:
                                              # raw decode vs the loader, cores per GPU (harness.data.speed)
    harness bench harness --epochs 7          # 6 laptop trials (~60 s each here) via Ray Tune + MLflow vs a plain pool
    make bench                                # all three -> results/bench.md
"""
from __future__ import annotations

import logging
import math
import os
import re
import tempfile
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Callable, Iterator

import numpy as np
import torch
from torch.utils import benchmark

import blocks

from . import names
from .config import Data, Profile, Row, Study, TrainConfig, load_study
from .device import cpu_model
from .profile import profile_row
from .trial import TrialSpec

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


def _step_fn(model: torch.nn.Module, clip: torch.Tensor) -> Callable[[], None]:
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
                 device: str = "cpu", repeats: int = 15, num_classes: int = 174,
                 threads: int | None = None, default_malloc: bool = False) -> list[dict[str, Any]]:
    """Forward+backward step time of each row on its paper backbone; ratios against the first row.

    The first row is timed twice: its second copy, "<row> (control)", is the same block again, so
    how far its time ratio lies from 1 is this run's noise floor. The allocator is set up as
    training sets it (:func:`harness.train.keep_freed_memory`) unless ``default_malloc``.
    """
    from .train import keep_freed_memory

    if not default_malloc:
        keep_freed_memory()
    threads = threads or torch.get_num_threads()
    first = next(iter(rows))
    rows = {**rows, f"{first} (control)": rows[first]}
    torch.manual_seed(0)
    clip = torch.randn(batch, frames, 3, size, size, device=device)
    models = {name: blocks.create(row.block, backbone=row.backbone, num_classes=num_classes,
                                  num_frames=frames, **row.options).to(device).train()
              for name, row in rows.items()}
    steps = {name: _step_fn(m, clip) for name, m in models.items()}
    for step in steps.values():  # warm-up: allocator, caches, lazy init
        step()
    times: dict[str, list[float]] = {name: [] for name in models}
    names = list(steps)
    for repeat in range(repeats):
        # Interleaved, so drift hits every block alike, and rotated, so no block always runs first
        # or always follows the same neighbour (whose freed memory and cache it inherits).
        for name in names[repeat % len(names):] + names[:repeat % len(names)]:
            timer = benchmark.Timer(stmt="step()", globals={"step": steps[name]}, num_threads=threads)
            times[name].append(timer.timeit(1).median)
        log.info("bench repeat %d/%d done", repeat + 1, repeats)
    out = []
    for name, row in rows.items():
        t = np.array(times[name])
        flops = profile_row(row, num_classes=num_classes, frames=frames, sizes=[size])["gflops"][str(size)]
        out.append({"row": name, "block": row.block, "median_s": float(np.median(t)),
                    "iqr_s": float(np.percentile(t, 75) - np.percentile(t, 25)), "gflops": flops,
                    "memory_mb": _peak_memory(models[name], clip, device) / 2**20})
    base = out[0]
    base_times = np.array(times[base["row"]])
    for r in out:
        # The median of per-repeat ratios: each pairs two steps run back to back, so load that drifts
        # between repeats cancels (a ratio of two medians would carry it).
        r["time_ratio"] = float(np.median(np.array(times[r["row"]]) / base_times))
        r["flops_ratio"] = r["gflops"] / base["gflops"]
        r["memory_ratio"] = r["memory_mb"] / base["memory_mb"]
    return out


def machine() -> str:
    return f"{cpu_model()}, {torch.get_num_threads()} threads, torch {torch.__version__}"


def loader_rate(data: Data, *, workers: int, batch_size: int, batches: int, seed: int = 0) -> float:
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


def model_rate(cfg: TrainConfig, *, batch_size: int, steps: int) -> float:
    """Training clips/s of the profile's model on in-memory clips (forward, backward, SGD step)."""
    from .train import keep_freed_memory

    torch.set_num_threads(cfg.recipe.threads)
    keep_freed_memory()  # as harness.train does
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
        rate = loader_rate(cfg.data.model_copy(update={"cache": "off"}), workers=w, batch_size=batch, batches=batches)
        out.append({"what": f"loader, {w} worker(s)", "clips_per_s": rate, "ratio_to_model": rate / model})
    if cfg.data.cache != "off":  # the profile decodes once: its loader reads the cache (built here if absent)
        rate = loader_rate(cfg.data, workers=0, batch_size=batch, batches=batches)
        out.append({"what": f"loader, 0 workers, data.cache: {cfg.data.cache}", "clips_per_s": rate,
                    "ratio_to_model": rate / model})
    return out


def laptop_epochs(study_path: str, *, profile: str = "laptop", row: str | None = None,
                  rounds: int = 2) -> list[dict]:
    """Wall seconds of a 1-epoch trial (loaders, model, train, val, checkpoint) with data.cache off and as the
    profile sets it, interleaved; and whether both give the same metrics (they must: same pixels)."""
    import tempfile

    from .config import trial_config
    from .train import fit

    from .data.dataset import build_dataset

    study = load_study(study_path)
    cfg = trial_config(study, profile, row or next(iter(study.rows)), seed=0)
    modes = ["off"] + ([cfg.data.cache] if cfg.data.cache != "off" else ["file"])
    for split in ("train", "val"):  # build the cache before timing: once per dataset, not per epoch
        build_dataset(cfg.data.model_copy(update={"cache": modes[1]}), split, train=split == "train")
    seconds: dict[str, list[float]] = {m: [] for m in modes}
    metrics: dict[str, dict] = {}
    for _ in range(rounds):
        for mode in modes:
            one = cfg.model_copy(update={"data": cfg.data.model_copy(update={"cache": mode}),
                                         "recipe": cfg.recipe.model_copy(update={"epochs": 1})})
            with tempfile.TemporaryDirectory(prefix="bench-epoch-") as tmp:
                start = time.perf_counter()
                result = fit(one, tmp)
                seconds[mode].append(time.perf_counter() - start)
            metrics[mode] = {k: v for k, v in result.history[-1].items() if k != "clips_per_s"}
    same = all(metrics[m] == metrics[modes[0]] for m in modes)
    return [{"what": f"1-epoch {cfg.row.block} trial, data.cache: {m}", "seconds": float(np.median(seconds[m])),
             "ratio_to_off": float(np.median(seconds[m])) / float(np.median(seconds["off"])),
             "same_metrics_as_off": same} for m in modes]


# ----------------------------------------------------------------------------- harness overhead


def _fit_one(spec: TrialSpec, out_dir: str) -> dict[str, Any]:
    """One trial in a pool process, the way ``harness train`` runs it: :func:`harness.train.fit`, nothing else."""
    from .train import fit

    start = time.perf_counter()
    result = fit(spec.config, out_dir)
    return {"key": spec.key, "seconds": time.perf_counter() - start, "status": result.status,
            "last_top1": result.last_top1}


def _plain_loop(trials: list[TrialSpec], out: Path, concurrency: int) -> dict[str, Any]:
    """The baseline: the same trials in a pool of ``concurrency`` fresh (spawned) processes; no Ray, no MLflow."""
    import multiprocessing
    from concurrent.futures import ProcessPoolExecutor

    dirs = [str(out / re.sub(r"[^A-Za-z0-9_.-]+", "_", t.key)) for t in trials]
    start = time.perf_counter()
    # spawn, as Ray's workers are fresh processes: nothing inherited from this one's torch state
    with ProcessPoolExecutor(concurrency, mp_context=multiprocessing.get_context("spawn")) as pool:
        done = list(pool.map(_fit_one, trials, dirs))
    return {"wall_s": time.perf_counter() - start, "trials": {d["key"]: d for d in done}}


def _ray_tune(study: Study, profile_name: str, profile: Profile, trials: list[TrialSpec], out: Path,
              concurrency: int) -> dict[str, Any]:
    """The trials as ``harness run`` runs them (harness.study.engine, less profiling and tables): an MLflow
    parent run, a local Ray, Tune with the MLflow callback (which makes each child run with its params and
    trial.yaml), a checkpoint reported per epoch; store and Ray storage under ``out``."""
    from .study.plan import parent_params
    from .tracking import Tracker
    from .tune.callback import MlflowCallback
    from .tune.grid import run_trials
    from .tune.session import session

    start = time.perf_counter()
    tracker = Tracker(f"sqlite:///{(out / 'mlflow.db').resolve().as_posix()}")
    tracker.prepare()
    parent = tracker.start_parent(study.name, profile_name, tags={"harness.bench": "1"},
                                  params={"trials": len(trials), **parent_params(study, profile_name, profile)})
    mlflow_s = time.perf_counter() - start
    with session(num_cpus=math.ceil(concurrency * profile.resources.cpu)):
        ray_start_s = time.perf_counter() - start - mlflow_s
        t0 = time.perf_counter()
        run_trials(trials, experiment=str((out / "ray").resolve()), resources=profile.resources,
                   max_concurrent=concurrency, callback=MlflowCallback(tracker.uri, parent, total=len(trials)))
        tune_s = time.perf_counter() - t0
    tracker.finish(parent, "FINISHED")
    wall = time.perf_counter() - start
    runs = tracker.children(parent)
    return {"wall_s": wall, "mlflow_setup_s": mlflow_s, "ray_start_s": ray_start_s, "tune_s": tune_s,
            "trials": {k: {"status": r.status, "last_top1": r.metrics.get(names.LAST_TOP1)}
                       for k, r in runs.items()}}


def harness_trials(study_path: str, *, profile: str = "laptop", rows: tuple[str, ...] = ("TSN", "TSM", "Ours"),
                   trials: int = 6, epochs: int | None = None) -> tuple[Study, Profile, list[TrialSpec]]:
    """(study, resolved profile, trials): the rows repeated over seeds, as ``harness run`` plans them."""
    from .config import Recipe
    from .study.grid import plan
    from .study.plan import resolve_profile

    if trials < 1:
        raise ValueError(f"--trials must be at least 1, got {trials}")
    study = load_study(study_path)
    unknown = [r for r in rows if r not in study.rows]
    if unknown:
        raise ValueError(f"--rows: no row(s) {', '.join(unknown)} in the study; it has {', '.join(study.rows)}")
    study = study.model_copy(update={"rows": {r: study.rows[r] for r in rows}})
    prof = resolve_profile(study, profile, seeds=math.ceil(trials / len(rows)))
    if epochs is not None:  # validated like the YAML value
        prof.recipe = Recipe.model_validate({**prof.recipe.model_dump(), "epochs": epochs})
    return study, prof, plan(study, profile, prof).trials[:trials]


def bench_harness(study: Study, profile_name: str, profile: Profile, trials: list[TrialSpec], *,
                  concurrency: int | None = None) -> dict[str, Any]:
    """The same trials through Ray Tune + MLflow and through a plain process pool of equal concurrency.

    Wall ratio = Ray wall / plain wall. Per-trial overhead = (Ray wall - plain
    wall) x concurrency / trials: the extra seconds each trial slot costs,
    Ray's start-up and MLflow's bookkeeping included. The plain path runs
    first; both write into one temporary folder that is removed afterwards.
    """
    from .data import ensure_synth

    slots = max(1, int((os.cpu_count() or 1) // profile.resources.cpu))
    concurrency = min(concurrency or slots, len(trials))
    for data in {t.config.data.root: t.config.data for t in trials if t.config.data.format == "synth"}.values():
        ensure_synth(data)  # once, before either path, as harness run does
    with tempfile.TemporaryDirectory(prefix="bench-harness-") as tmp:
        log.info("plain: %d trials, %d at a time", len(trials), concurrency)
        plain = _plain_loop(trials, Path(tmp) / "plain", concurrency)
        log.info("Ray Tune + MLflow: %d trials, %d at a time", len(trials), concurrency)
        ray_ = _ray_tune(study, profile_name, profile, trials, Path(tmp) / "tune", concurrency)
    same = sum(ray_["trials"].get(k, {}).get("last_top1") == p["last_top1"] for k, p in plain["trials"].items())
    finished = [sum(t["status"] == "FINISHED" for t in path["trials"].values()) for path in (plain, ray_)]
    return {
        "study": study.name, "profile": profile_name, "trials": len(trials), "epochs": profile.recipe.epochs,
        "concurrency": concurrency, "threads_per_trial": profile.recipe.threads,
        "baseline": f"harness.train.fit in a ProcessPoolExecutor of {concurrency} spawned processes "
                    f"({profile.recipe.threads} torch thread(s) each)",
        "plain_wall_s": plain["wall_s"],
        "plain_trial_s": float(np.mean([t["seconds"] for t in plain["trials"].values()])),
        "ray_wall_s": ray_["wall_s"], "ray_start_s": ray_["ray_start_s"],
        "mlflow_setup_s": ray_["mlflow_setup_s"], "tune_s": ray_["tune_s"],
        "wall_ratio": ray_["wall_s"] / plain["wall_s"],
        "overhead_per_trial_s": (ray_["wall_s"] - plain["wall_s"]) * concurrency / len(trials),
        "finished_plain": finished[0], "finished_ray": finished[1], "same_last_top1": same,
    }


def harness_markdown(r: dict[str, Any]) -> str:
    import pandas as pd

    table = pd.DataFrame([
        {"path": "plain: " + r["baseline"], "wall_s": r["plain_wall_s"], "finished": r["finished_plain"]},
        {"path": f"Ray Tune + MLflow, as harness run (Ray start {r['ray_start_s']:.1f} s, MLflow set-up "
                 f"{r['mlflow_setup_s']:.1f} s, Tune {r['tune_s']:.1f} s)",
         "wall_s": r["ray_wall_s"], "finished": r["finished_ray"]},
    ]).round(1).to_markdown(index=False)
    verdict = "met" if r["wall_ratio"] <= 1.10 else "missed"
    return (f"{r['trials']} trials of {r['study']} ({r['profile']} profile, {r['epochs']} epochs, "
            f"{r['plain_trial_s']:.1f} s per trial on average in the plain path), {r['concurrency']} at a time.\n\n"
            f"{table}\n\n"
            f"wall ratio (Ray / plain): {r['wall_ratio']:.3f}; overhead per trial: "
            f"{r['overhead_per_trial_s']:.1f} s = (Ray wall - plain wall) x {r['concurrency']} / {r['trials']}. "
            f"Goal ratio <= 1.10 for 60-second trials: {verdict} at {r['plain_trial_s']:.0f}-second trials. "
            f"Same last-epoch val top-1 in both paths: {r['same_last_top1']}/{r['trials']} trials.\n")


# how `harness bench data` reads each real format (harness.data.speed)
FRAMES_NOTE = "8 frames at 112 from a 128 short side, batch 8, train sampling and TSM multi-scale crop"


def report_markdown(sections: dict[str, str]) -> str:
    """results/bench.md: where it ran, then one section per bench output (``harness bench X --format md``)."""
    from .tracking import git_commit

    head = (f"# harness bench\n\n- CPU: {cpu_model()}\n- cores: {os.cpu_count()}\n"
            f"- torch: {torch.__version__} ({torch.get_num_threads()} threads by default)\n"
            f"- date: {time.strftime('%Y-%m-%d %H:%M %Z')}\n- commit: {git_commit()}\n")
    body = "".join(f"\n## {name}\n\n{text.strip()}\n" for name, text in sections.items())
    return head + body


def block_goals(rows: list[dict[str, Any]]) -> list[str]:
    """The issue's speed goals, one line per VPS / TSM row: VPS time ratio <= FLOPs ratio + 0.05, TSM <= 1.03.

    A verdict closer to its limit than the control row lies from 1 (this run's noise floor) says so:
    another run may well give the other verdict.
    """
    controls = [r for r in rows if r["row"].endswith(" (control)")]
    lines = [f"- noise floor: {r['row']}, the baseline timed again, has time ratio {r['time_ratio']:.3f}"
             for r in controls]
    noise = max((abs(r["time_ratio"] - 1) for r in controls), default=0.0)
    for r in rows:
        if r["block"] == "vps":
            limit, why = r["flops_ratio"] + 0.05, f"FLOPs ratio {r['flops_ratio']:.3f} + 0.05"
        elif r["block"] == "tsm":
            limit, why = 1.03, "1.03"
        else:
            continue
        verdict = "met" if r["time_ratio"] <= limit else "missed"
        margin = abs(r["time_ratio"] - limit)
        if margin <= noise:
            verdict += f" by {margin:.3f}, within this run's noise floor ({noise:.3f})"
        lines.append(f"- {r['row']}: time ratio {r['time_ratio']:.3f}, goal <= {why} = {limit:.3f}: {verdict}")
    return lines
