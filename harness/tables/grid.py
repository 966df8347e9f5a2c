"""A table study's report (Tables 1-6, Fig. 5), built with pandas from MLflow alone (never from a run's memory).

    harness tables studies/table1.yaml                  # -> results/table1.{md,csv,tex,png}
    harness tables studies/table1.yaml --profile paper

The runs are the child runs of the study's latest FINISHED invocation (MLflow
parent run) for the profile, or of the latest one when none finished.

Per row: params and GFLOPs of the row on the paper backbone (``harness.profile``,
logged on each child run), top-1 and top-5 at the last epoch as mean +- std over
the finished seeds, the best-epoch top-1 beside it, the paper's figures from the
study's ``paper:`` CSV and the difference. The header says which profile, test
protocol and data fingerprint, how many seeds, when, and which commit made the
numbers (tags of the runs). A row whose runs used another protocol or data copy
than the header's gets a ``protocol`` / ``data`` column marked ⚠ and a note,
never a silent place in the same column; the note also says which epoch the
paper's figures are (the study's ``paper_epoch``).

Headline accuracy is the LAST epoch's: the best epoch is chosen on the
validation set it is reported on, so it flatters (GST's authors reported the
best epoch; see docs). Both are shown. Under the laptop profile the data are
synthetic, so only the ordering of rows is comparable with the paper, not the
delta.

"""
from __future__ import annotations

import logging
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import pandas as pd

import blocks
from harness import names, paper, plots
from harness.predictions import Predictions
from harness.tables import statistics
from harness.config import Study, backbone_differs, row_data, trained_backbone
from harness.tables.common import (TRACED, Report, heading, header, header_line, interval_cell, num, references,
                                   row_summary, trial_frame, value, write_set)
from harness.tracking import StudyRuns, Tracker

log = logging.getLogger(__name__)


def build(study: Study, runs: StudyRuns, clips: Mapping[str, Predictions] | None = None) -> pd.DataFrame:
    """The per-row table from :meth:`harness.tracking.Tracker.read_study` output; with the trials' per-clip
    predictions (``clips``, by trial key) also each row's noise split and, on synthetic data, order accuracy."""
    trials = trial_frame(runs)
    figures = paper.figures(study)
    refs = {col: references(trials, col) for col in TRACED}
    # A study whose rows set their own data (frames, size, views) tests each row under its own protocol,
    # the rows that keep the profile's included: only runs of one row that disagree are flagged then.
    per_row_protocol = any(row.data for row in study.rows.values())
    out = []
    labels = [(row, row if regime is None else f"{row}@{regime}")
              for row in study.rows for regime in (list(study.regimes) if study.regimes else [None])]
    shown = [name for _, name in labels]
    ivs = {col: statistics.intervals(trials, col, shown) for col in ("top1", "top5", "best_top1")}
    order = statistics.order_accuracies(study, runs.parent.tags.get(names.PROFILE, ""), trials, clips or {})
    if order is not None:
        ivs["order_acc"] = statistics.intervals(order, "order_acc", shown)
    splits = statistics.noise_splits(shown, trials, clips) if clips else {}
    for row_name, name in labels:
        mine = trials[trials["row"] == name] if len(trials) else trials
        done = mine[mine["status"] == "FINISHED"] if len(mine) else mine
        first = mine.iloc[0] if len(mine) else pd.Series(dtype=object)
        r: dict[str, Any] = {"row": name, "block": study.rows[row_name].block}
        r["params"] = int(first["params"]) if pd.notna(first.get("params")) else None
        for col in sorted(c for c in trials.columns if c.startswith("gflops_")):
            r[col] = first.get(col)
        for col in ("top1", "top5", "best_top1"):
            vals = pd.to_numeric(done[col], errors="coerce").dropna() if len(done) else pd.Series(dtype=float)
            r[f"{col}_mean"] = vals.mean() if len(vals) else None
            r[f"{col}_std"] = vals.std(ddof=1) if len(vals) > 1 else None
        r["seeds"] = int(len(done))
        r["trials"] = int(len(mine))  # child runs: a trial that never started has none
        r["best_epoch_mean"] = pd.to_numeric(done["best_epoch"], errors="coerce").mean() if len(done) else None
        r["trained_params"] = int(first["trained_params"]) if pd.notna(first.get("trained_params")) else None
        for col, found in ivs.items():
            r.update(statistics.interval_columns(col, found.get(name)))
        if "order_acc" in ivs:
            r["order_acc_mean"] = ivs["order_acc"][name].mean if name in ivs["order_acc"] else None
        split = splits.get(name)
        r.update({"seed_sd": split.seed_sd if split else None, "clip_sd": split.clip_sd if split else None,
                  "more_of": split.more if split else None})
        r.update(paper_setting(study, row_name, r))
        r.update(fusion_figures(first, done))
        r.update(named_options(study, row_name, figures.columns))
        ref = figures.loc[row_name] if row_name in figures.index else pd.Series(dtype=object)
        for col in figures.columns:
            if col.startswith("paper_"):
                r[col] = ref.get(col)
        r.setdefault("paper_top1", None)
        ours = r["best_top1_mean"] if study.paper_epoch == "best" else r["top1_mean"]
        r["delta_top1"] = (ours - float(r["paper_top1"])
                           if ours is not None and pd.notna(r["paper_top1"]) else None)
        counted = done if len(done) else mine  # the trials behind the row's numbers
        for col in TRACED:
            values = sorted(set(counted[col])) if len(counted) else []
            r[col] = " + ".join(values) or None
            if col == "protocol" and per_row_protocol:  # Tables 4-6: the row's own runs are its reference
                r[f"{col}_differs"] = len(values) > 1
            else:
                ref = refs[col].get(counted["regime"].fillna("").iloc[0]) if len(counted) else None
                r[f"{col}_differs"] = bool(values) and values != [ref]
        out.append(r)
    out += paper_only_rows(figures, [row for row, _ in labels])
    frame = pd.DataFrame(out)
    return frame


def paper_setting(study: Study, row: str, r: dict[str, Any]) -> dict[str, Any]:
    """The row's paper setting (paper profile with the row's data keys): views as the paper writes them,
    crops x clips, and GFLOPs per view, i.e. at the row's own frames and side (``harness.study.plan.profile_rows``)."""
    base = "paper" if "paper" in study.profiles else next(iter(study.profiles))
    data = row_data(study, base, row)
    return {"views": f"{data.test_crops}x{data.test_clips}", "gflops_view": r.get(f"gflops_{data.size}")}


def fusion_figures(first: pd.Series, done: pd.DataFrame) -> dict[str, Any]:
    """ir-interactions on the paper backbone before training (profile), after training (mean over the
    finished seeds, on the profile's backbone) and the fusion layers' parameters in millions."""
    fusion = value(first.get("fusion_params"))
    trained = (pd.to_numeric(done["ir_interactions_trained"], errors="coerce").dropna()
               if "ir_interactions_trained" in done else pd.Series(dtype=float))
    return {"ir_interactions": value(first.get("ir_interactions")),
            "ir_interactions_trained": trained.mean() if len(trained) else None,
            "fusion_params_m": fusion / 1e6 if fusion is not None else None}


def named_options(study: Study, row: str, paper_columns: pd.Index) -> dict[str, Any]:
    """Block options the paper's CSV has a column for (Table 2: ``paper_dropout_rate``), with defaults."""
    spec = study.rows[row]
    opts = {**blocks.options(spec.block), **spec.options}
    out = {c[6:]: opts[c[6:]] for c in paper_columns if c.startswith("paper_") and c[6:] in opts}
    if "dropout_rate" in out and out["dropout_rate"] is None:
        out["dropout_rate"] = 0.0  # a fusion without dropout drops nothing
    return out


def paper_only_rows(figures: pd.DataFrame, ours: list[str]) -> list[dict[str, Any]]:
    """Rows of the paper's table that the study has no row for (other papers' methods): paper figures only."""
    rows = []
    for name, ref in figures.iterrows():
        if name not in ours:
            rows.append({"row": name, "block": None, "seeds": 0, "trials": 0,
                         **{f"{c}_differs": False for c in TRACED},
                         **{c: ref[c] for c in figures.columns if c.startswith("paper_")}})
    return rows


# Paper columns that display() places itself; any other paper_<x> is shown beside our <x> when we have one.
PLACED = {"paper_params_m", "paper_top1", "paper_top5", "paper_gflops_view", "paper_views"}
LABELS = {"ir_interactions": "ir-interactions", "fusion_params_m": "fusion params (M)",
          "dropout_rate": "dropout rate", "pretrain": "pre-train"}
OURS = {"ir_interactions": "ir-interactions (R50 init)"}  # where our figure is not quite the paper's quantity


def _sizes(frame: pd.DataFrame) -> list[int]:
    return sorted(int(c[7:]) for c in frame.columns if c.startswith("gflops_") and c[7:].isdigit())


def _cell(v: Any) -> str:
    """A figure as the paper prints it: 0.75, 1856, 0.086; text such as '<1856' as is; '-' for none."""
    v = value(v)
    if v is None:
        return "-"
    if isinstance(v, str):
        return v
    v = float(v)
    return f"{v:.0f}" if v.is_integer() else f"{v:.3f}".rstrip("0")


def _per_view(gflops: Any, views: Any) -> str:
    """'36.19×3×10': GFLOPs of one view times the views (crops x clips), as Tables 4 and 5 print it."""
    if value(gflops) is None:
        return "-"
    g = f"{float(gflops):.2f}".rstrip("0").rstrip(".")
    return g if value(views) is None else f"{g}×{str(views).replace('x', '×')}"


def display(frame: pd.DataFrame) -> pd.DataFrame:
    """The human table (markdown, LaTeX): formatted strings, one column per figure.

    A ``paper_<x>`` column of the study's CSV is shown beside our ``<x>`` when
    the frame has one (Table 2: ir-interactions, dropout rate, fusion params),
    alone otherwise (Table 4: backbone, pre-train). With ``paper_gflops_view``
    (Tables 4, 5) the cost is GFLOPs per view x views instead of GFLOPs per side.
    Rows without a trial (or the paper's rows we have no block for) say "not run".
    """
    sizes = _sizes(frame)
    per_view = "paper_gflops_view" in frame and frame["paper_gflops_view"].notna().any()
    paired = [c for c in frame.columns if c.startswith("paper_") and c not in PLACED
              and not c.removeprefix("paper_").startswith("gflops_")]
    trained_ir = ("paper_ir_interactions" in frame and "ir_interactions_trained" in frame
                  and frame["ir_interactions_trained"].notna().any())  # Table 2's question, not every table's
    protocols = frame["protocol"].dropna().unique() if "protocol" in frame else []
    flagged = "protocol_differs" in frame and frame["protocol_differs"].fillna(False).astype(bool).any()
    by_design = len(protocols) > 1 and not flagged  # else flag_columns shows the odd rows' protocol with ⚠
    order = "order_acc_mean" in frame and frame["order_acc_mean"].notna().any()
    rows = []
    for _, r in frame.iterrows():
        ran = pd.notna(r.get("trials")) and r["trials"] > 0
        d = {"row": r["row"], "params (M)": num(r["params"] / 1e6 if pd.notna(r.get("params")) else None)}
        if "paper_params_m" in r:
            d["paper params (M)"] = num(r["paper_params_m"])
        if per_view:
            d["GFLOPs/view × views"] = _per_view(r.get("gflops_view"), r.get("views"))
            d["paper GFLOPs/view × views"] = _per_view(r["paper_gflops_view"], r.get("paper_views"))
        else:
            for s in sizes:
                d[f"GFLOPs@{s}"] = num(r[f"gflops_{s}"])
                if f"paper_gflops_{s}" in r and frame[f"paper_gflops_{s}"].notna().any():
                    d[f"paper GFLOPs@{s}"] = num(r[f"paper_gflops_{s}"])
        for col in paired:
            name = col.removeprefix("paper_")
            label = LABELS.get(name, name.replace("_", " "))
            if name in frame:
                d[OURS.get(name, label)] = _cell(r[name])
            d[f"paper {label}"] = _cell(r[col])
        if trained_ir:
            d["ir-interactions (trained)"] = _cell(r["ir_interactions_trained"])
        if by_design:  # rows tested under different protocols on purpose (row data keys, Tables 4-6)
            d["protocol (run)"] = r["protocol"] if value(r["protocol"]) else "-"
        d["top-1 last"] = interval_cell(r, "top1") if ran else "not run"
        d["top-1 best epoch"] = interval_cell(r, "best_top1")
        d["top-5 last"] = interval_cell(r, "top5")
        if order:
            d["order acc. in pairs"] = interval_cell(r, "order_acc")
        d["paper top-1"] = num(r.get("paper_top1"))
        if "paper_top5" in r:
            d["paper top-5"] = num(r["paper_top5"])
        d["Δ top-1"] = num(r["delta_top1"], "{:+.1f}")
        d["seeds"] = f"{int(r['seeds'])}/{int(r['trials'])}"
        rows.append(d)
    return pd.DataFrame(rows)


def flag_columns(shown: pd.DataFrame, frame: pd.DataFrame) -> pd.DataFrame:
    """A ``protocol`` / ``data`` column, only when some row's runs used another one than the header's (⚠)."""
    shown = shown.copy()
    for col, label in TRACED.items():
        differs = frame[f"{col}_differs"] if f"{col}_differs" in frame else pd.Series(dtype=bool)
        if differs.any():
            target = f"{label} (run)" if f"{label} (run)" in shown else label  # display's own, when it has one
            shown[target] = [f"{v} ⚠" if d else (v or "-") for v, d in zip(frame[col], differs)]
    return shown


EPOCH_NOTE = {
    "best": "The paper's figures are best-epoch top-1 (study paper_epoch: best): compare them with "
            "'top-1 best epoch'; Δ top-1 uses it.",
    "last": "The paper's figures are last-epoch top-1 (study paper_epoch: last); Δ top-1 uses 'top-1 last'.",
    "unstated": "The paper does not say which epoch its figures are from (study paper_epoch: unstated); "
                "Δ top-1 uses 'top-1 last'.",
}


def notes(study: Study, frame: pd.DataFrame, h: dict[str, str]) -> list[str]:
    """Lines under the table: which epoch the paper's figures are, and the rows flagged by :func:`flag_columns`."""
    what = {"protocol": "were tested with a protocol other than the header's",
            "data": "read data whose fingerprint differs from the header's (another copy, or the copy changed)"}
    lines = [EPOCH_NOTE[study.paper_epoch], *backbone_notes(study, h["profile"])]
    for col, label in TRACED.items():
        flagged = frame.loc[frame[f"{col}_differs"], "row"].tolist() if f"{col}_differs" in frame else []
        if flagged:
            lines.append(f"⚠ {label}: the runs of {', '.join(flagged)} {what[label]}, {h[label]}; "
                         "do not compare those rows with the others.")
    return lines


def backbone_notes(study: Study, profile: str) -> list[str]:
    """Rows that train another backbone under this profile than the one their params and GFLOPs are counted
    on (GST-R101 on the laptop: the tiny backbone like every row, so the same trial as GST)."""
    if profile not in study.profiles:
        return []
    differ = [row for row in study.rows if backbone_differs(study, profile, row)]
    if not differ:
        return []
    trained = {row: trained_backbone(study, profile, row) for row in differ}
    return ["Backbones: " + "; ".join(f"{row} trains {trained[row]} under the {profile} profile, its params and "
                                       f"GFLOPs are {study.rows[row].backbone}'s" for row in differ)
            + (" (every row of this profile trains the tiny backbone, by design: rows that differ only in their "
               "paper backbone are the same trial here)" if "tiny" in trained.values() else "") + "."]


NOTE = ("params and GFLOPs: the row on the paper backbone (fvcore, one multiply-add = one FLOP, per clip of "
        "the paper profile's frames for the row, or the paper's 8 frames where the study has no paper profile). "
        "top-1/top-5: validation accuracy (%) at the last epoch, mean [95% interval, printed within 0-100] over seeds (seeds: finished "
        "of run); 'best epoch' picks the best epoch on that same validation set. Δ top-1 = our top-1 at the "
        "paper's epoch (below) − paper. Under the laptop profile "
        "(synthetic reversal-paired data, tiny ResNet) only the ordering of rows compares with the paper.")
ORDER_NOTE = ("order acc. in pairs: of the validation clips, the share whose class scores above its reversed twin "
              "(the same motion played backwards; ties count half): 50% for a model blind to frame order.")


def render(study: Study, profile: str, runs: StudyRuns, clips: Mapping[str, Predictions] | None = None,
           ) -> tuple[pd.DataFrame, dict[str, str], dict[str, str]]:
    """(CSV frame, header, {"md": text, "csv": text, "tex": text})."""
    frame = build(study, runs, clips)
    h = header(study, profile, runs, frame)
    trials = trial_frame(runs)
    judged = statistics.orderings(study, statistics.scores(trials, "top1", list(frame["row"])))
    h["orderings"] = statistics.summary_line(judged)
    shown = flag_columns(display(frame), frame)
    below = "\n\n".join([NOTE, *([ORDER_NOTE] if "order acc. in pairs" in shown else []), statistics.POOLED_NOTE,
                          *notes(study, frame, h), *statistics.waves_note(runs), *statistics.sections(judged, frame)])
    md = f"{heading(study, runs, h)}{shown.to_markdown(index=False)}\n\n{below}\n"
    csv_frame = frame.assign(profile=h["profile"], git_commit=h["commit"], date=h["date"],
                             paper_epoch=study.paper_epoch)
    csv = csv_frame.to_csv(index=False, float_format="%.4f")
    tex = (f"% {header_line(h)}\n"
           + shown.to_latex(index=False, escape=True, caption=f"{study.name} ({header_line(h)})",
                            label=f"tab:{study.name}"))
    return frame, h, {"md": md, "csv": csv, "tex": tex}


def fusion_matrices(study: Study, tracker: Tracker, runs: StudyRuns) -> tuple[dict[str, list[Any]], dict[str, int]]:
    """Per study row, the mean over its finished seeds of the ``fusion_matrices.json`` artifacts (read from
    MLflow), and how many seeds that is; rows whose block has no fusion layer are left out."""
    per_row: dict[str, list[Any]] = {}
    for t in runs.trials:
        if t.finished:
            found = tracker.read_json(t.run_id, names.FUSION_MATRICES)
            if found:
                per_row.setdefault(t.trial.row, []).append(found)
    ordered = [row for row in study.rows if row in per_row]
    return {row: plots.mean_matrices(per_row[row]) for row in ordered}, {row: len(per_row[row]) for row in ordered}


def figure(study: Study, tracker: Tracker, runs: StudyRuns, frame: pd.DataFrame, path: Path, *,
           title: str) -> Path:
    """The study's PNG (``figure:`` in the study): top-1 vs GFLOPs, or Fig. 5's fusion-matrix heatmaps."""
    if study.figure == "fusion_matrices":
        matrices, seeds = fusion_matrices(study, tracker, runs)
        if not matrices:  # every trial failed, or no row has a fusion layer: the table still gets a figure
            log.warning("%s: no fusion_matrices.json in any finished run; drawing top-1 vs GFLOPs instead",
                        study.name)
            return plots.accuracy_vs_gflops(frame, path, title=title)
        labels = {row: plots.bag_labels({**blocks.options(study.rows[row].block), **study.rows[row].options})
                  for row in matrices if study.rows[row].block == "vps"}
        return plots.fusion_heatmaps(matrices, path, title=title, labels=labels, seeds=seeds)
    return plots.accuracy_vs_gflops(frame, path, title=title)


def write(study: Study, profile: str, tracker: Tracker, parent_id: str | None = None,
          out_dir: str | Path = "results") -> Report:
    """Read the study's runs from MLflow and write ``<out_dir>/<study>.{md,csv,tex,png}`` (all or none)."""
    runs = tracker.read_study(study.name, profile, parent_id)
    frame, h, texts = render(study, profile, runs, statistics.predictions(tracker, runs))
    title = header_line(h)
    paths = write_set(study, runs, Path(out_dir), texts,
                      {".png": lambda path: figure(study, tracker, runs, frame, path, title=title)})
    return Report(paths, texts["md"], row_summary(frame, "gflops_view"))
