"""A search: Optuna samples configurations of the study's one row, Ray Tune trains them, MLflow keeps each.

    harness run studies/rf_search.yaml              # laptop: 16 configurations, TPE + ASHA, 2 at a time
    harness run studies/rf_search.yaml --dry-run    # the space as Optuna sees it, the budget; no Ray, no files
    harness run studies/rf_search.yaml --resume     # after the driver died: Tune and Optuna carry on
    harness tables studies/rf_search.yaml           # rebuild results/rf_search.* from MLflow alone

``harness run`` sends a ``kind: search`` study here (``harness.run.main``). The
study's ``search:`` section (``harness.config.Search``) names the space: block
options of the base row and recipe keys, each a choice, a log-uniform or a
uniform range; a log-uniform range with ``or_zero`` also tries exactly 0, as a
categorical ``<name>_zero`` beside ``<name>_log`` (a static space, so TPE,
NSGA-II and the importance evaluators see every parameter in every trial; the
price is that ``<name>_log`` is still drawn, and ignored, when ``<name>_zero``
is True).

Each sample becomes a trial spec in the driver (:class:`TrialMaker`): the
resolved train config, and the configuration's params and GFLOPs on the paper
backbone at the paper profile's input (``harness.profile``; 1-3 s a new
configuration, cached). Over ``flops_budget`` the trial reports at once without
training and Optuna is told top-1 0 (``harness.tune.TrialSpecSearcher``), so
it learns to avoid the region; the trial still counts as one of
``num_samples``. A trial's key is ``<study>/<profile>/<Ray trial id>``: stable
across ``--resume`` and unique per sample, so a child run is never shared.

Outputs, built from the MLflow child runs only (:func:`write`):
``results/<study>.md`` (top-k configurations, the Pareto front, where the
paper's choice lands), ``.csv`` (every trial), ``_pareto.png`` (top-1 against
GFLOPs) and ``_importance.png`` (Optuna's parameter importance, recomputed from
the stored trials); all are also artifacts of the parent run.

What it gives up: ASHA ranks by accuracy alone, so a cheap configuration it
stops early is plotted at its last epoch but kept off the Pareto front (which
holds only trials that trained every epoch); multi-objective mode runs without
early stopping for that reason. A trial's top-1 is its last epoch's.
"""
from __future__ import annotations

import io
import json
import logging
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd

from harness.config import Profile, Recipe, Row, Search, Study, TrainConfig, trial_config

log = logging.getLogger(__name__)

REFERENCE_GFLOPS = "reference_gflops"  # parent-run metric: GFLOPs of the paper's choice


# ----------------------------------------------------------------------------- the space


def distributions(search: Search) -> dict[str, Any]:
    """The space as Optuna distributions (names as Optuna and the importance plot show them)."""
    from optuna.distributions import CategoricalDistribution, FloatDistribution

    out: dict[str, Any] = {}
    for name, p in search.space.items():
        if p.choice is not None:
            out[name] = CategoricalDistribution(p.choice)
        elif p.loguniform is not None and p.or_zero:
            out[f"{name}_zero"] = CategoricalDistribution([False, True])
            out[f"{name}_log"] = FloatDistribution(*p.loguniform, log=True)
        elif p.loguniform is not None:
            out[name] = FloatDistribution(*p.loguniform, log=True)
        else:
            out[name] = FloatDistribution(*p.uniform)
    return out


def decode(search: Search, params: dict[str, Any]) -> dict[str, Any]:
    """Optuna's params -> the value of each space key (``<name>_zero`` True gives exactly 0)."""
    out = {}
    for name, p in search.space.items():
        if p.or_zero:
            out[name] = 0.0 if params[f"{name}_zero"] else params[f"{name}_log"]
        else:
            out[name] = params[name]
    return out


def base_row(study: Study) -> tuple[str, Row]:
    return next(iter(study.rows.items()))


def sampled_row(study: Study, values: dict[str, Any]) -> Row:
    """The base row with the sampled block options and recipe keys applied."""
    name, row = base_row(study)
    recipe = {**row.recipe, **{k: v for k, v in values.items() if k in Recipe.model_fields}}
    options = {k: v for k, v in values.items() if k not in Recipe.model_fields}
    return Row.model_validate({**row.model_dump(), **options, "recipe": recipe})


def train_config(study: Study, profile_name: str, profile: Profile, values: dict[str, Any], key: str) -> TrainConfig:
    """The resolved trial of one sample: :func:`harness.config.trial_config` of the sampled row."""
    name, _ = base_row(study)
    resolved = study.model_copy(update={"rows": {name: sampled_row(study, values)},
                                        "profiles": {**study.profiles, profile_name: profile}})
    cfg = trial_config(resolved, profile_name, name, study.search.seed)
    return cfg.model_copy(update={"name": key})


def flops_input(study: Study) -> tuple[int, int]:
    """(frames, size) GFLOPs are counted at: the paper profile's input, else the first profile's."""
    data = (study.profiles.get("paper") or next(iter(study.profiles.values()))).data
    return data.frames, data.size


def gflops_of(study: Study, row: Row) -> tuple[float, dict[str, Any]]:
    """GFLOPs of a row on its paper backbone at :func:`flops_input`, and the whole profile."""
    from harness.profile import profile_row

    frames, size = flops_input(study)
    prof = profile_row(row, num_classes=study.num_classes, frames=frames, sizes=[size])
    return prof["gflops"][str(size)], prof


def _fmt(value: Any) -> str:
    if isinstance(value, float) and 0 < value < 1 and abs(1 / value - round(1 / value)) < 1e-9:
        return f"1/{round(1 / value)}"  # proportions as the paper writes them
    return f"{value:.3g}" if isinstance(value, float) else str(value)


def label(search: Search, values: dict[str, Any], number: int) -> str:
    """``#3 spatial_rf=5 temporal_rf=7 proportion=1/4 fusion=learned``: the block options a sample sets."""
    parts = [f"{k}={_fmt(v)}" for k, v in values.items() if k not in Recipe.model_fields]
    return " ".join([f"#{number}", *parts])


@dataclass(frozen=True)
class TrialMaker:
    """Turns Optuna's params into a trial spec, in the driver; pickled with Tune's searcher state."""

    study: Study
    profile_name: str
    profile: Profile
    tags: dict[str, str] = field(default_factory=dict)

    def __call__(self, trial_id: str, params: dict[str, Any], number: int) -> dict[str, Any]:
        from harness.run import profile_metrics
        from harness.tracking import flatten

        search = self.study.search
        values = decode(search, params)
        key = f"{self.study.name}/{self.profile_name}/{trial_id}"
        cfg = train_config(self.study, self.profile_name, self.profile, values, key)
        gflops, prof = gflops_of(self.study, cfg.row)
        budget = search.flops_budget
        over = (f"{gflops:.2f} GFLOPs is over the budget of {budget:g}; not trained"
                if budget is not None and gflops > budget else "")
        name = label(search, values, number)
        log.info("sampled %s: %.2f GFLOPs%s", name, gflops, " (over budget: not trained)" if over else "")
        tags = {**self.tags, "harness.row": name, "harness.seed": str(search.seed),
                "harness.block": cfg.row.block, "harness.search_trial": str(number)}
        return {
            "key": key, "row": name, "seed": search.seed, "tags": tags, "gflops": gflops, "over_budget": over,
            "train": cfg.model_dump(mode="json"),
            "child": {"key": key, "name": name, "tags": tags,
                      "params": {**flatten(cfg.model_dump(mode="json")),
                                 **{f"search.{k}": v for k, v in params.items()}},
                      "metrics": profile_metrics(prof)},
        }


# ----------------------------------------------------------------------------- running


def main(args: Any, study: Study, profile: Profile) -> int:
    """``harness run`` for a ``kind: search`` study (validated, profile resolved, preflight passed)."""
    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)  # not "A new study created in memory" per study
    if args.seeds is not None:
        log.warning("--seeds does not apply to a search: every trial trains with search.seed (%d)",
                    study.search.seed)
    if args.dry_run:
        print(plan_text(study, args.profile, profile, args.max_concurrent))
        print("\n--dry-run: nothing trained, no Ray started, nothing written.")
        return 0
    return execute(study, args.profile, profile, study_path=args.study, address=args.address,
                   max_concurrent=args.max_concurrent, resume=args.resume)


def plan_text(study: Study, profile_name: str, profile: Profile, max_concurrent: int | None) -> str:
    search = study.search
    budget = search.budget[profile_name]
    frames, size = flops_input(study)
    ref = reference_gflops(study)
    space = pd.DataFrame([{"Optuna parameter": k, "distribution": repr(d)} for k, d in distributions(search).items()])
    r, d = profile.recipe, profile.data
    return "\n".join([
        f"{study.name}: search of {len(search.space)} keys of row {base_row(study)[0]!r} "
        f"({base_row(study)[1].block}), profile {profile_name}",
        f"{sampler_text(study, profile_name)}; {budget.num_samples} samples, "
        f"{max_concurrent or budget.max_concurrent} at a time",
        f"backbone {profile.backbone.arch}, data {d.format} at {d.root} ({d.frames} frames, {d.size}px), "
        f"{r.epochs} epochs, batch {r.batch_size}",
        f"GFLOPs at {frames} frames x {size}px on the paper backbone; budget "
        f"{search.flops_budget if search.flops_budget is not None else 'none'}; the paper's choice "
        f"({', '.join(f'{k}={_fmt(v)}' for k, v in search.reference.items()) or 'not given'}): "
        f"{'-' if ref is None else f'{ref:.2f}'} GFLOPs", "", space.to_markdown(index=False)])


def sampler_text(study: Study, profile_name: str) -> str:
    s, b = study.search, study.search.budget[profile_name]
    epochs = study.profiles[profile_name].recipe.epochs
    if s.multi_objective:
        return (f"NSGA-II (seed {s.seed}, generations of {s.population_size}) on ({s.metric} max, GFLOPs min), "
                f"FIFO: every trial trains {epochs} epochs")
    return (f"TPE (seed {s.seed}, {s.startup_trials} random startup samples) on {s.metric} (max), "
            f"ASHA (grace {b.grace_period} epochs, top 1/{b.reduction_factor:g} go on at each rung, max {epochs})")


def reference_gflops(study: Study) -> float | None:
    """GFLOPs of the paper's choice (``search.reference``) on the base row; None if none is given."""
    if not study.search.reference:
        return None
    return gflops_of(study, sampled_row(study, study.search.reference))[0]


def execute(study: Study, profile_name: str, profile: Profile, *, study_path: str | Path,
            address: str | None = None, max_concurrent: int | None = None, resume: bool = False,
            max_failures: int = 2) -> int:
    """Track, search, tabulate. Returns 0 when every sampled trial ended, 1 otherwise."""
    from harness import run as runner
    from harness import tune as tuning
    from harness.tracking import COMMIT, GIT_COMMIT, RAY_EXPERIMENT, Tracker, default_uri, git_commit

    start = time.perf_counter()
    budget = study.search.budget[profile_name]
    max_concurrent = max_concurrent or budget.max_concurrent
    base = runner.Trial(f"{study.name}/{profile_name}/base", base_row(study)[0], study.search.seed,
                        train_config(study, profile_name, profile, {}, "base"))
    if base.config.data.format == "synth":  # once, here, before any worker could race to generate it
        from harness.data.synth import ensure_synth

        ensure_synth(base.config.data)
    trace = runner.trace_tags(base, runner.data_fingerprints([base]))  # every trial reads the base's data

    tracker = Tracker(default_uri(runner.WORK))
    tracker.prepare()
    commit = git_commit()
    commit_tags = {COMMIT: commit, GIT_COMMIT: commit.removesuffix("+dirty")}
    parent = tracker.latest_parent(study.name, profile_name) if resume else None
    if resume and parent is None:
        log.warning("--resume: no earlier run of %s (%s) in %s; starting a new one", study.name, profile_name,
                    tracker.uri)
    new_experiment = (runner.WORK / "ray" / study.name).resolve() / f"{profile_name}-{time.strftime('%Y%m%d-%H%M%S')}"
    if parent is None:
        parent_id = start_parent(tracker, study, profile_name, profile, max_concurrent=max_concurrent,
                                 tags={**commit_tags, "harness.study_file": str(study_path), **trace})
        exp_path, restore, done_before = new_experiment, False, False
    else:
        parent_id = parent.info.run_id
        exp_path = Path(parent.data.tags.get(RAY_EXPERIMENT, ""))
        restore, done_before = tuning.can_restore(exp_path), parent.info.status == "FINISHED"
        tracker.reopen(parent_id)
        runner.reopen_errored(tracker, tracker.children(parent_id))
        log.info("resuming parent run %s (%s)", parent_id, parent.info.run_name)
        if not restore and not done_before:
            exp_path = new_experiment
            log.info("no Ray experiment state to restore; the search starts afresh under the same parent run")
    tracker.set_tags(parent_id, {RAY_EXPERIMENT: str(exp_path)})

    if done_before:
        log.info("the search %s (%s) already finished; rebuilding its outputs", study.name, profile_name)
    else:
        maker = TrialMaker(study, profile_name, profile, tags={
            **trace, **commit_tags, "harness.study": study.name, "harness.profile": profile_name})
        log.info("%s: %s; %d samples; Ray experiment %s, MLflow %s (parent %s)", study.name,
                 sampler_text(study, profile_name), budget.num_samples, exp_path, tracker.uri, parent_id)
        try:
            with tuning.session(address):
                t0 = time.perf_counter()
                search = study.search
                tuning.run_search(
                    distributions(search), maker, storage=exp_path.parent, name=exp_path.name,
                    resources=profile.resources.model_dump(),
                    callback=tuning.SearchMlflowCallback(tracker.uri, parent_id, total=budget.num_samples),
                    metric=search.metric, multi_objective=search.multi_objective, seed=search.seed,
                    startup_trials=search.startup_trials, population_size=search.population_size,
                    num_samples=budget.num_samples, max_concurrent=max_concurrent, epochs=profile.recipe.epochs,
                    grace_period=budget.grace_period, reduction_factor=budget.reduction_factor,
                    max_failures=max_failures, keep=tuning.checkpoints_to_keep(profile.backbone.arch),
                    restore=restore)
                log.info("Ray Tune finished in %.1f s", time.perf_counter() - t0)
        except KeyboardInterrupt:
            return runner.interrupted(tracker, parent_id, study_path, profile_name)
    before = float(parent.data.tags.get("harness.wall_s", 0)) if parent is not None else 0.0
    spent = 0.0 if done_before else time.perf_counter() - start  # summed over invocations that ran to the end (a killed one records none)
    return finish(study, profile_name, tracker, parent_id, wall_s=before + spent)


def start_parent(tracker: Any, study: Study, profile_name: str, profile: Profile, *, max_concurrent: int,
                 tags: dict[str, str]) -> str:
    """The invocation's MLflow parent run: search settings and profile as params, the resolved study,
    and the GFLOPs of the paper's choice (a metric the outputs read back)."""
    import yaml

    from harness.tracking import flatten

    search = study.search
    resolved = study.model_dump(mode="json")
    resolved["profiles"] = {profile_name: profile.model_dump(mode="json")}
    parent_id = tracker.start_parent(study.name, profile_name, tags=tags, params={
        "study": study.name, "profile": profile_name, "num_samples": search.budget[profile_name].num_samples,
        "max_concurrent": max_concurrent, "sampler": sampler_text(study, profile_name),
        **flatten(search.model_dump(mode="json", exclude={"space", "budget", "reference"}), "search."),
        "search.space": json.dumps(search.model_dump(mode="json")["space"]),
        "search.reference": json.dumps(search.reference),
        **flatten(profile.model_dump(mode="json", exclude={"provenance"}))})
    tracker.log_text(parent_id, yaml.safe_dump(resolved, sort_keys=False), "study.resolved.yaml")
    ref = reference_gflops(study)
    if ref is not None:
        tracker.client.log_metric(parent_id, REFERENCE_GFLOPS, ref)
    return parent_id


def finish(study: Study, profile_name: str, tracker: Any, parent_id: str, *, wall_s: float) -> int:
    """Close the parent run, write the outputs from MLflow (also as its artifacts), print the report."""
    from harness import run as runner

    close_lost_trials(tracker, parent_id)
    bad = sorted(k for k, r in tracker.children(parent_id).items() if r.info.status == "FAILED")
    return runner.publish(study, profile_name, tracker, parent_id, bad=bad, wall_s=wall_s)


def close_lost_trials(tracker: Any, parent_id: str) -> None:
    """Children whose trial no Ray experiment holds any more (sampled after the last saved state when the
    driver was killed; Tune re-samples in their place) end KILLED, tagged, and stay out of the tables."""
    for key, run in tracker.children(parent_id).items():
        if run.info.status not in ("FINISHED", "FAILED", "KILLED"):
            log.warning("%s: its trial was lost with the killed driver; marked KILLED", key)
            tracker.set_tags(run.info.run_id, {"harness.lost": "1"})
            tracker.finish(run.info.run_id, "KILLED")


# ----------------------------------------------------------------------------- outputs, from MLflow only


def _param(text: str | None) -> Any:
    """A child's param back to its value (the tracker writes non-strings as JSON)."""
    if text is None:
        return None
    try:
        return json.loads(text)
    except (TypeError, ValueError):
        return text


def trial_frame(study: Study, runs: dict[str, Any]) -> pd.DataFrame:
    """One line per child run: its sample (raw and decoded), GFLOPs, state and accuracy."""
    search = study.search
    _, size = flops_input(study)
    lines = []
    for t in runs["trials"]:
        p, m, tags = t["params"], t["metrics"], t["tags"]
        values = {k: _param(p.get(f"recipe.{k}" if k in Recipe.model_fields else f"row.{k}")) for k in search.space}
        raw = {k.removeprefix("search."): _param(v) for k, v in p.items() if k.startswith("search.")}
        history = t["val_top1_history"]
        pruned = tags.get("harness.pruned") == "flops"
        epochs = int(m.get("epoch", 0))
        trained = t["status"] == "FINISHED" and not pruned and epochs > 0
        lines.append({
            "trial": int(tags.get("harness.search_trial", -1)), "key": t["key"], "status": t["status"],
            **values, "gflops": m.get(f"profile_gflops_{size}"), "params_m": m.get("profile_params", float("nan")) / 1e6,
            "epochs": epochs, "max_epochs": int(_param(p.get("recipe.epochs")) or 0),
            "top1": m.get("val_top1") if trained else None, "top5": m.get("val_top5") if trained else None,
            "best_top1": max(history.values()) if trained and history else None,
            "objective": m.get(search.metric) if trained else None,
            "pruned": pruned, "stopped_early": "harness.stopped_early" in tags, "lost": "harness.lost" in tags,
            "trained": trained, "raw": raw})
    frame = pd.DataFrame(lines)
    if len(frame):
        frame["complete"] = frame["trained"] & (frame["epochs"] >= frame["max_epochs"])
        frame["pareto"] = pareto_mask(frame)
        frame = frame.sort_values("trial").reset_index(drop=True)
    return frame


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
    ref = study.search.reference
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

    dists = distributions(study.search)
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


def _evaluator(study: Study):
    from optuna.importance import FanovaImportanceEvaluator

    # fANOVA (a random forest, seeded) over PED-ANOVA (Optuna's default): PED-ANOVA compares the top 10%
    # of trials with the rest, one or two trials in a 16-sample search.
    return FanovaImportanceEvaluator(seed=study.search.seed)


def display(study: Study, frame: pd.DataFrame) -> pd.DataFrame:
    _, size = flops_input(study)
    rows = []
    for _, r in frame.iterrows():
        d = {"trial": f"#{r['trial']}"}
        d.update({k: _fmt(r[k]) if r[k] is not None else "-" for k in study.search.space})
        d[f"GFLOPs@{size}"] = "-" if pd.isna(r["gflops"]) else f"{r['gflops']:.2f}"
        d["epochs"] = f"{r['epochs']}/{r['max_epochs']}"
        d["top-1 last"] = "-" if pd.isna(r["top1"]) else f"{r['top1']:.1f}"
        d["top-1 best epoch"] = "-" if pd.isna(r["best_top1"]) else f"{r['best_top1']:.1f}"
        d["Pareto"] = "✓" if r["pareto"] else ""
        d["note"] = ("over FLOPs budget, not trained" if r["pruned"] else
                     f"ASHA stopped it after epoch {r['epochs']}" if r["stopped_early"] else
                     r["status"].lower() if r["status"] != "FINISHED" else "")
        rows.append(d)
    return pd.DataFrame(rows)


def render(study: Study, profile: str, runs: dict[str, Any], frame: pd.DataFrame,
           imp: dict[str, float]) -> str:
    """The markdown report."""
    from datetime import datetime, timezone

    search, p = study.search, runs["parent"]
    frames, size = flops_input(study)
    when = datetime.fromtimestamp((p["end_time"] or p["start_time"]) / 1000, tz=timezone.utc)
    trained = frame[frame["trained"]] if len(frame) else frame
    # as successive halving ranks: how far ASHA let a trial train first, then its value there
    ranked = trained.sort_values(["epochs", "objective"], ascending=False) if len(trained) else trained
    top = ranked.head(search.top_k)
    n_pruned = int(frame["pruned"].sum()) if len(frame) else 0
    n_early = int(frame["stopped_early"].sum()) if len(frame) else 0
    wall = p["tags"].get("harness.wall_s")
    lines = [
        f"# {study.name}: search over {', '.join(search.space)}", "",
        f"{study.name}: profile {profile}, {p['params'].get('sampler', '')}; "
        f"{len(frame)} of {p['params'].get('num_samples', '?')} samples in MLflow, "
        f"{p['params'].get('max_concurrent', '?')} at a time; {when:%Y-%m-%d %H:%M UTC}, "
        f"commit {p['tags'].get('harness.git_commit', 'unknown')} (MLflow parent run {p['run_id']}, {p['status']})"
        + (f"; wall time {float(wall):.0f} s" if wall else "") + ".", "",
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
                  + ", ".join(f"{k}={_fmt(best[k])}" for k in search.space)
                  + f": {search.metric} {best['objective']:.1f} after {best['epochs']} epochs, "
                    f"{best['gflops']:.2f} GFLOPs.", ""]
    if imp:
        lines += ["Parameter importance for " + search.metric + " (Optuna, fANOVA over the trained trials): "
                  + ", ".join(f"{k} {v:.2f}" for k, v in imp.items()) + ".", ""]
    lines += [f"Figures: `{study.name}_pareto.png`, `{study.name}_importance.png`; every trial: `{study.name}.csv`. "
              "A trial's top-1 is its last epoch's; trials ASHA stopped show theirs at that epoch and stay off "
              "the front. Under the laptop profile (synthetic data) only the ordering of configurations means "
              "anything, not the values."]
    return "\n".join(lines) + "\n"


def paper_choice(study: Study, frame: pd.DataFrame, runs: dict[str, Any]) -> list[str]:
    """Where the paper's choice landed: its trials, on the front or what dominates it."""
    ref = study.search.reference
    if not ref:
        return ["(search.reference not given)"]
    gf = runs["parent"]["metrics"].get(REFERENCE_GFLOPS) if "metrics" in runs["parent"] else None
    name = ", ".join(f"{k}={_fmt(v)}" for k, v in ref.items())
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
        out.append(f"Trial #{r['trial']} ({', '.join(f'{k}={_fmt(r[k])}' for k in study.search.space)}): "
                   f"top-1 {r['top1']:.1f} after {r['epochs']} epochs; {where}.")
    return out


def plot_pareto(study: Study, frame: pd.DataFrame, ref_gflops: float | None, path: Path, title: str) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from harness.tables import write_atomic

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
    if study.search.flops_budget is not None:
        ax.axvline(study.search.flops_budget, color="black", linestyle=":", label="FLOPs budget")
    ax.set_xlabel(f"GFLOPs per clip at {size}px, paper backbone")
    ax.set_ylabel(f"{study.search.metric}, last epoch (%)")
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

    from harness.tables import write_atomic

    if imp:
        with warnings.catch_warnings():  # optuna.visualization.matplotlib is marked experimental
            warnings.simplefilter("ignore")
            ax = optuna.visualization.matplotlib.plot_param_importances(
                ot, evaluator=_evaluator(study), target_name=study.search.metric)
        fig = ax.figure
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


def write(study: Study, profile: str, tracker: Any, *, parent_id: str | None = None,
          out_dir: str | Path = "results") -> dict[str, Path]:
    """Read the search's child runs from MLflow and write ``<out_dir>/<study>{.md,.csv,_pareto.png,_importance.png}``."""
    from harness.tables import write_atomic

    runs = tracker.read_study(study.name, profile, parent_id)
    runs["parent"]["metrics"] = dict(tracker.client.get_run(runs["parent"]["run_id"]).data.metrics)
    frame = trial_frame(study, runs)
    ot, imp = importances(study, frame)
    out = Path(out_dir)
    title = f"{study.name} ({profile}), parent run {runs['parent']['run_id'][:8]}"
    paths = {"md": write_atomic(render(study, profile, runs, frame, imp), out / f"{study.name}.md")}
    csv = frame.drop(columns=["raw"]) if len(frame) else frame
    paths["csv"] = write_atomic(csv.to_csv(index=False), out / f"{study.name}.csv")
    paths["pareto"] = plot_pareto(study, frame, runs["parent"]["metrics"].get(REFERENCE_GFLOPS),
                                  out / f"{study.name}_pareto.png", title)
    paths["importance"] = plot_importance(study, ot, imp, out / f"{study.name}_importance.png", title)
    return paths
