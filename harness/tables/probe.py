"""A probe study's report (``kind: probe``): top-1 per object size x motion speed cell, per block and regime.

    harness tables studies/scale_probe.yaml      # -> results/scale_probe.{md,csv,png}

Per row and regime: the overall, worst-cell and spread (best minus worst cell)
top-1, each mean +- std over seeds, and a size x speed heatmap per block
(:func:`harness.plots.scale_heatmaps`). The cells are computed here from each
trial's per-clip predictions (``predictions.json``, :mod:`harness.probe` for the
buckets), not logged by the trainer: the trainer knows no study kind.
"""
from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import pandas as pd

from harness import names, plots, stats
from harness.config import Study
from harness.data.synth import CLASSES
from harness.predictions import Predictions
from harness.probe import SIZE_NAMES, SPEED_NAMES, clip_buckets, stratified_top1
from harness.tables import statistics
from harness.tables.common import Report, header, header_line, heading, interval_cell, row_summary, write_set
from harness.tracking import StudyRuns, Tracker, TrialRun

log = logging.getLogger(__name__)


def trial_cells(study: Study, profile: str, tracker: Tracker, trial: TrialRun) -> dict[str, float]:
    """A finished trial's ``val_top1/<cell>`` and ``val_count/<cell>``, from its per-clip predictions."""
    found = tracker.read_json(trial.run_id, names.PREDICTIONS)
    if found is None:
        log.warning("%s: no %s; its cells are left out", trial.key, names.PREDICTIONS)
        return {}
    predictions = Predictions.from_json(found)
    buckets = clip_buckets(study.profiles[profile].data, predictions)
    return stratified_top1(predictions.correct(1), buckets) if buckets is not None else {}


def cell_frame(study: Study, profile: str, tracker: Tracker, runs: StudyRuns) -> pd.DataFrame:
    """One line per finished trial x size x speed cell: row, regime, seed, size, speed, top1, count.

    A cell that held no val clip has no line (absent, not 0).
    """
    lines = []
    for t in runs.trials:
        if not t.finished:
            continue
        m = trial_cells(study, profile, tracker, t)
        for size in SIZE_NAMES:
            for speed in SPEED_NAMES:
                cell = f"size_{size}/speed_{speed}"
                if f"val_top1/{cell}" in m:
                    lines.append({"row": t.trial.row, "regime": t.trial.regime or "", "seed": t.trial.seed,
                                  "size": size, "speed": speed, "top1": m[f"val_top1/{cell}"],
                                  "count": m.get(f"val_count/{cell}")})
    return pd.DataFrame(lines, columns=["row", "regime", "seed", "size", "speed", "top1", "count"])


def _labels(study: Study) -> list[tuple[str, str]]:
    """(row, regime) in the study's order: rows outer, regimes inner."""
    return [(row, regime) for row in study.rows for regime in (list(study.regimes) if study.regimes else [""])]


def _mean_std(values: pd.Series) -> tuple[float | None, float | None]:
    values = pd.to_numeric(values, errors="coerce").dropna()
    return (values.mean() if len(values) else None, values.std(ddof=1) if len(values) > 1 else None)


def cell_means(study: Study, cells: pd.DataFrame) -> pd.DataFrame:
    """Per (row, regime, size, speed): top-1 mean over the finished seeds and the clips in the cell; study order."""
    means = cells.groupby(["row", "regime", "size", "speed"], sort=False).agg(
        top1=("top1", "mean"), count=("count", "max"), seeds=("seed", "nunique")).reset_index()
    order = {label: i for i, label in enumerate(_labels(study))}
    means["order"] = [order.get((r, g), len(order)) for r, g in zip(means["row"], means["regime"])]
    return means.sort_values("order", kind="stable").drop(columns="order").reset_index(drop=True)


def probe_frame(study: Study, runs: StudyRuns, cells: pd.DataFrame) -> pd.DataFrame:
    """Per row x regime: overall top-1, worst-cell top-1 and spread (best minus worst cell), mean ± std over seeds.

    Worst cell and spread are taken within each seed, then averaged over seeds
    (the mean of the worst cells, not the worst of the mean cells). Only
    FINISHED trials count; ``trials`` says how many were planned or ran.
    """
    per_seed = per_seed_values(cells)
    means = cell_means(study, cells)
    values = seed_values(study, runs, per_seed)
    ivs = {metric: stats.row_intervals(table) if any(table.values()) else {} for metric, table in values.items()}
    out = []
    for row, regime in _labels(study):
        mine = [t for t in runs.trials if t.trial.row == row and (t.trial.regime or "") == regime]
        done = [t for t in mine if t.finished]
        overall = pd.Series([t.metrics.get(names.LAST_TOP1, t.metrics.get(names.VAL_TOP1)) for t in done],
                            dtype=float)
        seeds = per_seed[(per_seed["row"] == row) & (per_seed["regime"] == regime)]
        r: dict[str, Any] = {"row": row, "regime": regime or None, "block": study.rows[row].block}
        for name, series in (("top1", overall), ("worst", seeds["worst"]), ("spread", seeds["spread"])):
            r[f"{name}_mean"], r[f"{name}_std"] = _mean_std(series)
        cell = means[(means["row"] == row) & (means["regime"] == regime)]
        worst = cell.loc[cell["top1"].idxmin()] if len(cell) else None
        r["worst_cell"] = f"{worst['size']}/{worst['speed']}" if worst is not None else None
        r["cells"] = int(seeds["cells"].min()) if len(seeds) else 0
        r["min_cell_clips"] = int(cell["count"].min()) if len(cell) and cell["count"].notna().any() else None
        r["seeds"], r["trials"] = len(done), len(mine)
        for name, found in ivs.items():
            r.update(statistics.interval_columns(name, found.get(label(row, regime))))
        out.append(r)
    return pd.DataFrame(out)


def per_seed_values(cells: pd.DataFrame) -> pd.DataFrame:
    """Per row, regime and seed: the worst and best cell, their spread, and how many cells there were."""
    per_seed = cells.groupby(["row", "regime", "seed"])["top1"].agg(worst="min", best="max", cells="size")
    return per_seed.assign(spread=per_seed["best"] - per_seed["worst"]).reset_index()


def regimes_of(study: Study) -> list[str]:
    return list(study.regimes) if study.regimes else [""]


def label(row: str, regime: str) -> str:
    return f"{row}@{regime}" if regime else row


def seed_values(study: Study, runs: StudyRuns, per_seed: pd.DataFrame) -> dict[str, dict[str, dict[int, float]]]:
    """Per measure (top1, worst, spread), per row@regime, per finished seed: the value the table averages."""
    out: dict[str, dict[str, dict[int, float]]] = {m: {label(r, g): {} for r, g in _labels(study)}
                                                   for m in ("top1", "worst", "spread")}
    for t in runs.trials:
        key = label(t.trial.row, t.trial.regime or "")
        top1 = t.metrics.get(names.LAST_TOP1, t.metrics.get(names.VAL_TOP1))
        if t.finished and key in out["top1"] and top1 is not None:
            out["top1"][key][t.trial.seed] = float(top1)
    for _, s in per_seed.iterrows():
        key = label(str(s["row"]), str(s["regime"]))
        if key in out["worst"]:
            out["worst"][key][int(s["seed"])] = float(s["worst"])
            out["spread"][key][int(s["seed"])] = float(s["spread"])
    return out


def regime_orderings(study: Study, runs: StudyRuns) -> dict[str, stats.StudyStatistics]:
    """Per regime, the study's orderings of the rows' top-1 (a regime is its own train/test condition)."""
    out = {}
    for regime in regimes_of(study):
        table: dict[str, dict[int, float]] = {row: {} for row in study.rows}
        for t in runs.trials:
            top1 = t.metrics.get(names.LAST_TOP1, t.metrics.get(names.VAL_TOP1))
            if t.finished and (t.trial.regime or "") == regime and t.trial.row in table and top1 is not None:
                table[t.trial.row][t.trial.seed] = float(top1)
        judged = statistics.orderings(study, table)
        if judged is not None:
            out[regime] = judged
    return out


def probe_display(frame: pd.DataFrame) -> pd.DataFrame:
    """The human probe table: one line per block and regime."""
    return pd.DataFrame([{
        "row": r["row"], "regime": r["regime"] or "-",
        "top-1": interval_cell(r, "top1"),
        "worst-cell top-1": interval_cell(r, "worst"),
        "spread (best − worst cell)": interval_cell(r, "spread", bounds=None),
        "lowest mean cell (size/speed)": r["worst_cell"] or "-",
        "seeds": f"{r['seeds']}/{r['trials']}"} for _, r in frame.iterrows()])


PROBE_NOTE = ("top-1: val accuracy (%) at the last epoch over all val clips. Worst-cell top-1: the lowest of the "
              "size x speed cells' top-1 within each seed; spread: that seed's best cell minus its worst. Each is "
              "mean [95% interval] over seeds. 'lowest mean cell': the cell with the lowest top-1 averaged "
              "over seeds. Cells do not hold the same mix of motion families (see the study file): compare a cell "
              "across blocks, not the cells of one block with each other.")


def versus(worst: dict[str, dict[int, float]], regimes: list[str], ours: str = "Ours",
           others: tuple[str, ...] = ("RF-S", "RF-L")) -> list[str]:
    """Per regime, ``ours`` minus each single-receptive-field row on worst-cell top-1 (``worst``: row@regime ->
    seed -> value), with its 95% interval and verdict (:func:`harness.stats.compare`, paired by seed, Holm over
    these comparisons): the issue's question, answered with what the seeds support."""
    lines = []
    for regime in regimes:
        table = {key: v for key, v in worst.items() if v and key.endswith(f"@{regime}" if regime else "")}
        mine = label(ours, regime)
        pairs = [(mine, label(o, regime)) for o in others if label(o, regime) in table]
        if mine not in table or not pairs:
            continue
        parts = []
        for c in stats.compare(table, pairs):
            other = c.b.split("@")[0]
            if c.low is None or c.high is None:
                parts.append(f"{c.diff:+.1f} vs {other} (no variance to judge it: one seed)")
                continue
            verdict = ("higher" if c.diff > 0 else "lower") if c.resolved else "unresolved"
            parts.append(f"{c.diff:+.1f} [{c.low:+.1f}, {c.high:+.1f}] vs {other} ({verdict})")
        lines.append(f"Worst-cell top-1{f' ({regime})' if regime else ''}, {ours} minus: " + "; ".join(parts)
                     + ". [95% interval of the difference], Holm over these comparisons.")
    return lines


def probe_notes(study: Study, profile: str, runs: StudyRuns, cells: pd.DataFrame) -> list[str]:
    """Lines under the probe table: bucket edges, clips per cell, chance, the regimes and the probe's wall time."""
    data = study.profiles[profile].data if profile in study.profiles else None
    lines = []
    if data is not None and data.buckets is not None:
        lines.append(f"Cells: object size (side / frame side) cut at {list(data.buckets.size)}, motion speed "
                     f"(displacement per frame / frame side) at {list(data.buckets.speed)} (data.buckets).")
    counts = cell_means(study, cells).dropna(subset=["count"])
    ranges = {regime: f"{int(g['count'].min())}-{int(g['count'].max())}"
              for regime, g in counts.groupby("regime", sort=False)}
    if len(set(ranges.values())) == 1:  # the regimes share their val split (same seed and val ranges)
        lines.append(f"Val clips per cell: {next(iter(ranges.values()))}.")
    elif ranges:
        lines.append("Val clips per cell: " + ", ".join(f"{v} ({k})" for k, v in ranges.items()) + ".")
    if data is not None and data.format == "synth":
        lines.append(f"Chance is {100 / len(CLASSES):.0f}% ({len(CLASSES)} classes in reversal pairs); a model blind "
                     "to frame order (TSN) cannot beat 50% within a pair.")
    for name, regime in (study.regimes or {}).items():
        if regime.description:
            lines.append(f"{name}: {regime.description}.")
    wall = runs.parent.tags.get(names.WALL_S)
    if wall:
        lines.append(f"Wall time of the probe (harness run, every trial, Ray and MLflow included): {float(wall):.0f} s.")
    return lines


def render(study: Study, profile: str, runs: StudyRuns,
           cells: pd.DataFrame) -> tuple[pd.DataFrame, dict[str, str], dict[str, str]]:
    """A probe study's (CSV frame, header, {"md": text, "csv": text}); the PNG is :func:`harness.plots.scale_heatmaps`."""
    frame = probe_frame(study, runs, cells)
    h = header(study, profile, runs, frame)
    judged = regime_orderings(study, runs)
    h["orderings"] = "; ".join(f"{regime or 'all'}: {st.summary}" for regime, st in judged.items())
    verdicts = [part.replace("## Which orderings hold", f"## Which orderings hold ({regime})" if regime else
                             "## Which orderings hold")
                for regime, st in judged.items() for part in statistics.sections(st, frame.iloc[0:0])]
    worst = seed_values(study, runs, per_seed_values(cells))["worst"]
    below = "\n\n".join([PROBE_NOTE, statistics.POOLED_NOTE, *versus(worst, [g or "" for g in regimes_of(study)]),
                          *verdicts,
                          *probe_notes(study, profile, runs, cells)])
    md = f"{heading(study, runs, h)}{probe_display(frame).to_markdown(index=False)}\n\n{below}\n"
    csv = frame.assign(profile=h["profile"], git_commit=h["commit"], date=h["date"]).to_csv(
        index=False, float_format="%.4f")
    return frame, h, {"md": md, "csv": csv}


def write(study: Study, profile: str, tracker: Tracker, parent_id: str | None = None,
          out_dir: str | Path = "results") -> Report:
    """Read the probe's runs and predictions from MLflow and write ``<out_dir>/<study>.{md,csv,png}``."""
    runs = tracker.read_study(study.name, profile, parent_id)
    cells = cell_frame(study, profile, tracker, runs)
    frame, h, texts = render(study, profile, runs, cells)
    title = header_line(h)
    paths = write_set(study, runs, Path(out_dir), texts,
                      {".png": lambda path: plots.scale_heatmaps(cell_means(study, cells), path, title=title)})
    labelled = frame.assign(row=[f"{r}@{g}" if g else r for r, g in zip(frame["row"], frame["regime"])])
    return Report(paths, texts["md"], row_summary(labelled))
