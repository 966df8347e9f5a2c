"""What a study costs before anyone books GPUs: trials, waves, optimizer steps, GPU-hours, wall time. Pure.

Only numbers go in and come out: nothing here reads a file, imports torch or
Ray, or looks at the clock. :mod:`harness.estimate` gathers the inputs from a
study, the data (or the published split sizes) and a throughput.

The model, each assumption named so it can be replaced:

* A trial trains ``epochs`` epochs of ``steps_per_epoch`` optimizer steps of
  ``batch_size`` clips (the global batch). The train loader drops the last
  partial batch (``harness.data.dataset.build_loader``); a data-parallel trial
  gives each of its W workers every W-th clip and ``batch_size / W`` a step
  (``harness.train.RankShard``), so a step is ``(N // W) // (batch_size // W)``.
* Training runs at ``rate`` clips/s per device; a data-parallel trial of W
  workers at ``W x rate`` (linear: DDP overlaps its all-reduce with the
  backward; an optimistic bound), a trial with a fraction g < 1 of a GPU at
  ``g x rate``.
* Every epoch rank 0 validates ``val_clips x views`` clips forward only, at
  :data:`EVAL_COST` of a training clip's time (a backward pass costs about two
  forwards: the input and the weight gradients), while the trial's other
  workers wait, booked.
* Ray Tune runs as many trials at once as the cluster's GPUs (and CPUs, and
  ``--max-concurrent``) fit; a trial starts when a slot frees, in plan order.
  Waves = ceil(trials / concurrent); wall time is that schedule's makespan.
* GPU-hours: a trial's hours times the GPUs it books (workers x gpu). A CPU
  profile books CPU cores instead; the same sums are then core-hours.

Not modelled: data loading (``harness bench data`` says whether it keeps up),
start-up, checkpoint writes, retries of failed trials.
"""
from __future__ import annotations

import heapq
import json
import math
import re
from dataclasses import dataclass, field

# Forward-only time of a clip over its forward+backward training time.
EVAL_COST = 1 / 3

# Published split sizes (train, val), used when the data is not on this machine; labelled "nominal".
NOMINAL_SPLITS: dict[str, tuple[int, int]] = {
    # Goyal et al., "The 'something something' video database", ICCV 2017 (v1): 108,499 videos =
    # 86,017 train + 11,522 validation + 10,960 test.
    "sthv1": (86_017, 11_522),
    # Mahdisoltani et al., arXiv:1804.09235 (v2): 220,847 videos = 168,913 train + 24,777 validation + 27,157 test.
    "sthv2": (168_913, 24_777),
    # Kay et al., "The Kinetics Human Action Video Dataset", arXiv:1705.06950, Sec. 2: 306,245 clips, 50 per
    # class for validation and 100 for test over 400 classes: 306,245 - 20,000 - 40,000 = 246,245 train,
    # 20,000 val. Copies made since hold fewer (YouTube removals): count yours with `harness data inspect`.
    "k400": (246_245, 20_000),
    # Li et al., "RESOUND", ECCV 2018 (V1: 16,067 train / 2,337 test, 18,404 clips); the RESOUND dataset page's
    # cleaned V2 split, which the harness reads first (Diving48_V2_{train,test}.json): 15,027 train / 1,970 test.
    "diving48": (15_027, 1_970),
}


@dataclass(frozen=True)
class TrialPlan:
    """One trial as the cost model sees it; ``rate``: training clips/s per device for its config (None: unknown)."""

    key: str
    epochs: int
    batch_size: int
    train_clips: int
    val_clips: int
    views: int = 1  # test clips x crops of each val clip
    rate: float | None = None


@dataclass(frozen=True)
class Slot:
    """What one trial books (``harness.config.Resources``): ``gpu`` and ``cpu`` per worker, ``workers`` ranks."""

    gpu: float = 0.0
    cpu: float = 1.0
    workers: int = 1

    @property
    def device(self) -> str:
        return "GPU" if self.gpu > 0 else "CPU"

    @property
    def booked(self) -> float:
        """Devices a trial holds: GPUs, or CPU cores for a CPU profile."""
        return self.workers * (self.gpu if self.gpu > 0 else self.cpu)

    @property
    def speedup(self) -> float:
        """Training speed of the trial in units of one device's ``rate``."""
        return self.workers * (min(self.gpu, 1.0) if self.gpu > 0 else 1.0)

    @property
    def eval_speedup(self) -> float:
        """Validation runs on rank 0 alone."""
        return min(self.gpu, 1.0) if self.gpu > 0 else 1.0


@dataclass(frozen=True)
class Cluster:
    """Where the trials run; ``None`` where unknown (then no waves or wall time)."""

    gpus: float | None = None
    cpus: float | None = None
    max_concurrent: int | None = None
    source: str = ""  # how it was learned: "--gpus 8", "the Ray cluster at HOST:6379", "this machine"


@dataclass(frozen=True)
class TrialCost:
    key: str
    steps_per_epoch: int
    steps: int  # optimizer steps over all epochs
    train_clips: int  # clips trained on over all epochs (the dropped partial batches left out)
    eval_clips: int  # clip views validated over all epochs
    seconds: float | None  # None without a rate
    device_hours: float | None


@dataclass(frozen=True)
class StudyCost:
    trials: list[TrialCost]
    slot: Slot
    cluster: Cluster
    concurrent: int | None  # trials at once; 0: a trial does not fit; None: cluster unknown
    waves: int | None
    steps: int
    device_hours: float | None
    wall_seconds: float | None
    notes: list[str] = field(default_factory=list)


def steps_per_epoch(train_clips: int, batch_size: int, workers: int = 1) -> int:
    """Optimizer steps of one epoch, as the train loader (sharded over ``workers`` ranks) makes them."""
    if train_clips < batch_size:  # build_loader keeps the one partial batch of a split smaller than a batch
        return 1 if train_clips > 0 else 0
    return (train_clips // workers) // (batch_size // workers)


def trial_cost(plan: TrialPlan, slot: Slot) -> TrialCost:
    per_epoch = steps_per_epoch(plan.train_clips, plan.batch_size, slot.workers)
    steps = per_epoch * plan.epochs
    train = steps * plan.batch_size if plan.train_clips >= plan.batch_size else plan.train_clips * plan.epochs
    evals = plan.val_clips * plan.views * plan.epochs
    seconds = hours = None
    if plan.rate:
        seconds = train / (plan.rate * slot.speedup) + evals * EVAL_COST / (plan.rate * slot.eval_speedup)
        hours = seconds / 3600 * slot.booked
    return TrialCost(plan.key, per_epoch, steps, train, evals, seconds, hours)


def concurrency(slot: Slot, cluster: Cluster) -> int | None:
    """Trials the cluster runs at once: what its GPUs, CPUs and ``max_concurrent`` allow; None if unknown."""
    limits = []
    if slot.gpu > 0:
        if cluster.gpus is None:
            return None  # a GPU profile on a cluster of unknown GPUs: its CPUs alone do not say
        limits.append(math.floor(cluster.gpus / (slot.workers * slot.gpu) + 1e-9))
    if cluster.cpus is not None:
        limits.append(math.floor(cluster.cpus / (slot.workers * slot.cpu) + 1e-9))
    if not limits:
        return None
    if cluster.max_concurrent is not None:
        limits.append(cluster.max_concurrent)
    return max(0, min(limits))


def waves(trials: int, concurrent: int | None) -> int | None:
    if not concurrent:
        return None
    return math.ceil(trials / concurrent)


def makespan(durations: list[float], concurrent: int) -> float:
    """Wall time of ``durations`` run in order on ``concurrent`` slots, each starting when a slot frees."""
    free = [0.0] * min(concurrent, len(durations))
    heapq.heapify(free)
    end = 0.0
    for d in durations:
        start = heapq.heappop(free)
        end = max(end, start + d)
        heapq.heappush(free, start + d)
    return end


def study_cost(plans: list[TrialPlan], slot: Slot, cluster: Cluster, notes: list[str] | None = None) -> StudyCost:
    """The cost of every trial and of the study on ``cluster``."""
    trials = [trial_cost(p, slot) for p in plans]
    at_once = concurrency(slot, cluster)
    seconds = [t.seconds for t in trials if t.seconds is not None]
    timed = len(seconds) == len(trials)  # a rate for every trial (seconds and hours are set together)
    hours = sum(t.device_hours for t in trials if t.device_hours is not None) if timed else None
    wall = makespan(seconds, at_once) if timed and at_once else None
    return StudyCost(trials, slot, cluster, at_once, waves(len(trials), at_once), sum(t.steps for t in trials),
                     hours, wall, list(notes or []))


# ----------------------------------------------------------------------------- a bench report as rates


@dataclass(frozen=True)
class BenchRates:
    """Training clips/s per device of each row, from ``harness bench blocks`` (forward+backward, no optimizer step).

    ``batch``, ``device``, ``frames`` and ``size`` are what the markdown title states; its JSON states none
    of them (None: the bench's defaults, batch 1 at 8x112, are assumed by whoever reads them).
    """

    rates: dict[str, float]
    batch: int | None = None
    device: str | None = None
    frames: int | None = None
    size: int | None = None


_BENCH_TITLE = re.compile(r"Forward\+backward step, (\d+)x(\d+), batch (\d+), (\w+) \(")


def _md_rows(text: str) -> list[dict[str, str]]:
    """The rows of the first markdown table whose header has ``row`` and ``median_s``."""
    lines = [ln.strip() for ln in text.splitlines()]
    for i, line in enumerate(lines):
        cells = [c.strip() for c in line.strip("|").split("|")]
        if line.startswith("|") and "row" in cells and "median_s" in cells:
            body = [ln for ln in lines[i + 2:]]
            rows = []
            for ln in body:
                if not ln.startswith("|"):
                    break
                rows.append(dict(zip(cells, (c.strip() for c in ln.strip("|").split("|")))))
            return rows
    return []


def parse_bench(text: str) -> BenchRates:
    """Rates from the JSON or markdown ``harness bench blocks`` printed (or ``make bench``'s results/bench.md).

    clips/s = batch / median step seconds; the control row (the baseline timed again) is left out.
    Raises ValueError naming what is missing.
    """
    text = text.strip()
    title = _BENCH_TITLE.search(text)
    frames, size, batch, device = (int(title[1]), int(title[2]), int(title[3]), title[4]) if title else (None,) * 4
    if text.startswith("["):
        rows = json.loads(text)
    else:
        rows = _md_rows(text)
    if not rows:
        raise ValueError("no `harness bench blocks` table (columns row, median_s) in it; write one with "
                         "`harness bench blocks --device cuda --format md > bench.md`")
    per_step = batch or 1
    rates = {str(r["row"]).strip(): per_step / float(r["median_s"]) for r in rows
             if not str(r["row"]).strip().endswith("(control)")}
    return BenchRates(rates, batch, device, frames, size)


# ----------------------------------------------------------------------------- text


def _n(x: float) -> str:
    return f"{x:,.0f}"


def _hours(x: float) -> str:
    return f"{x:,.1f}" if x >= 10 else f"{x:,.2f}"


def _h(seconds: float) -> str:
    return f"{_hours(seconds / 3600)} h" if seconds >= 3600 else f"{seconds / 60:,.0f} min"


def _placement(cost: StudyCost) -> str:
    slot, cluster, n = cost.slot, cost.cluster, len(cost.trials)
    each = f"{slot.booked:g} {slot.device}{'s' if slot.booked != 1 else ''} each"
    if slot.workers > 1:
        each += f" ({slot.workers} data-parallel workers)"
    head = f"{n} trial{'s' if n != 1 else ''} ({each})"
    have = cluster.gpus if slot.gpu > 0 else cluster.cpus
    where = f" on {have:g} {slot.device}s ({cluster.source})" if have is not None else ""
    if cost.concurrent is None:
        return f"{head}; cluster unknown: pass --gpus N (or --address) for waves and wall time"
    if cost.concurrent == 0:
        return f"{head}{where}: a trial does not fit; pass --gpus N for the cluster you will book"
    return f"{head}{where}: {cost.concurrent} at once, {cost.waves} wave{'s' if cost.waves != 1 else ''}"


def format_cost(cost: StudyCost) -> str:
    """The cost block of ``harness run --dry-run``: placement, steps, hours, and the assumptions behind them."""
    first = cost.trials[0]
    same = all((t.steps, t.seconds) == (first.steps, first.seconds) for t in cost.trials)
    unit = "GPU-hours" if cost.slot.device == "GPU" else "CPU-core-hours"
    lines = [f"cost: {_placement(cost)}",
             f"  steps: {_n(cost.steps)} optimizer steps in all"
             + (f"; {_n(first.steps)} per trial ({_n(first.steps_per_epoch)} per epoch)" if same else ""),
             ]
    if cost.device_hours is None:
        lines.append("  hours: no throughput; pass --throughput CLIPS_PER_S or a `harness bench blocks --device "
                     "cuda --format json` file, or set the profile's throughput")
    else:  # the study has hours, so every trial has its seconds and hours
        timed = [(t, t.seconds, t.device_hours) for t in cost.trials
                 if t.seconds is not None and t.device_hours is not None]
        _, seconds, hours = timed[0]
        per = f"; {_hours(hours)} per trial ({_h(seconds)})" if same else ""
        wall = f"; wall time {_h(cost.wall_seconds)}" if cost.wall_seconds is not None else ""
        lines.append(f"  {unit}: {_hours(cost.device_hours)}{per}{wall}")
        if not same:
            lines += ["", "| trial | steps | hours | " + unit + " |", "|---|---:|---:|---:|"]
            lines += [f"| {t.key} | {_n(t.steps)} | {s / 3600:,.2f} | {h:,.2f} |" for t, s, h in timed]
            lines.append("")
    lines += [f"  {note}" for note in cost.notes]
    lines.append(f"  model: validation forward-only at {EVAL_COST:.2f} of a training clip's time; data loading, "
                 "start-up and retries not counted (harness.cost)")
    return "\n".join(lines)
