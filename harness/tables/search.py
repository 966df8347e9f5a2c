"""A search study's report (``kind: search``): top-k configurations, the Pareto front, where the paper's
choice lands, and Optuna's parameter importance, built from the MLflow child runs only.

    harness tables studies/rf_search.yaml           # rebuild results/rf_search.* from MLflow alone

Outputs: ``<study>.md`` (top-k configurations, the Pareto front, where the
paper's choice lands), ``.csv`` (every trial), ``_pareto.png`` (top-1 against
GFLOPs) and ``_importance.png`` (Optuna's parameter importance, recomputed from
the stored trials); all are also artifacts of the parent run.
"""
from __future__ import annotations

import io
import json
import logging
import warnings
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import pandas as pd
from scipy.stats import binomtest

from harness import names
from harness.config import Recipe, Search, Study
from harness.files import write_atomic
from harness.predictions import Predictions
from harness.space import base_row, distributions, flops_input, fmt
from harness.tables import statistics
from harness.tables.common import Report, completeness, when, write_set
from harness.tracking import StudyRuns, Tracker

log = logging.getLogger(__name__)


def _param(text: str | None) -> Any:
    """A child's param back to its value (the tracker writes non-strings as JSON)."""
    if text is None:
        return None
    try:
        return json.loads(text)
    except (TypeError, ValueError):
        return text


def search_of(study: Study) -> Search:
    if study.search is None:
        raise ValueError(f"study {study.name!r} has no search: section; its report is a search's")
    return study.search


def trial_frame(study: Study, runs: StudyRuns, clips: Mapping[str, Predictions] | None = None) -> pd.DataFrame:
    """One line per child run: its sample (raw and decoded), GFLOPs, state and accuracy; with the trials' per-clip
    predictions (``clips``, by key) the 95% interval of the last top-1 over the validation clips."""
    search = search_of(study)
    _, size = flops_input(study)
    lines = []
    for t in runs.trials:
        p, m, tags = t.params, t.metrics, t.tags
        values = {k: _param(p.get(f"recipe.{k}" if k in Recipe.model_fields else f"row.{k}")) for k in search.space}
        raw = {k.removeprefix("search."): _param(v) for k, v in p.items() if k.startswith("search.")}
        history = t.val_top1_history
        pruned = tags.get(names.PRUNED) == "flops"
        epochs = int(m.get("epoch", 0))
        trained = t.finished and not pruned and epochs > 0
        lines.append({
            "trial": t.trial.sample if t.trial.sample is not None else -1, "key": t.key, "status": t.status,
            **values, "gflops": m.get(f"profile_gflops_{size}"), "params_m": m.get("profile_params", float("nan")) / 1e6,
            "epochs": epochs, "max_epochs": int(_param(p.get("recipe.epochs")) or 0),
            "top1": m.get("val_top1") if trained else None, "top5": m.get("val_top5") if trained else None,
            "best_top1": max(history.values()) if trained and history else None,
            "objective": m.get(search.metric) if trained else None,
            "pruned": pruned, "stopped_early": names.STOPPED_EARLY in tags, "lost": names.LOST in tags,
            "trained": trained, "raw": raw,
            **clip_interval(clips.get(t.key) if clips and trained else None)})
    frame = pd.DataFrame(lines)
    if len(frame):
        frame["complete"] = frame["trained"] & (frame["epochs"] >= frame["max_epochs"])
        frame["pareto"] = pareto_mask(frame)
        frame = frame.sort_values("trial").reset_index(drop=True)
    return frame


def clip_interval(clips: Predictions | None) -> dict[str, float | None]:
    """``top1_low``/``top1_high``: the 95% (Wilson) interval of a trial's top-1 over its validation clips. A
    search trains each configuration once, so this is the only spread it can show: the seed's is not in it."""
    if clips is None or not len(clips):
        return {"top1_low": None, "top1_high": None}
    correct = clips.correct(1)
    ci = binomtest(int(correct.sum()), len(correct)).proportion_ci(confidence_level=0.95, method="wilson")
    return {"top1_low": 100 * ci.low, "top1_high": 100 * ci.high}


def pareto_mask(frame: pd.DataFrame) -> pd.Series:
    """Complete trials that no other complete trial dominates (top-1 >= and GFLOPs <=, one of them strictly)."""
    done = frame[frame["complete"]]
    g, t = done["gflops"].to_numpy(), done["top1"].to_numpy(dtype=float)
    on_front = [not any((g <= gi) & (t >= ti) & ((g < gi) | (t > ti))) for gi, ti in zip(g, t)]
    return pd.Series(on_front, index=done.index, dtype=bool).reindex(frame.index, fill_value=False)


def dominating(frame: pd.DataFrame, trial: pd.Series) -> pd.DataFrame:
    """Complete trials that dominate ``trial`` (empty when it is on the front)."""
    done = frame[frame["complete"]]
    better = (done["gflops"] <= trial["gflops"]) & (done["top1"] >= trial["top1"])
    strictly = (done["gflops"] < trial["gflops"]) | (done["top1"] > trial["top1"])
    return done[better & strictly]


def reference_trials(study: Study, frame: pd.DataFrame) -> pd.DataFrame:
    """Trained trials that match the paper's choice on every key it names."""
    ref = search_of(study).reference
    if not ref or not len(frame):
        return frame.iloc[0:0]
    match = pd.Series(True, index=frame.index)
    for k, v in ref.items():
        match &= frame[k].map(lambda x, v=v: x == v or (isinstance(x, float) and abs(x - float(v)) < 1e-9))
    return frame[match & frame["trained"]]


def importances(study: Study, frame: pd.DataFrame) -> tuple[Any, dict[str, float]]:
    """Optuna's parameter importance for the objective, from the stored trials (trained ones, the value
    Optuna was told: the last epoch's, also for trials ASHA stopped). Returns (study, importances)."""
    import optuna

    dists = distributions(search_of(study))
    ot = optuna.create_study(direction="maximize", sampler=optuna.samplers.RandomSampler(seed=0))
    for _, r in frame[frame["trained"]].iterrows():
        params = {k: r["raw"][k] for k in dists if k in r["raw"]}
        if len(params) == len(dists) and r["objective"] is not None:
            ot.add_trial(optuna.trial.create_trial(params=params, distributions=dists, value=float(r["objective"])))
    values: dict[str, float] = {}
    if len(ot.trials) >= 2:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            try:
                values = optuna.importance.get_param_importances(ot, evaluator=_evaluator(study))
            except RuntimeError as exc:  # e.g. every trial scored the same: nothing to attribute
                log.warning("no parameter importance: %s", exc)
    return ot, values


def _evaluator(study: Study) -> Any:
    from optuna.importance import FanovaImportanceEvaluator

    # fANOVA (a random forest, seeded) over PED-ANOVA (Optuna's default): PED-ANOVA compares the top 10%
    # of trials with the rest, one or two trials in a 16-sample search.
    return FanovaImportanceEvaluator(seed=search_of(study).seed)


def display(study: Study, frame: pd.DataFrame) -> pd.DataFrame:
    _, size = flops_input(study)
    rows = []
    for _, r in frame.iterrows():
        d = {"trial": f"#{r['trial']}"}
        d.update({k: fmt(r[k]) if r[k] is not None else "-" for k in search_of(study).space})
        d[f"GFLOPs@{size}"] = "-" if pd.isna(r["gflops"]) else f"{r['gflops']:.2f}"
        d["epochs"] = f"{r['epochs']}/{r['max_epochs']}"
        d["top-1 last"] = "-" if pd.isna(r["top1"]) else f"{r['top1']:.1f}" + (
            f" [{r['top1_low']:.1f}, {r['top1_high']:.1f}]" if pd.notna(r.get("top1_low")) else "")
        d["top-1 best epoch"] = "-" if pd.isna(r["best_top1"]) else f"{r['best_top1']:.1f}"
        d["Pareto"] = "✓" if r["pareto"] else ""
        d["note"] = ("over FLOPs budget, not trained" if r["pruned"] else
                     f"ASHA stopped it after epoch {r['epochs']}" if r["stopped_early"] else
                     r["status"].lower() if r["status"] != "FINISHED" else "")
        rows.append(d)
    return pd.DataFrame(rows)


def render(study: Study, profile: str, runs: StudyRuns, frame: pd.DataFrame,
           imp: dict[str, float]) -> str:
    """The markdown report."""
    search, p = search_of(study), runs.parent
    frames, size = flops_input(study)
    trained = frame[frame["trained"]] if len(frame) else frame
    # as successive halving ranks: how far ASHA let a trial train first, then its value there
    ranked = trained.sort_values(["epochs", "objective"], ascending=False) if len(trained) else trained
    top = ranked.head(search.top_k)
    n_pruned = int(frame["pruned"].sum()) if len(frame) else 0
    n_early = int(frame["stopped_early"].sum()) if len(frame) else 0
    wall = p.tags.get(names.WALL_S)
    missing = completeness(runs)
    lines = [
        f"# {study.name}: search over {', '.join(search.space)}", "",
        f"{study.name}: profile {profile}, {p.params.get('sampler', '')}; "
        f"{len(frame)} of {p.params.get('num_samples', '?')} samples in MLflow, "
        f"{p.params.get('max_concurrent', '?')} at a time; {when(p)}, "
        f"commit {p.tags.get(names.COMMIT, 'unknown')}, machine {p.tags.get(names.MACHINE, 'not recorded')} "
        f"(MLflow parent run {p.run_id}, {p.status})"
        + (f"; wall time {float(wall):.0f} s" if wall else "") + ".", "", *([missing, ""] if missing else []),
        f"GFLOPs: per clip on the paper backbone ({base_row(study)[1].backbone}, {study.num_classes} classes) at "
        f"{frames} frames x {size} px, fvcore (`harness profile`). Budget: "
        + (f"{search.flops_budget:g} GFLOPs, {n_pruned} sample(s) above it not trained."
           if search.flops_budget is not None else "none."),
        f"{n_early} trial(s) stopped early by ASHA." if not search.multi_objective else "No early stopping.", "",
        f"## Top {min(search.top_k, len(top))} (by epochs trained, then {search.metric} at the last epoch)", "",
        display(study, top).to_markdown(index=False) if len(top) else "(no trained trial)", ""]
    front = frame[frame["pareto"]] if len(frame) else frame
    lines += ["## Pareto front (top-1 up, GFLOPs down; trials that trained every epoch)", "",
              display(study, front).to_markdown(index=False) if len(front) else "(no trial trained every epoch)", ""]
    lines += ["## The paper's choice", "", *paper_choice(study, frame, runs), ""]
    if len(ranked):
        best = ranked.iloc[0]
        lines += [f"Best configuration: #{best['trial']} "
                  + ", ".join(f"{k}={fmt(best[k])}" for k in search.space)
                  + f": {search.metric} {best['objective']:.1f} after {best['epochs']} epochs, "
                    f"{best['gflops']:.2f} GFLOPs.", ""]
    if imp:
        lines += ["Parameter importance for " + search.metric + " (Optuna, fANOVA over the trained trials): "
                  + ", ".join(f"{k} {v:.2f}" for k, v in imp.items()) + ".", ""]
    lines += [f"Figures: `{study.name}_pareto.png`, `{study.name}_importance.png`; every trial: `{study.name}.csv`. "
              "A trial's top-1 is its last epoch's, [the 95% interval over its validation clips]: one seed per "
              "configuration, so the seed's own spread is not in it; trials ASHA stopped show theirs at that epoch "
              "and stay off "
              "the front. Under the laptop profile (synthetic data) only the ordering of configurations means "
              "anything, not the values."]
    return "\n".join(lines) + "\n"


def paper_choice(study: Study, frame: pd.DataFrame, runs: StudyRuns) -> list[str]:
    """Where the paper's choice landed: its trials, on the front or what dominates it."""
    ref = search_of(study).reference
    if not ref:
        return ["(search.reference not given)"]
    gf = runs.parent.metrics.get(names.REFERENCE_GFLOPS)
    name = ", ".join(f"{k}={fmt(v)}" for k, v in ref.items())
    head = f"{name}: {gf:.2f} GFLOPs." if gf is not None else f"{name}."
    mine = reference_trials(study, frame)
    done = frame[frame["complete"]] if len(frame) else frame
    if not len(mine):
        cheaper = done[done["gflops"] <= gf] if gf is not None and len(done) else done.iloc[0:0]
        if len(cheaper):
            b = cheaper.sort_values("top1", ascending=False).iloc[0]
            return [head, f"Not sampled. At or below its GFLOPs the best complete trial is #{b['trial']}: "
                          f"top-1 {b['top1']:.1f} at {b['gflops']:.2f} GFLOPs."]
        return [head, "Not sampled, and no complete trial at or below its GFLOPs."]
    out = [head]
    for _, r in mine.iterrows():
        if r["pareto"]:
            where = "on the Pareto front"
        elif not r["complete"]:
            where = f"stopped by ASHA after epoch {r['epochs']}, so not on the front"
        else:
            b = dominating(frame, r).sort_values("top1", ascending=False).iloc[0]
            where = f"dominated, e.g. by #{b['trial']} (top-1 {b['top1']:.1f} at {b['gflops']:.2f} GFLOPs)"
        out.append(f"Trial #{r['trial']} ({', '.join(f'{k}={fmt(r[k])}' for k in search_of(study).space)}): "
                   f"top-1 {r['top1']:.1f} after {r['epochs']} epochs; {where}.")
    return out


def plot_pareto(study: Study, frame: pd.DataFrame, ref_gflops: float | None, path: Path, title: str) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    search = search_of(study)
    _, size = flops_input(study)
    fig, ax = plt.subplots(figsize=(8, 5.5))
    if len(frame):
        done, early = frame[frame["complete"]], frame[frame["trained"] & ~frame["complete"]]
        ax.scatter(early["gflops"], early["top1"], facecolors="none", edgecolors="grey",
                   label="stopped early by ASHA (top-1 at that epoch)")
        ax.scatter(done["gflops"], done["top1"], color="tab:blue", label="trained every epoch")
        front = frame[frame["pareto"]].sort_values("gflops")
        ax.plot(front["gflops"], front["top1"], drawstyle="steps-post", marker="o", markersize=11,
                markerfacecolor="none", color="tab:red", label="Pareto front")
        for _, r in frame[frame["trained"]].iterrows():
            ax.annotate(f"#{r['trial']}", (r["gflops"], r["top1"]), textcoords="offset points", xytext=(3, 3),
                        fontsize=7)
        mine = reference_trials(study, frame)
        if len(mine):
            ax.scatter(mine["gflops"], mine["top1"], marker="*", s=220, color="gold", edgecolors="black",
                       zorder=5, label="the paper's choice")
        pruned = frame[frame["pruned"]]
        if len(pruned):  # no top-1 to plot: a mark on the GFLOPs axis
            ax.scatter(pruned["gflops"], [0.03] * len(pruned), marker="x", color="black",
                       transform=ax.get_xaxis_transform(), label="over budget, not trained")
    if ref_gflops is not None:
        ax.axvline(ref_gflops, color="gold", linestyle="--", label=f"paper's choice: {ref_gflops:.2f} GFLOPs")
    if search.flops_budget is not None:
        ax.axvline(search.flops_budget, color="black", linestyle=":", label="FLOPs budget")
    ax.set_xlabel(f"GFLOPs per clip at {size}px, paper backbone")
    ax.set_ylabel(f"{search.metric}, last epoch (%)")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7, loc="best")
    ax.set_title(title, fontsize=8)
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110)
    plt.close(fig)
    return write_atomic(buf.getvalue(), path)


def plot_importance(study: Study, ot: Any, imp: dict[str, float], path: Path, title: str) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import optuna

    if imp:
        with warnings.catch_warnings():  # optuna.visualization.matplotlib is marked experimental
            warnings.simplefilter("ignore")
            ax = optuna.visualization.matplotlib.plot_param_importances(
                ot, evaluator=_evaluator(study), target_name=search_of(study).metric)
        fig = plt.gcf()  # the figure Optuna drew into
        fig.set_size_inches(8, 5)
        ax.set_title(title, fontsize=8)
    else:
        fig, ax = plt.subplots(figsize=(8, 5))
        ax.text(0.5, 0.5, f"no parameter importance: {len(ot.trials)} trained trial(s) stored\n"
                "(it needs at least 2 whose values differ)", ha="center", va="center")
        ax.set_axis_off()
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110)
    plt.close(fig)
    return write_atomic(buf.getvalue(), path)


def write(study: Study, profile: str, tracker: Tracker, parent_id: str | None = None,
          out_dir: str | Path = "results") -> Report:
    """Read the search's child runs from MLflow and write ``<out_dir>/<study>{.md,.csv,_pareto.png,_importance.png}``."""
    runs = tracker.read_study(study.name, profile, parent_id)
    frame = trial_frame(study, runs, statistics.predictions(tracker, runs))
    ot, imp = importances(study, frame)
    title = f"{study.name} ({profile}), parent run {runs.parent.run_id[:8]}"
    md = render(study, profile, runs, frame, imp)
    csv = frame.drop(columns=["raw"]) if len(frame) else frame
    ref = runs.parent.metrics.get(names.REFERENCE_GFLOPS)
    paths = write_set(study, runs, Path(out_dir), {"md": md, "csv": csv.to_csv(index=False)}, {
        "_pareto.png": lambda path: plot_pareto(study, frame, ref, path, title),
        "_importance.png": lambda path: plot_importance(study, ot, imp, path, title)})
    return Report(paths, md)
