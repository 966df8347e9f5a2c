"""A study's tables, built with pandas from MLflow alone (never from a run's memory).

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

A probe study (``kind: probe``, ``harness tables studies/scale_probe.yaml``)
gets ``<study>.{md,csv,png}`` instead (:func:`render_probe`): per row and
regime the overall, worst-cell and spread (best minus worst cell) top-1, each
mean +- std over seeds, read from the children's per-cell metrics
(``val_top1/size_<s>/speed_<v>``), and a size x speed heatmap per block
(:func:`harness.plots.scale_heatmaps`).
"""
from __future__ import annotations

import logging
import os
import tempfile
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import pandas as pd

from harness.config import Study
from harness.protocol import Protocol

log = logging.getLogger(__name__)

RESULTS = Path("results")


def paper_figures(study: Study) -> pd.DataFrame:
    """The paper's figures for the study (results/paper/*.csv), indexed by row; empty if none."""
    if not study.paper or not Path(study.paper).exists():
        return pd.DataFrame(index=pd.Index([], name="row"))
    return pd.read_csv(study.paper, dtype={"row": str}).set_index("row")


NOT_RECORDED = "not recorded"
PROTOCOL, FINGERPRINT = "harness.protocol", "harness.data_fingerprint"  # child-run tags (harness.run)
TRACED = {"protocol": "protocol", "data_fingerprint": "data"}  # frame column -> flag column in the human table


def trial_protocol(trial: dict[str, Any]) -> str:
    """The trial's test protocol name: its tag, else rebuilt from its logged data params (runs before the tag)."""
    if trial["tags"].get(PROTOCOL):
        return trial["tags"][PROTOCOL]
    p = trial["params"]
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


def trial_frame(runs: dict[str, Any]) -> pd.DataFrame:
    """One line per child run (trial): row, seed, status and the metrics a table needs."""
    lines = []
    for t in runs["trials"]:
        m = t["metrics"]
        history = t["val_top1_history"]
        last = m.get("last_top1", history.get(max(history)) if history else None)
        best = m.get("best_top1", max(history.values()) if history else None)
        regime = t["tags"].get("harness.regime")
        line = {"row": t["row"] if not regime else f"{t['row']}@{regime}", "seed": t["seed"], "status": t["status"], "key": t["key"],
                "top1": last, "best_top1": best, "top5": m.get("val_top5"),
                "best_epoch": m.get("best_epoch"), "epochs": m.get("epoch"),
                "trained_params": m.get("num_params"), "node_id": t["tags"].get("harness.node_id"),
                "ir_interactions_trained": m.get("ir_interactions"),
                "regime": regime, "protocol": trial_protocol(t),
                "data_fingerprint": t["tags"].get(FINGERPRINT) or NOT_RECORDED}
        line.update({k.removeprefix("profile_"): v for k, v in m.items() if k.startswith("profile_")})
        lines.append(line)
    return pd.DataFrame(lines)


def build(study: Study, runs: dict[str, Any]) -> pd.DataFrame:
    """The per-row table from :meth:`harness.tracking.Tracker.read_study` output."""
    trials = trial_frame(runs)
    paper = paper_figures(study)
    refs = {col: references(trials, col) for col in TRACED}
    # A study whose rows set their own data (frames, size, views) tests each row under its own protocol,
    # the rows that keep the profile's included: only runs of one row that disagree are flagged then.
    per_row_protocol = any(row.data for row in study.rows.values())
    out = []
    labels = [(row, row if regime is None else f"{row}@{regime}")
              for row in study.rows for regime in (study.regimes or {None: None})]
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
        r["trials"] = int(len(mine))
        r["best_epoch_mean"] = pd.to_numeric(done["best_epoch"], errors="coerce").mean() if len(done) else None
        r["trained_params"] = int(first["trained_params"]) if pd.notna(first.get("trained_params")) else None
        r.update(paper_setting(study, row_name, r))
        r.update(fusion_figures(first, done))
        r.update(named_options(study, row_name, paper.columns))
        ref = paper.loc[row_name] if row_name in paper.index else pd.Series(dtype=object)
        for col in paper.columns:
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
    out += paper_only_rows(paper, [row for row, _ in labels])
    frame = pd.DataFrame(out)
    return frame


def paper_setting(study: Study, row: str, r: dict[str, Any]) -> dict[str, Any]:
    """The row's paper setting (paper profile with the row's data keys): views as the paper writes them,
    crops x clips, and GFLOPs per view, i.e. at the row's own frames and side (``harness.run.profile_rows``)."""
    from harness.config import row_data

    base = "paper" if "paper" in study.profiles else next(iter(study.profiles))
    data = row_data(study, base, row)
    return {"views": f"{data.test_crops}x{data.test_clips}", "gflops_view": r.get(f"gflops_{data.size}")}


def _value(v: Any) -> Any:
    return None if v is None or (not isinstance(v, str) and pd.isna(v)) else v


def fusion_figures(first: pd.Series, done: pd.DataFrame) -> dict[str, Any]:
    """ir-interactions on the paper backbone before training (profile), after training (mean over the
    finished seeds, on the profile's backbone) and the fusion layers' parameters in millions."""
    fusion = _value(first.get("fusion_params"))
    trained = (pd.to_numeric(done["ir_interactions_trained"], errors="coerce").dropna()
               if "ir_interactions_trained" in done else pd.Series(dtype=float))
    return {"ir_interactions": _value(first.get("ir_interactions")),
            "ir_interactions_trained": trained.mean() if len(trained) else None,
            "fusion_params_m": fusion / 1e6 if fusion is not None else None}


def named_options(study: Study, row: str, paper_columns: pd.Index) -> dict[str, Any]:
    """Block options the paper's CSV has a column for (Table 2: ``paper_dropout_rate``), with defaults."""
    import blocks

    spec = study.rows[row]
    opts = {**blocks.options(spec.block), **spec.options}
    out = {c[6:]: opts[c[6:]] for c in paper_columns if c.startswith("paper_") and c[6:] in opts}
    if "dropout_rate" in out and out["dropout_rate"] is None:
        out["dropout_rate"] = 0.0  # a fusion without dropout drops nothing
    return out


def paper_only_rows(paper: pd.DataFrame, ours: list[str]) -> list[dict[str, Any]]:
    """Rows of the paper's table that the study has no row for (other papers' methods): paper figures only."""
    rows = []
    for name, ref in paper.iterrows():
        if name not in ours:
            rows.append({"row": name, "block": None, "seeds": 0, "trials": 0,
                         **{f"{c}_differs": False for c in TRACED},
                         **{c: ref[c] for c in paper.columns if c.startswith("paper_")}})
    return rows


def header(study: Study, profile: str, runs: dict[str, Any], frame: pd.DataFrame) -> dict[str, str]:
    p = runs["parent"]
    when = datetime.fromtimestamp((p["end_time"] or p["start_time"]) / 1000, tz=timezone.utc)
    seeds = p["tags"].get("harness.seeds") or str(int(frame["trials"].max()) if len(frame) else 0)
    trials = trial_frame(runs)
    traced = {}
    for col, label in TRACED.items():  # one value, or one per probe regime (each regime has its own data)
        refs = references(trials, col)
        traced[label] = (next(iter(refs.values())) if len(set(refs.values())) == 1 else
                         ", ".join(f"{v} ({k})" for k, v in refs.items()) or NOT_RECORDED)
    if "protocol_differs" in frame:  # rows that set their own frames / size (Table 4) differ by design
        by_design = set(frame.loc[~frame["protocol_differs"].astype(bool), "protocol"].dropna())
        if len(by_design) > 1:
            traced["protocol"] = "per row (see the protocol column)"
    return {"study": study.name, "profile": profile, "seeds": seeds,
            "date": when.strftime("%Y-%m-%d %H:%M UTC"), "commit": p["tags"].get("harness.git_commit", "unknown"),
            "parent_run": p["run_id"], "status": p["status"], **traced, "paper_epoch": study.paper_epoch}


def _pm(mean: Any, std: Any) -> str:
    if mean is None or pd.isna(mean):
        return "-"
    return f"{mean:.1f}" if std is None or pd.isna(std) else f"{mean:.1f} ± {std:.1f}"


def _num(v: Any, fmt: str = "{:.2f}") -> str:
    return "-" if v is None or pd.isna(v) else fmt.format(v)


# Paper columns that display() places itself; any other paper_<x> is shown beside our <x> when we have one.
PLACED = {"paper_params_m", "paper_top1", "paper_top5", "paper_gflops_view", "paper_views"}
LABELS = {"ir_interactions": "ir-interactions", "fusion_params_m": "fusion params (M)",
          "dropout_rate": "dropout rate", "pretrain": "pre-train"}
OURS = {"ir_interactions": "ir-interactions (R50 init)"}  # where our figure is not quite the paper's quantity


def _sizes(frame: pd.DataFrame) -> list[int]:
    return sorted(int(c[7:]) for c in frame.columns if c.startswith("gflops_") and c[7:].isdigit())


def _cell(v: Any) -> str:
    """A figure as the paper prints it: 0.75, 1856, 0.086; text such as '<1856' as is; '-' for none."""
    v = _value(v)
    if v is None:
        return "-"
    if isinstance(v, str):
        return v
    v = float(v)
    return f"{v:.0f}" if v.is_integer() else f"{v:.3f}".rstrip("0")


def _per_view(gflops: Any, views: Any) -> str:
    """'36.19×3×10': GFLOPs of one view times the views (crops x clips), as Tables 4 and 5 print it."""
    if _value(gflops) is None:
        return "-"
    g = f"{float(gflops):.2f}".rstrip("0").rstrip(".")
    return g if _value(views) is None else f"{g}×{str(views).replace('x', '×')}"


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
    rows = []
    for _, r in frame.iterrows():
        ran = pd.notna(r.get("trials")) and r["trials"] > 0
        d = {"row": r["row"], "params (M)": _num(r["params"] / 1e6 if pd.notna(r.get("params")) else None)}
        if "paper_params_m" in r:
            d["paper params (M)"] = _num(r["paper_params_m"])
        if per_view:
            d["GFLOPs/view × views"] = _per_view(r.get("gflops_view"), r.get("views"))
            d["paper GFLOPs/view × views"] = _per_view(r["paper_gflops_view"], r.get("paper_views"))
        else:
            for s in sizes:
                d[f"GFLOPs@{s}"] = _num(r[f"gflops_{s}"])
                if f"paper_gflops_{s}" in r and frame[f"paper_gflops_{s}"].notna().any():
                    d[f"paper GFLOPs@{s}"] = _num(r[f"paper_gflops_{s}"])
        for col in paired:
            name = col.removeprefix("paper_")
            label = LABELS.get(name, name.replace("_", " "))
            if name in frame:
                d[OURS.get(name, label)] = _cell(r[name])
            d[f"paper {label}"] = _cell(r[col])
        if trained_ir:
            d["ir-interactions (trained)"] = _cell(r["ir_interactions_trained"])
        if by_design:  # rows tested under different protocols on purpose (row data keys, Tables 4-6)
            d["protocol (run)"] = r["protocol"] if _value(r["protocol"]) else "-"
        d["top-1 last"] = _pm(r["top1_mean"], r["top1_std"]) if ran else "not run"
        d["top-1 best epoch"] = _pm(r["best_top1_mean"], r["best_top1_std"])
        d["top-5 last"] = _pm(r["top5_mean"], r["top5_std"])
        d["paper top-1"] = _num(r.get("paper_top1"))
        if "paper_top5" in r:
            d["paper top-5"] = _num(r["paper_top5"])
        d["Δ top-1"] = _num(r["delta_top1"], "{:+.1f}")
        d["seeds"] = f"{int(r['seeds'])}/{int(r['trials'])}"
        rows.append(d)
    return pd.DataFrame(rows)


def _header_line(h: dict[str, str]) -> str:
    return (f"{h['study']}: profile {h['profile']}, protocol {h['protocol']}, data fingerprint {h['data']}, "
            f"{h['seeds']} seed(s), {h['date']}, commit {h['commit']} "
            f"(MLflow parent run {h['parent_run']}, {h['status']})")


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
    lines = [EPOCH_NOTE[study.paper_epoch]]
    for col, label in TRACED.items():
        flagged = frame.loc[frame[f"{col}_differs"], "row"].tolist() if f"{col}_differs" in frame else []
        if flagged:
            lines.append(f"⚠ {label}: the runs of {', '.join(flagged)} {what[label]}, {h[label]}; "
                         "do not compare those rows with the others.")
    return lines


NOTE = ("params and GFLOPs: the row on the paper backbone (fvcore, one multiply-add = one FLOP, per clip of "
        "the paper profile's frames for the row, or the paper's 8 frames where the study has no paper profile). "
        "top-1/top-5: validation accuracy (%) at the last epoch, mean ± std over seeds; 'best epoch' picks the "
        "best epoch on that same validation set. Δ top-1 = our top-1 at the paper's epoch (below) − paper. "
        "Under the laptop profile "
        "(synthetic reversal-paired data, tiny ResNet) only the ordering of rows compares with the paper.")


def render(study: Study, profile: str, runs: dict[str, Any]) -> tuple[pd.DataFrame, dict[str, str], dict[str, str]]:
    """(CSV frame, header, {"md": text, "csv": text, "tex": text})."""
    frame = build(study, runs)
    h = header(study, profile, runs, frame)
    shown = flag_columns(display(frame), frame)
    below = "\n\n".join([NOTE, *notes(study, frame, h)])
    md = f"# {study.name}\n\n{_header_line(h)}\n\n{shown.to_markdown(index=False)}\n\n{below}\n"
    csv_frame = frame.assign(profile=h["profile"], git_commit=h["commit"], date=h["date"],
                             paper_epoch=study.paper_epoch)
    csv = csv_frame.to_csv(index=False, float_format="%.4f")
    tex = (f"% {_header_line(h)}\n"
           + shown.to_latex(index=False, escape=True, caption=f"{study.name} ({_header_line(h)})",
                            label=f"tab:{study.name}"))
    return frame, h, {"md": md, "csv": csv, "tex": tex}


def write_atomic(data: str | bytes, path: str | Path) -> Path:
    """Write so a reader sees the old file or the new one, never half (temp in the same folder + os.replace)."""
    from harness.errors import named

    path, tmp = Path(path), None
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
        with os.fdopen(fd, "wb") as f:
            f.write(data.encode("utf-8") if isinstance(data, str) else data)
        os.chmod(tmp, 0o644)  # mkstemp makes 0600; a results file is for everyone to read
        os.replace(tmp, path)
    except BaseException as e:
        if tmp is not None:
            Path(tmp).unlink(missing_ok=True)
        if isinstance(e, OSError):  # name the file the user knows, not the temp file
            raise named(e, path) from e
        raise
    return path


def fusion_matrices(study: Study, tracker: Any, runs: dict[str, Any]) -> tuple[dict[str, list], dict[str, int]]:
    """Per study row, the mean over its finished seeds of the ``fusion_matrices.json`` artifacts (read from
    MLflow), and how many seeds that is; rows whose block has no fusion layer are left out."""
    from harness.plots import mean_matrices

    per_row: dict[str, list] = {}
    for t in runs["trials"]:
        if t["status"] == "FINISHED":
            found = tracker.read_json(t["run_id"], "fusion_matrices.json")
            if found:
                per_row.setdefault(t["row"], []).append(found)
    ordered = [row for row in study.rows if row in per_row]
    return {row: mean_matrices(per_row[row]) for row in ordered}, {row: len(per_row[row]) for row in ordered}


def figure(study: Study, tracker: Any, runs: dict[str, Any], frame: pd.DataFrame, path: Path, *,
           title: str) -> Path:
    """The study's PNG (``figure:`` in the study): top-1 vs GFLOPs, or Fig. 5's fusion-matrix heatmaps."""
    from harness import plots

    if study.kind == "probe":  # one size x speed heatmap per block and regime
        return plots.scale_heatmaps(cell_means(study, runs), path, title=title)
    if study.figure == "fusion_matrices":
        import blocks

        matrices, seeds = fusion_matrices(study, tracker, runs)
        if not matrices:  # every trial failed, or no row has a fusion layer: the table still gets a figure
            log.warning("%s: no fusion_matrices.json in any finished run; drawing top-1 vs GFLOPs instead",
                        study.name)
            return plots.accuracy_vs_gflops(frame, path, title=title)
        labels = {row: plots.bag_labels({**blocks.options(study.rows[row].block), **study.rows[row].options})
                  for row in matrices if study.rows[row].block == "vps"}
        return plots.fusion_heatmaps(matrices, path, title=title, labels=labels, seeds=seeds)
    return plots.accuracy_vs_gflops(frame, path, title=title)


# ----------------------------------------------------------------------------- probe studies (kind: probe)


def cell_frame(runs: dict[str, Any]) -> pd.DataFrame:
    """One line per finished trial x size x speed cell: row, regime, seed, size, speed, top1, count.

    Read from the child runs' ``val_top1/size_<s>/speed_<v>`` and ``val_count/...``
    metrics, which :mod:`harness.probe` logs with the last epoch. A cell that held
    no val clip has no metric and so no line (absent, not 0).
    """
    from harness.probe import SIZE_NAMES, SPEED_NAMES

    lines = []
    for t in runs["trials"]:
        if t["status"] != "FINISHED":
            continue
        m = t["metrics"]
        for size in SIZE_NAMES:
            for speed in SPEED_NAMES:
                cell = f"size_{size}/speed_{speed}"
                if f"val_top1/{cell}" in m:
                    lines.append({"row": t["row"], "regime": t["tags"].get("harness.regime", ""), "seed": t["seed"],
                                  "size": size, "speed": speed, "top1": m[f"val_top1/{cell}"],
                                  "count": m.get(f"val_count/{cell}")})
    return pd.DataFrame(lines, columns=["row", "regime", "seed", "size", "speed", "top1", "count"])


def _labels(study: Study) -> list[tuple[str, str]]:
    """(row, regime) in the study's order: rows outer, regimes inner."""
    return [(row, regime) for row in study.rows for regime in (study.regimes or {"": None})]


def _mean_std(values: pd.Series) -> tuple[float | None, float | None]:
    values = pd.to_numeric(values, errors="coerce").dropna()
    return (values.mean() if len(values) else None, values.std(ddof=1) if len(values) > 1 else None)


def cell_means(study: Study, runs: dict[str, Any]) -> pd.DataFrame:
    """Per (row, regime, size, speed): top-1 mean over the finished seeds and the clips in the cell; study order."""
    cells = cell_frame(runs)
    means = cells.groupby(["row", "regime", "size", "speed"], sort=False).agg(
        top1=("top1", "mean"), count=("count", "max"), seeds=("seed", "nunique")).reset_index()
    order = {label: i for i, label in enumerate(_labels(study))}
    means["order"] = [order.get((r, g), len(order)) for r, g in zip(means["row"], means["regime"])]
    return means.sort_values("order", kind="stable").drop(columns="order").reset_index(drop=True)


def probe_frame(study: Study, runs: dict[str, Any]) -> pd.DataFrame:
    """Per row x regime: overall top-1, worst-cell top-1 and spread (best minus worst cell), mean ± std over seeds.

    Worst cell and spread are taken within each seed, then averaged over seeds
    (the mean of the worst cells, not the worst of the mean cells). Only
    FINISHED trials count; ``trials`` says how many were planned or ran.
    """
    cells = cell_frame(runs)
    per_seed = cells.groupby(["row", "regime", "seed"])["top1"].agg(worst="min", best="max", cells="size")
    per_seed = per_seed.assign(spread=per_seed["best"] - per_seed["worst"]).reset_index()
    means = cell_means(study, runs)
    out = []
    for row, regime in _labels(study):
        mine = [t for t in runs["trials"] if t["row"] == row and t["tags"].get("harness.regime", "") == regime]
        done = [t for t in mine if t["status"] == "FINISHED"]
        overall = pd.Series([t["metrics"].get("last_top1", t["metrics"].get("val_top1")) for t in done], dtype=float)
        seeds = per_seed[(per_seed["row"] == row) & (per_seed["regime"] == regime)]
        r: dict[str, Any] = {"row": row, "regime": regime or None, "block": study.rows[row].block}
        for name, values in (("top1", overall), ("worst", seeds["worst"]), ("spread", seeds["spread"])):
            r[f"{name}_mean"], r[f"{name}_std"] = _mean_std(values)
        cell = means[(means["row"] == row) & (means["regime"] == regime)]
        worst = cell.loc[cell["top1"].idxmin()] if len(cell) else None
        r["worst_cell"] = f"{worst['size']}/{worst['speed']}" if worst is not None else None
        r["cells"] = int(seeds["cells"].min()) if len(seeds) else 0
        r["min_cell_clips"] = int(cell["count"].min()) if len(cell) and cell["count"].notna().any() else None
        r["seeds"], r["trials"] = len(done), len(mine)
        out.append(r)
    return pd.DataFrame(out)


def probe_display(frame: pd.DataFrame) -> pd.DataFrame:
    """The human probe table: one line per block and regime."""
    return pd.DataFrame([{
        "row": r["row"], "regime": r["regime"] or "-",
        "top-1": _pm(r["top1_mean"], r["top1_std"]),
        "worst-cell top-1": _pm(r["worst_mean"], r["worst_std"]),
        "spread (best − worst cell)": _pm(r["spread_mean"], r["spread_std"]),
        "lowest mean cell (size/speed)": r["worst_cell"] or "-",
        "seeds": f"{r['seeds']}/{r['trials']}"} for _, r in frame.iterrows()])


PROBE_NOTE = ("top-1: val accuracy (%) at the last epoch over all val clips. Worst-cell top-1: the lowest of the "
              "size x speed cells' top-1 within each seed; spread: that seed's best cell minus its worst. Each is "
              "mean ± std over seeds (std needs two). 'lowest mean cell': the cell with the lowest top-1 averaged "
              "over seeds. Cells do not hold the same mix of motion families (see the study file): compare a cell "
              "across blocks, not the cells of one block with each other.")


def versus(frame: pd.DataFrame, ours: str = "Ours", others: tuple[str, ...] = ("RF-S", "RF-L")) -> list[str]:
    """Per regime, ``ours`` minus each single-receptive-field row on worst-cell top-1, with the spread of that
    difference (root sum of squares of the two stds): the issue's question, answered from the numbers alone."""
    lines = []
    for regime, group in frame.groupby(frame["regime"].fillna(""), sort=False):
        rows = group.set_index("row")
        if ours not in rows.index or pd.isna(rows.loc[ours, "worst_mean"]):
            continue
        parts = []
        for other in (o for o in others if o in rows.index and pd.notna(rows.loc[o, "worst_mean"])):
            mine, theirs = rows.loc[ours], rows.loc[other]
            diff = mine["worst_mean"] - theirs["worst_mean"]
            stds = [v for v in (mine["worst_std"], theirs["worst_std"]) if v is not None and pd.notna(v)]
            if len(stds) < 2:
                parts.append(f"{diff:+.1f} vs {other} (one seed: no std)")
                continue
            spread = (stds[0] ** 2 + stds[1] ** 2) ** 0.5
            verdict = "higher" if diff > spread else "lower" if diff < -spread else "within the seeds' spread"
            parts.append(f"{diff:+.1f} ± {spread:.1f} vs {other} ({verdict})")
        if parts:
            lines.append(f"Worst-cell top-1{f' ({regime})' if regime else ''}, {ours} minus: " + "; ".join(parts)
                         + ". ± is the root sum of squares of the two rows' stds over seeds.")
    return lines


def probe_notes(study: Study, profile: str, runs: dict[str, Any]) -> list[str]:
    """Lines under the probe table: bucket edges, clips per cell, chance, the regimes and the probe's wall time."""
    data = study.profiles[profile].data if profile in study.profiles else None
    lines = []
    if data is not None and data.buckets is not None:
        lines.append(f"Cells: object size (side / frame side) cut at {list(data.buckets.size)}, motion speed "
                     f"(displacement per frame / frame side) at {list(data.buckets.speed)} (data.buckets).")
    counts = cell_means(study, runs).dropna(subset=["count"])
    ranges = {regime: f"{int(g['count'].min())}-{int(g['count'].max())}"
              for regime, g in counts.groupby("regime", sort=False)}
    if len(set(ranges.values())) == 1:  # the regimes share their val split (same seed and val ranges)
        lines.append(f"Val clips per cell: {next(iter(ranges.values()))}.")
    elif ranges:
        lines.append("Val clips per cell: " + ", ".join(f"{v} ({k})" for k, v in ranges.items()) + ".")
    if data is not None and data.format == "synth":
        from harness.data.synth import CLASSES

        lines.append(f"Chance is {100 / len(CLASSES):.0f}% ({len(CLASSES)} classes in reversal pairs); a model blind "
                     "to frame order (TSN) cannot beat 50% within a pair.")
    for name, regime in (study.regimes or {}).items():
        if regime.description:
            lines.append(f"{name}: {regime.description}.")
    wall = runs["parent"]["tags"].get("harness.wall_s")
    if wall:
        lines.append(f"Wall time of the probe (harness run, every trial, Ray and MLflow included): {float(wall):.0f} s.")
    return lines


def render_probe(study: Study, profile: str, runs: dict[str, Any]) -> tuple[pd.DataFrame, dict[str, str],
                                                                             dict[str, str]]:
    """A probe study's (CSV frame, header, {"md": text, "csv": text}); the PNG is :func:`harness.plots.scale_heatmaps`."""
    frame = probe_frame(study, runs)
    h = header(study, profile, runs, frame)
    below = "\n\n".join([PROBE_NOTE, *versus(frame), *probe_notes(study, profile, runs)])
    md = (f"# {study.name}\n\n{_header_line(h)}\n\n{probe_display(frame).to_markdown(index=False)}\n\n"
          f"{below}\n")
    csv = frame.assign(profile=h["profile"], git_commit=h["commit"], date=h["date"]).to_csv(
        index=False, float_format="%.4f")
    return frame, h, {"md": md, "csv": csv}


def write(study: Study, profile: str, tracker: Any, *, parent_id: str | None = None,
          out_dir: str | Path = RESULTS) -> dict[str, Path]:
    """Read the study's runs from MLflow and write ``<out_dir>/<study>.{md,csv,tex,png}``.

    The four files are staged first and renamed only once all are written, so a
    full disk or a crash leaves the previous set whole, never a new .md beside an old .tex.
    """
    if study.kind == "search":  # sampled trials have their own report (top-k, Pareto front, importance)
        from harness.search import write as write_search

        return write_search(study, profile, tracker, parent_id=parent_id, out_dir=out_dir)
    from harness.errors import named

    runs = tracker.read_study(study.name, profile, parent_id)
    frame, h, texts = (render_probe if study.kind == "probe" else render)(study, profile, runs)
    out_dir = Path(out_dir)
    paths = {ext: out_dir / f"{study.name}.{ext}" for ext in [*texts, "png"]}
    staged = {ext: p.with_name(f".{p.name}.{os.getpid()}.staged") for ext, p in paths.items()}
    current = "md"  # the file being written, for the error message
    try:
        for current, text in texts.items():
            write_atomic(text, staged[current])
        current = "png"
        figure(study, tracker, runs, frame, staged["png"], title=_header_line(h))
        for current, p in paths.items():
            os.replace(staged[current], p)
    except OSError as e:
        raise named(e, paths[current]) from e
    finally:
        for p in staged.values():
            p.unlink(missing_ok=True)
    return paths


def main(args: Any) -> int:
    """``harness tables STUDY [--profile P] [--out DIR]``: rebuild the tables from the MLflow store alone."""
    from harness.config import load_study
    from harness.errors import fail_config, fail_environment
    from harness.run import WORK
    from harness.tracking import Tracker, default_uri, sqlite_path

    try:
        study = load_study(args.study)
    except Exception as exc:  # noqa: BLE001
        return fail_config(args.study, exc)
    uri = default_uri(WORK)
    db = sqlite_path(uri)
    if db is not None and not db.exists():
        log.error("no MLflow store at %s; run `harness run %s` first", db, args.study)
        return 1
    try:
        paths = write(study, args.profile, Tracker(uri), out_dir=args.out)
    except LookupError as e:
        log.error("%s", e)
        return 1
    except OSError as e:  # unwritable --out or a full disk: the previous tables are left whole
        return fail_environment(e, 1, then="the previous tables, if any, are unchanged")
    print(paths["md"].read_text(encoding="utf-8"))
    print("written: " + ", ".join(str(p) for p in paths.values()))
    return 0
