"""A study's tables, built with pandas from MLflow alone (never from a run's memory).

    harness tables studies/table1.yaml                  # -> results/table1.{md,csv,tex,png}
    harness tables studies/table1.yaml --profile paper

The runs are the child runs of the study's latest FINISHED invocation (MLflow
parent run) for the profile, or of the latest one when none finished.

Per row: params and GFLOPs of the row on the paper backbone (``harness.profile``,
logged on each child run), top-1 and top-5 at the last epoch as mean +- std over
the finished seeds, the best-epoch top-1 beside it, the paper's figures from the
study's ``paper:`` CSV and the difference. The header says which profile, how
many seeds, when, and which commit made the numbers (tags of the parent run).

Headline accuracy is the LAST epoch's: the best epoch is chosen on the
validation set it is reported on, so it flatters (GST's authors reported the
best epoch; see docs). Both are shown. Under the laptop profile the data are
synthetic, so only the ordering of rows is comparable with the paper, not the
delta.
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

log = logging.getLogger(__name__)

RESULTS = Path("results")


def paper_figures(study: Study) -> pd.DataFrame:
    """The paper's figures for the study (results/paper/*.csv), indexed by row; empty if none."""
    if not study.paper or not Path(study.paper).exists():
        return pd.DataFrame(index=pd.Index([], name="row"))
    return pd.read_csv(study.paper, dtype={"row": str}).set_index("row")


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
                "trained_params": m.get("num_params"), "node_id": t["tags"].get("harness.node_id")}
        line.update({k.removeprefix("profile_"): v for k, v in m.items() if k.startswith("profile_")})
        lines.append(line)
    return pd.DataFrame(lines)


def build(study: Study, runs: dict[str, Any]) -> pd.DataFrame:
    """The per-row table from :meth:`harness.tracking.Tracker.read_study` output."""
    trials = trial_frame(runs)
    paper = paper_figures(study)
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
        ref = paper.loc[row_name] if row_name in paper.index else pd.Series(dtype=object)
        for col in paper.columns:
            if col.startswith("paper_"):
                r[col] = ref.get(col)
        r.setdefault("paper_top1", None)
        r["delta_top1"] = (r["top1_mean"] - float(r["paper_top1"])
                           if r["top1_mean"] is not None and pd.notna(r["paper_top1"]) else None)
        out.append(r)
    frame = pd.DataFrame(out)
    return frame


def header(study: Study, profile: str, runs: dict[str, Any], frame: pd.DataFrame) -> dict[str, str]:
    p = runs["parent"]
    when = datetime.fromtimestamp((p["end_time"] or p["start_time"]) / 1000, tz=timezone.utc)
    seeds = p["tags"].get("harness.seeds") or str(int(frame["trials"].max()) if len(frame) else 0)
    return {"study": study.name, "profile": profile, "seeds": seeds,
            "date": when.strftime("%Y-%m-%d %H:%M UTC"), "commit": p["tags"].get("harness.git_commit", "unknown"),
            "parent_run": p["run_id"], "status": p["status"]}


def _pm(mean: Any, std: Any) -> str:
    if mean is None or pd.isna(mean):
        return "-"
    return f"{mean:.1f}" if std is None or pd.isna(std) else f"{mean:.1f} ± {std:.1f}"


def _num(v: Any, fmt: str = "{:.2f}") -> str:
    return "-" if v is None or pd.isna(v) else fmt.format(v)


def display(frame: pd.DataFrame) -> pd.DataFrame:
    """The human table (markdown, LaTeX): formatted strings, one column per figure."""
    sizes = sorted(int(c.split("_")[1]) for c in frame.columns if c.startswith("gflops_"))
    rows = []
    for _, r in frame.iterrows():
        d = {"row": r["row"], "params (M)": _num(r["params"] / 1e6 if pd.notna(r["params"]) else None)}
        if "paper_params_m" in r:
            d["paper params (M)"] = _num(r["paper_params_m"])
        for s in sizes:
            d[f"GFLOPs@{s}"] = _num(r[f"gflops_{s}"])
            if f"paper_gflops_{s}" in r and frame[f"paper_gflops_{s}"].notna().any():
                d[f"paper GFLOPs@{s}"] = _num(r[f"paper_gflops_{s}"])
        d["top-1 last"] = _pm(r["top1_mean"], r["top1_std"])
        d["top-1 best epoch"] = _pm(r["best_top1_mean"], r["best_top1_std"])
        d["top-5 last"] = _pm(r["top5_mean"], r["top5_std"])
        d["paper top-1"] = _num(r.get("paper_top1"))
        d["Δ top-1"] = _num(r["delta_top1"], "{:+.1f}")
        d["seeds"] = f"{r['seeds']}/{r['trials']}"
        rows.append(d)
    return pd.DataFrame(rows)


def _header_line(h: dict[str, str]) -> str:
    return (f"{h['study']}: profile {h['profile']}, {h['seeds']} seed(s), {h['date']}, commit {h['commit']} "
            f"(MLflow parent run {h['parent_run']}, {h['status']})")


NOTE = ("params and GFLOPs: the row on the paper backbone (fvcore, one multiply-add = one FLOP, per clip). "
        "top-1/top-5: validation accuracy (%) at the last epoch, mean ± std over seeds; 'best epoch' picks the "
        "best epoch on that same validation set. Δ top-1 = last-epoch top-1 − paper. Under the laptop profile "
        "(synthetic reversal-paired data, tiny ResNet) only the ordering of rows compares with the paper.")


def render(study: Study, profile: str, runs: dict[str, Any]) -> tuple[pd.DataFrame, dict[str, str], dict[str, str]]:
    """(CSV frame, header, {"md": text, "csv": text, "tex": text})."""
    frame = build(study, runs)
    h = header(study, profile, runs, frame)
    shown = display(frame)
    md = f"# {study.name}\n\n{_header_line(h)}\n\n{shown.to_markdown(index=False)}\n\n{NOTE}\n"
    csv_frame = frame.assign(profile=h["profile"], git_commit=h["commit"], date=h["date"])
    csv = csv_frame.to_csv(index=False, float_format="%.4f")
    tex = (f"% {_header_line(h)}\n"
           + shown.to_latex(index=False, escape=True, caption=f"{study.name} ({_header_line(h)})",
                            label=f"tab:{study.name}"))
    return frame, h, {"md": md, "csv": csv, "tex": tex}


def write_atomic(data: str | bytes, path: str | Path) -> Path:
    """Write so a reader sees the old file or the new one, never half (temp in the same folder + os.replace)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data.encode("utf-8") if isinstance(data, str) else data)
        os.chmod(tmp, 0o644)  # mkstemp makes 0600; a results file is for everyone to read
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def write(study: Study, profile: str, tracker: Any, *, parent_id: str | None = None,
          out_dir: str | Path = RESULTS) -> dict[str, Path]:
    """Read the study's runs from MLflow and write ``<out_dir>/<study>.{md,csv,tex,png}``."""
    from harness.plots import accuracy_vs_gflops

    runs = tracker.read_study(study.name, profile, parent_id)
    frame, h, texts = render(study, profile, runs)
    out_dir = Path(out_dir)
    paths = {ext: write_atomic(text, out_dir / f"{study.name}.{ext}") for ext, text in texts.items()}
    paths["png"] = accuracy_vs_gflops(frame, out_dir / f"{study.name}.png", title=_header_line(h))
    return paths


def main(args: Any) -> int:
    """``harness tables STUDY [--profile P] [--out DIR]``: rebuild the tables from the MLflow store alone."""
    from harness.config import load_study
    from harness.errors import fail_config
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
    print(paths["md"].read_text(encoding="utf-8"))
    print("written: " + ", ".join(str(p) for p in paths.values()))
    return 0
