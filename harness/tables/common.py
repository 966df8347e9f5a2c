"""What every report shares: reading the runs' protocol and data, the header, number formatting, and
writing a set of files all or nothing (never an incomplete table over a complete one)."""
from __future__ import annotations

import logging
import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import pandas as pd

from harness import names
from harness.config import Study
from harness.errors import named
from harness.files import write_atomic
from harness.protocol import Protocol
from harness.tracking import RunRecord, StudyRuns, TrialRun

log = logging.getLogger(__name__)

NOT_RECORDED = "not recorded"
TRACED = {"protocol": "protocol", "data_fingerprint": "data"}  # frame column -> flag column in the human table
INCOMPLETE = "Incomplete:"  # how a table that lacks trials starts its second line


@dataclass(frozen=True)
class Report:
    """What a report wrote (by kind of file), the text to print, and the numbers its parent run carries
    so MLflow's chart view compares the rows at a glance (a row's mean top-1 and GFLOPs)."""

    paths: dict[str, Path]
    text: str
    summary: dict[str, float] = field(default_factory=dict)


def trial_protocol(trial: TrialRun) -> str:
    """The trial's test protocol name: its tag, else rebuilt from its logged data params (runs before the tag)."""
    if trial.tags.get(names.PROTOCOL):
        return trial.tags[names.PROTOCOL]
    p = trial.params
    try:
        return Protocol(int(p["data.frames"]), int(p["data.size"]), int(p.get("data.test_clips", 1)),
                        int(p.get("data.test_crops", 1))).name
    except (KeyError, ValueError):
        return NOT_RECORDED


def references(trials: pd.DataFrame, col: str) -> dict[Any, str]:
    """The table's value of a traced column (protocol, data fingerprint): the most common among finished
    trials, per probe regime (each regime has its own data), else among all trials."""
    if not len(trials):
        return {}
    done = trials[trials["status"] == "FINISHED"]
    pool = done if len(done) else trials
    return {regime: group[col].mode().iloc[0]
            for regime, group in pool.groupby(pool["regime"].fillna(""), sort=True)}


def when(parent: RunRecord) -> str:
    return datetime.fromtimestamp((parent.end_time or parent.start_time) / 1000, tz=timezone.utc).strftime(
        "%Y-%m-%d %H:%M UTC")


def completeness(runs: StudyRuns) -> str:
    """An empty string for a study whose invocation finished, else the line that says what is missing."""
    p = runs.parent
    if p.status == "FINISHED":
        return ""
    done = sum(t.finished for t in runs.trials)
    why = "interrupted" if p.tags.get(names.INTERRUPTED) == "1" else p.status.lower()
    planned = p.params.get("trials") or p.params.get("num_samples")
    of = f" of {planned}" if planned else ""
    return (f"**{INCOMPLETE} {done}{of} trials finished (parent run {why}); continue with "
            f"`harness run <study> --resume`.**")


def pm(mean: Any, std: Any) -> str:
    if mean is None or pd.isna(mean):
        return "-"
    return f"{mean:.1f}" if std is None or pd.isna(std) else f"{mean:.1f} ± {std:.1f}"


def num(v: Any, fmt: str = "{:.2f}") -> str:
    return "-" if v is None or pd.isna(v) else fmt.format(v)


def interval_cell(r: Mapping[str, Any], prefix: str, bounds: tuple[float, float] | None = (0.0, 100.0)) -> str:
    """``62.8 [55.1, 70.5]†`` from a table line's ``<prefix>_mean``, ``_low``, ``_high``, ``_pooled``; the mean
    alone without an interval; ``-`` without a value. The printed interval stays within ``bounds`` (an accuracy
    lies in 0-100 whatever the t interval says; the CSV keeps the unclipped ends); None for a difference."""
    mean, low, high = value(r.get(f"{prefix}_mean")), value(r.get(f"{prefix}_low")), value(r.get(f"{prefix}_high"))
    if mean is None:
        return "-"
    if low is None or high is None:
        return f"{mean:.1f}"
    if bounds is not None:
        low, high = max(low, bounds[0]), min(high, bounds[1])
    return f"{mean:.1f} [{low:.1f}, {high:.1f}]" + ("†" if value(r.get(f"{prefix}_pooled")) else "")


def value(v: Any) -> Any:
    return None if v is None or (not isinstance(v, str) and pd.isna(v)) else v


def write_set(study: Study, runs: StudyRuns, out_dir: Path, texts: Mapping[str, str],
              figures: Mapping[str, Callable[[Path], object]]) -> dict[str, Path]:
    """Write a report's files (``texts`` by extension; ``figures`` by file suffix, ``.png`` or ``_pareto.png``:
    a function drawing into a path)
    all or nothing: every file is staged, then all are renamed into place.

    A full disk or a crash leaves the previous set whole, never a new .md beside
    an old .tex. An incomplete table (:func:`completeness`) never replaces a
    complete one silently: it goes to ``<study>.incomplete.*`` instead, and says so.
    """
    out_dir = Path(out_dir)
    stem = study.name
    if completeness(runs) and _complete_table_exists(out_dir / f"{stem}.md"):
        log.warning("results/%s.md is complete and this run's table is not: written to %s.incomplete.* instead",
                    stem, stem)
        stem = f"{stem}.incomplete"
    paths = {ext: out_dir / f"{stem}.{ext}" for ext in texts}
    paths.update({suffix.lstrip("."): out_dir / f"{stem}{suffix}" for suffix in figures})
    staged = {k: p.with_name(f".{p.name}.{os.getpid()}.staged") for k, p in paths.items()}
    current = next(iter(paths))  # the file being written, for the error message
    try:
        for current, text in texts.items():
            write_atomic(text, staged[current])
        for suffix, draw in figures.items():
            current = suffix.lstrip(".")
            draw(staged[current])
        for current, p in paths.items():
            os.replace(staged[current], p)
    except OSError as e:
        raise named(e, paths[current]) from e
    finally:
        for p in staged.values():
            p.unlink(missing_ok=True)
    if stem == study.name:  # a complete table supersedes an incomplete one left beside it
        for old in out_dir.glob(f"{study.name}.incomplete*"):
            old.unlink()
    return paths


def _complete_table_exists(md: Path) -> bool:
    try:
        return INCOMPLETE not in md.read_text(encoding="utf-8")
    except OSError:
        return False


def trial_frame(runs: StudyRuns) -> pd.DataFrame:
    """One line per child run (trial): row, seed, status, the metrics a table needs, its row's profile."""
    lines = []
    for t in runs.trials:
        m, history = t.metrics, t.val_top1_history
        last = m.get(names.LAST_TOP1, history.get(max(history)) if history else None)
        best = m.get(names.BEST_TOP1, max(history.values()) if history else None)
        line = {"row": t.trial.label, "seed": t.trial.seed, "status": t.status, "key": t.key,
                "top1": last, "best_top1": best, "top5": m.get(names.VAL_TOP5),
                "best_epoch": m.get(names.BEST_EPOCH), "epochs": m.get(names.EPOCH),
                "trained_params": m.get(names.NUM_PARAMS), "node_id": t.tags.get(names.NODE_ID),
                "ir_interactions_trained": m.get(names.IR_INTERACTIONS),
                "regime": t.trial.regime, "protocol": trial_protocol(t),
                "data_fingerprint": t.tags.get(names.FINGERPRINT) or NOT_RECORDED}
        # the row's profile on the paper backbone: params, gflops_<size>, fusion_params, ir_interactions
        line.update({k.removeprefix("profile_"): v for k, v in m.items() if k.startswith("profile_")})
        lines.append(line)
    return pd.DataFrame(lines)


def header(study: Study, profile: str, runs: StudyRuns, frame: pd.DataFrame) -> dict[str, str]:
    """What the table's first line says: study, profile, protocol, data, seeds, date, commit, parent run."""
    p = runs.parent
    trials = trial_frame(runs)
    seeds = seed_range(trials) or p.tags.get(names.SEEDS) or str(int(frame["trials"].max()) if len(frame) else 0)
    traced = {}
    for col, label in TRACED.items():  # one value, or one per probe regime (each regime has its own data)
        refs = references(trials, col)
        traced[label] = (next(iter(refs.values())) if len(set(refs.values())) == 1 else
                         ", ".join(f"{v} ({k})" for k, v in refs.items()) or NOT_RECORDED)
    if "protocol_differs" in frame:  # rows that set their own frames / size (Table 4) differ by design
        by_design = set(frame.loc[~frame["protocol_differs"].astype(bool), "protocol"].dropna())
        if len(by_design) > 1:
            traced["protocol"] = "per row (see the protocol column)"
    return {"study": study.name, "profile": profile, "seeds": seeds, "date": when(p),
            "commit": p.tags.get(names.COMMIT, "unknown"), "machine": p.tags.get(names.MACHINE, NOT_RECORDED),
            "parent_run": p.run_id, "status": p.status, **traced,
            "paper_epoch": study.paper_epoch}


def seed_range(trials: pd.DataFrame) -> str:
    """Seeds per row that ran: ``2``, or ``2-5`` when rows got different numbers (``--until-resolved``)."""
    if not len(trials):
        return ""
    counts = trials.groupby("row")["seed"].nunique()
    low, high = int(counts.min()), int(counts.max())
    return str(low) if low == high else f"{low}-{high}"


def header_line(h: Mapping[str, str]) -> str:
    return (f"{h['study']}: profile {h['profile']}, protocol {h['protocol']}, data fingerprint {h['data']}, "
            f"{h['seeds']} seed(s), {h['date']}, commit {h['commit']}, machine {h.get('machine', NOT_RECORDED)} "
            f"(MLflow parent run {h['parent_run']}, {h['status']})")


def heading(study: Study, runs: StudyRuns, h: Mapping[str, str]) -> str:
    """The markdown title and header line, with how many orderings the runs resolve, and the line that says the
    table is incomplete when it is."""
    missing = completeness(runs)
    judged = f"**{h['orderings']}**\n\n" if h.get("orderings") else ""
    return f"# {study.name}\n\n{header_line(h)}\n\n{judged}" + (f"{missing}\n\n" if missing else "")


def row_summary(frame: pd.DataFrame, gflops: str | None = None) -> dict[str, float]:
    """Each run row's mean top-1 (and GFLOPs from the ``gflops`` column) as parent-run metrics."""
    out: dict[str, float] = {}
    for _, r in frame.iterrows():
        if value(r.get("top1_mean")) is not None:
            out[names.row_metric(names.ROW_TOP1, str(r["row"]))] = float(r["top1_mean"])
        if gflops and value(r.get(gflops)) is not None and value(r.get("top1_mean")) is not None:
            out[names.row_metric(names.ROW_GFLOPS, str(r["row"]))] = float(r[gflops])
    return out
