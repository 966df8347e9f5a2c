"""What the tables say about their own numbers: intervals, which orderings hold, where the noise comes from.

The arithmetic is :mod:`harness.stats` (scipy.stats); this module feeds it the
runs a table reads from MLflow and turns its answers into cells and lines:

* every accuracy cell is ``mean [low, high]`` with a 95% interval over the row's
  seeds (``†``: the variance pooled over the study's rows, at <= 3 seeds);
* the study's orderings (each row against the baseline, each adjacent pair by
  mean, or the study's own ``comparisons``) get a difference with its interval,
  a Holm-corrected verdict, P(A > B) and the seeds per row 80% power would need;
* each row's seed-to-seed spread is split into validation-clip sampling and the
  seed's own part, from the trials' per-clip predictions (``predictions.json``);
* on the synthetic set, the order accuracy within reversal pairs.

docs/statistics.md says how to read each of them.
"""
from __future__ import annotations

import json
import logging
import math
from collections.abc import Iterable, Mapping, Sequence

import numpy as np
import pandas as pd

from harness import names, stats
from harness.config import Study
from harness.metrics import order_accuracy_of, reversal_pairs
from harness.predictions import Predictions
from harness.tracking import StudyRuns, Tracker

log = logging.getLogger(__name__)

POOLED_MARK = "†"
POOLED_NOTE = (f"{POOLED_MARK}: 95% interval from the seed variance pooled over the study's rows (rows with at most "
               f"{stats.POOL_AT_MOST} seeds; docs/statistics.md).")


def predictions(tracker: Tracker, runs: StudyRuns) -> dict[str, Predictions]:
    """Each finished trial's per-clip predictions, by trial key (trials without them are left out)."""
    out = {}
    for t in runs.trials:
        if not t.finished:
            continue
        found = tracker.read_json(t.run_id, names.PREDICTIONS)
        if found is None:
            log.info("%s: no %s (a run from before per-clip predictions); its noise split is left out",
                     t.key, names.PREDICTIONS)
            continue
        out[t.key] = Predictions.from_json(found)
    return out


def scores(trials: pd.DataFrame, col: str, rows: Sequence[str]) -> dict[str, dict[int, float]]:
    """row -> seed -> value of ``col`` over the finished trials (``harness.tables.common.trial_frame``)."""
    out: dict[str, dict[int, float]] = {row: {} for row in rows}
    if not len(trials):
        return out
    done = trials[trials["status"] == "FINISHED"]
    for row, seed, value in zip(done["row"], done["seed"], pd.to_numeric(done[col], errors="coerce")):
        if row in out and value is not None and not math.isnan(value):
            out[row][int(seed)] = float(value)
    return out


def intervals(trials: pd.DataFrame, col: str, rows: Sequence[str]) -> dict[str, stats.RowInterval]:
    """Each row's mean and 95% interval of ``col`` (rows with no finished trial are left out)."""
    table = {row: values for row, values in scores(trials, col, rows).items() if values}
    return stats.row_intervals(table) if table else {}


def interval_columns(prefix: str, ri: stats.RowInterval | None) -> dict[str, object]:
    """The CSV's ``<prefix>_low``, ``_high`` and ``_pooled`` of one row."""
    return {f"{prefix}_low": None if ri is None else ri.low, f"{prefix}_high": None if ri is None else ri.high,
            f"{prefix}_pooled": None if ri is None else ri.pooled}


def orderings(study: Study, table: Mapping[str, Mapping[int, float]]) -> stats.StudyStatistics | None:
    """The study's comparisons on ``table`` (row -> seed -> top-1): its own pairs, else every row against the
    baseline (default: the first row) and each adjacent pair by mean. None with fewer than two rows run."""
    ran = {row: values for row, values in table.items() if values}
    if len(ran) < 2:
        return None
    pairs = [(a, b) for a, b in study.comparisons or [] if a in ran and b in ran] or None
    baseline = study.baseline or next(iter(ran))
    return stats.analyze(ran, baseline=baseline if baseline in ran else None, pairs=pairs)


def summary_line(st: stats.StudyStatistics | None) -> str:
    return "" if st is None else f"{st.summary} (95%, Holm over the study's comparisons)"


def ordering_table(st: stats.StudyStatistics) -> pd.DataFrame:
    """One line per comparison, as a reader wants it: the difference, the verdict and what it would cost."""
    lines = []
    for c in st.comparisons:
        diff = f"{c.diff:+.1f}" if c.low is None or c.high is None else f"{c.diff:+.1f} [{c.low:+.1f}, {c.high:+.1f}]"
        need = "-" if c.resolved else (str(c.seeds_needed) if c.seeds_needed is not None else f"> {stats.MAX_SEEDS}")
        lines.append({"ordering": f"{c.a} vs {c.b}", "difference (points)": diff,
                      "test": f"{c.method}, n {c.n_pairs or f'{c.n_a}/{c.n_b}'}",
                      "p (Holm)": "-" if c.p_holm is None else f"{c.p_holm:.3g}",
                      "P(A > B)": "-" if c.p_a_better is None else f"{c.p_a_better:.2f}",
                      "verdict": "resolved" if c.resolved else "unresolved",
                      "seeds per row for 80% power": need})
    return pd.DataFrame(lines)


def noise_splits(rows: Iterable[str], trials: pd.DataFrame,
                 clips: Mapping[str, Predictions]) -> dict[str, stats.NoiseSplit]:
    """Each row's seed-to-seed spread split into validation-clip sampling and the seed's own part (rows with
    at least two finished seeds scored on the same clips)."""
    out = {}
    for row in rows:
        mine = trials[(trials["row"] == row) & (trials["status"] == "FINISHED")] if len(trials) else trials
        per_seed = {int(s): clips[k] for s, k in zip(mine["seed"], mine["key"]) if k in clips} if len(mine) else {}
        aligned = _aligned(per_seed)
        if len(aligned) >= 2:
            out[row] = stats.split_noise(aligned)
    return out


def _aligned(per_seed: Mapping[int, Predictions]) -> dict[int, np.ndarray]:
    """Per seed, per-clip correctness in one clip order (the ids every seed scored)."""
    if not per_seed:
        return {}
    common = set.intersection(*(set(p.ids) for p in per_seed.values()))
    order = sorted(common)
    out = {}
    for seed, p in per_seed.items():
        index = {clip: i for i, clip in enumerate(p.ids)}
        correct = p.correct(1)
        out[seed] = np.array([correct[index[c]] for c in order], dtype=bool)
    return out


def order_accuracies(study: Study, profile: str, trials: pd.DataFrame,
                     clips: Mapping[str, Predictions]) -> pd.DataFrame | None:
    """Per finished trial, the order accuracy within reversal pairs (synthetic data only; None otherwise):
    a frame with the trial_frame's row, seed, key, status and ``order_acc``."""
    used = study.profiles.get(profile)
    if used is None or used.data.format != "synth" or not len(trials) or not clips:
        return None
    pairs = reversal_pairs()
    values = [order_accuracy_of(clips[k], pairs) if k in clips else None for k in trials["key"]]
    return trials.assign(order_acc=values)


def sections(judged: stats.StudyStatistics | None, frame: pd.DataFrame) -> list[str]:
    """The lines under a table: which orderings hold, and where each row's spread comes from."""
    out = []
    if judged is not None:
        out.append(f"## Which orderings hold\n\n{judged.summary}: each ordering's difference with its 95% interval "
                   "(paired by seed where the rows share seeds), Holm-corrected over the study's comparisons; "
                   "P(A > B) under the t model; the seeds per row at which 80% power would resolve the measured "
                   f"difference.\n\n{ordering_table(judged).to_markdown(index=False)}")
    if "seed_sd" in frame and frame["seed_sd"].notna().any():
        rows = frame[frame["seed_sd"].notna()]
        table = pd.DataFrame({"row": rows["row"], "seed part (sd)": rows["seed_sd"].map("{:.1f}".format),
                              "validation-clip part (sd)": rows["clip_sd"].map("{:.1f}".format),
                              "more would help": rows["more_of"]})
        out.append("## Where the spread comes from\n\nEach row's seed-to-seed spread of top-1 split into the "
                   "seed's own part (only more seeds average it) and validation-clip sampling (which clips a "
                   "seed happens to get right; more validation clips shrink it), in points, from the trials' "
                   f"per-clip predictions.\n\n{table.to_markdown(index=False)}")
    return out


def waves_note(runs: StudyRuns) -> list[str]:
    """What ``--until-resolved`` did: the seeds each wave added and why, and why it stopped."""
    history = json.loads(runs.parent.tags.get(names.WAVES, "[]"))
    lines = []
    for i, wave in enumerate(history, 1):
        if "added" in wave:
            added = ", ".join(f"{row} +{n}" for row, n in wave["added"].items())
            lines.append(f"wave {i}: {added} seed(s), for {'; '.join(wave['unresolved'])}")
        else:
            lines.append(f"stopped: {wave['stop']}" + (f" (unresolved: {'; '.join(wave['unresolved'])})"
                                                         if wave["unresolved"] else ""))
    return [f"Seeds added by `--until-resolved`: {'. '.join(lines)}."] if lines else []
