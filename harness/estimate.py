"""The inputs of :mod:`harness.cost` for a planned study: split sizes, throughput, cluster. Reads; never trains.

    harness run studies/table1.yaml --profile paper --dry-run --gpus 8
    harness run studies/table1.yaml --profile paper --dry-run --gpus 8 --throughput 120
    harness run studies/table1.yaml --profile paper --dry-run --gpus 8 --throughput bench-cuda.md

Split sizes are counted from the annotation files when the data is here, and
are the published sizes (labelled *nominal*) when it is not. The throughput
is, first found: ``--throughput`` (clips/s per device, or a ``harness bench
blocks`` report file: each row its measured rate), the profile's
``throughput``. A single number is the first row's rate; the other rows are
scaled by their GFLOPs (``harness.profile``) at their own input, since FLOPs
are the one cost known for every row without a GPU.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

from harness import cost
from harness.config import Data, Profile, Study

Sizes = tuple[int, int, str]  # train clips, val clips, where they come from


def split_sizes(data: Data) -> Sizes | None:
    """(train, val, source): counted, computed (synth), or nominal; None when no one can say."""
    from harness.data.formats import DataError, read_split

    if data.format == "synth":
        synth = data.synth
        videos, fraction = (synth.videos, synth.val_fraction) if synth else (400, 0.25)
        val = min(max(1, round(videos * fraction)), videos - 1)  # as harness.data.synth.write_synth splits
        return videos - val, val, "the synth config"
    try:
        counts = [len(read_split(data.format, data.root, data.annotations, s).entries) for s in ("train", "val")]
        return counts[0], counts[1], f"counted in {data.annotations or data.root}"
    except (DataError, OSError):
        if data.format not in cost.NOMINAL_SPLITS:
            return None
        train, val = cost.NOMINAL_SPLITS[data.format]
        return train, val, "nominal: the published sizes, the data is not here"


def _gflops(profile: Mapping[str, Any], size: int) -> float:
    """A row's GFLOPs at ``size`` when profiled there, else at the size it was profiled at (ratios are what count)."""
    flops = profile["gflops"]
    return float(flops.get(str(size), next(iter(flops.values()))))


def rates(trials: Sequence[Any], spec: str | float | None, profile: Profile,
          profiles: Mapping[str, Mapping[str, Any]] | None) -> tuple[Callable[[Any], float | None], list[str]]:
    """A function trial -> clips/s per device, and notes on where the rates come from and their caveats."""
    bench: cost.BenchRates | None = None
    base: float | None = profile.throughput
    origin = "the profile's throughput"
    if spec is not None and Path(str(spec)).is_file():
        bench = cost.parse_bench(Path(str(spec)).read_text(encoding="utf-8"))
        origin = f"measured in {spec}"
    elif spec is not None:
        base, origin = _clips_per_s(spec), "--throughput"
    first = trials[0]

    def scaled(t: Any) -> float | None:
        if base is None:
            return None
        if not profiles:
            return base
        return base * _gflops(profiles[first.row], first.config.data.size) / _gflops(profiles[t.row],
                                                                                       t.config.data.size)

    def rate(t: Any) -> float | None:
        if bench is not None and t.row in bench.rates:
            return bench.rates[t.row]
        return scaled(t)

    notes = [_rate_note(base, origin, bench, profiles)]
    if bench is not None:
        notes += _bench_caveats(bench, profile, trials)
    return rate, notes


def _clips_per_s(spec: str | float) -> float:
    try:
        value = float(spec)
    except ValueError:
        value = -1.0
    if not value > 0:
        raise ValueError(f"--throughput {spec}: neither a positive number of clips/s nor a bench report file; "
                         "give e.g. 120 or results/gpu-check.md")
    return value


def _rate_note(base: float | None, origin: str, bench: cost.BenchRates | None, profiles: Any) -> str:
    if bench is not None:
        return f"throughput: {origin}, per row (clips/s = batch / step time of forward+backward)"
    if base is None:
        return "throughput: none given"
    return f"throughput: {base:g} clips/s per device for the first row ({origin})" + (
        ", the other rows scaled by their GFLOPs" if profiles else ", every row alike")


def _bench_caveats(bench: cost.BenchRates, profile: Profile, trials: Sequence[Any]) -> list[str]:
    """Where a bench report measured something other than what the trials will run."""
    out = []
    per_worker = profile.recipe.batch_size // profile.resources.workers
    device = "cuda" if profile.resources.gpu > 0 else "cpu"
    if (bench.batch or 1) < per_worker:
        stepped = f"{bench.batch} clip(s)" if bench.batch else "an unstated batch (JSON; 1, its default, assumed)"
        out.append(f"caveat: the bench stepped {stepped} at a time and the trials {per_worker} per device: a GPU "
                   "is faster per clip at the larger batch, so these hours are high; rerun `harness bench blocks "
                   f"--device cuda --batch {per_worker} --format md`")
    if bench.device is not None and bench.device != device:
        out.append(f"caveat: the bench ran on {bench.device}, the trials train on {device}")
    shapes = {(t.config.data.frames, t.config.data.size) for t in trials}
    if bench.frames is not None and shapes != {(bench.frames, bench.size)}:
        out.append(f"caveat: the bench input was {bench.frames}x{bench.size}, the trials' "
                   + ", ".join(f"{f}x{s}" for f, s in sorted(shapes)))
    missing = sorted({t.row for t in trials} - set(bench.rates))
    if missing:
        out.append(f"caveat: no bench row for {', '.join(missing)}: their rates are scaled from the profile's "
                   "throughput when it has one, else their hours are unknown")
    out.append("caveat: the bench steps in full precision without an optimizer step; training runs under "
               "autocast (bf16/fp16 on CUDA) with one")
    return out


def cluster_for(gpus: float | None, cpus: float | None, *, override_gpus: float | None,
                max_concurrent: int | None, where: str | None) -> cost.Cluster:
    """The cluster the estimate places trials on: ``--gpus N`` when given, else what the run found."""
    if override_gpus is not None:
        return cost.Cluster(gpus=override_gpus, cpus=None, max_concurrent=max_concurrent,
                            source=f"--gpus {override_gpus:g}")
    return cost.Cluster(gpus=gpus, cpus=cpus, max_concurrent=max_concurrent,
                        source=f"the Ray cluster at {where}" if where else "this machine")


def study_cost(study: Study, profile: Profile, trials: Sequence[Any], cluster: cost.Cluster, *,
               throughput: str | float | None = None,
               profiles: Mapping[str, Mapping[str, Any]] | None = None) -> cost.StudyCost | str:
    """The cost of ``trials`` (a grid plan's, :mod:`harness.study.grid`) on ``cluster``, or why it cannot be given."""
    sizes: dict[tuple, Sizes] = {}
    plans, notes = [], []
    rate, rate_notes = rates(trials, throughput, profile, profiles)
    for t in trials:
        d = t.config.data
        key = (d.format, d.root, d.annotations, d.synth.model_dump_json() if d.synth else None)
        if key not in sizes:
            found = split_sizes(d)
            if found is None:
                return (f"cost: split sizes of {d.format} data at {d.root} unknown (the data is not here and the "
                        "format has no published sizes); run it where the data is")
            sizes[key] = found
            notes.append(f"split sizes: {d.format} {found[0]:,} train / {found[1]:,} val ({found[2]})")
        train, val, _ = sizes[key]
        plans.append(cost.TrialPlan(t.key, t.config.recipe.epochs, t.config.recipe.batch_size, train, val,
                                    d.test_clips * d.test_crops, rate(t)))
    slot = cost.Slot(gpu=profile.resources.gpu, cpu=profile.resources.cpu, workers=profile.resources.workers)
    return cost.study_cost(plans, slot, cluster, notes + rate_notes)


def dry_run_text(study: Study, profile: Profile, trials: Sequence[Any], cluster: cost.Cluster, *,
                 throughput: str | float | None = None,
                 profiles: Mapping[str, Mapping[str, Any]] | None = None) -> str:
    """The cost block of ``harness run --dry-run``."""
    result = study_cost(study, profile, trials, cluster, throughput=throughput, profiles=profiles)
    return result if isinstance(result, str) else cost.format_cost(result)
