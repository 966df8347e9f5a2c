"""The plan of a table or a probe: every row x seed (x regime), known before any trial runs."""
from __future__ import annotations

import logging
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

import pandas as pd

from harness.config import Data, Profile, Regime, Study, trial_config
from harness.protocol import Protocol
from harness.study.plan import (Launch, lr_origin, parent_params, profile_metrics, profile_rows,
                                profile_sizes, with_profile)
from harness.trial import TrialSpec, grid_key

log = logging.getLogger(__name__)


@dataclass
class GridPlan:
    """Rows x seeds (x regimes), seed-major: all rows of seed 0 first, so a partial run covers the table."""

    study: Study
    profile_name: str
    profile: Profile
    specs: list[TrialSpec] = field(default_factory=list)
    profiles: dict[str, dict[str, Any]] = field(default_factory=dict)  # per row: params and GFLOPs
    sizes: list[int] = field(default_factory=list)

    @property
    def trials(self) -> list[TrialSpec]:
        return self.specs

    @property
    def total(self) -> int:
        return len(self.specs)

    def data(self) -> list[Data]:
        return [t.config.data for t in self.specs]

    def parent_params(self) -> dict[str, Any]:
        return {**parent_params(self.study, self.profile_name, self.profile), "trials": len(self.specs)}

    def parent_metrics(self) -> dict[str, float]:
        return {}

    def describe(self, max_concurrent: int | None) -> str:
        return describe(self, max_concurrent)

    def add_seeds(self, extra: Mapping[str, int]) -> list[TrialSpec]:
        """``extra[row]`` more seeds for each row, numbered on from its last (rows keep sharing seeds, so their
        comparisons stay paired); the new trials join the plan and are returned."""
        if self.study.regimes:
            raise ValueError("--until-resolved adds seeds to a table's rows; a probe's rows x regimes are planned whole")
        have = {row: max((t.seed for t in self.specs if t.row == row), default=-1) + 1 for row in self.study.rows}
        resolved = with_profile(self.study, self.profile_name, self.profile)
        new = [self._spec(resolved, row, seed) for row, n in extra.items() for seed in range(have[row], have[row] + n)]
        self.specs.extend(new)
        return new

    def cover(self, keys: Iterable[str]) -> None:
        """Take in the seeds an earlier ``--until-resolved`` wave added (trial keys beyond the plan's seeds)."""
        last = {row: max(t.seed for t in self.specs if t.row == row) for row in {t.row for t in self.specs}}
        held = dict(last)
        for key in keys:
            study, profile, *middle, seed = key.split("/")
            if (study, profile) == (self.study.name, self.profile_name) and len(middle) == 1 and middle[0] in held:
                held[middle[0]] = max(held[middle[0]], int(seed.removeprefix("seed")))
        extra = {row: held[row] - last[row] for row in held if held[row] > last[row]}
        if extra:
            self.add_seeds(extra)

    def _spec(self, resolved: Study, row: str, seed: int) -> TrialSpec:
        return TrialSpec(key=grid_key(self.study.name, self.profile_name, row, seed), study=self.study.name,
                         profile=self.profile_name, row=row, seed=seed, label=row,
                         config=trial_config(resolved, self.profile_name, row, seed),
                         metrics=profile_metrics(self.profiles[row]))

    def launch(self, how: Launch) -> None:
        from harness.tune.grid import run_trials

        todo = [t.with_trace(how.trace(t.config.data)) for t in self.specs if t.key in how.todo]
        run_trials(todo, experiment=how.experiment, resources=self.profile.resources, callback=how.callback,
                   max_concurrent=how.max_concurrent, restore=how.restore)


def plan(study: Study, profile_name: str, profile: Profile) -> GridPlan:
    """Every row x seed (x regime) of the study under the resolved profile, each with its row's params and
    GFLOPs; a trial's config is :func:`harness.config.trial_config` (the profile's recipe plus the row's keys)."""
    resolved = with_profile(study, profile_name, profile)
    sizes = profile_sizes(study)
    profiles = profile_rows(study, sizes, profile_name)
    regimes: dict[str | None, Regime | None] = {k: v for k, v in (study.regimes or {}).items()} or {None: None}
    specs = []
    for seed in range(profile.seeds):
        for row in study.rows:
            for regime_name, regime in regimes.items():
                cfg = trial_config(resolved, profile_name, row, seed)
                if regime is not None and regime_name is not None:
                    cfg = cfg.model_copy(update={"data": regime.data(cfg.data, regime_name)})
                specs.append(TrialSpec(
                    key=grid_key(study.name, profile_name, row, seed, regime_name), study=study.name,
                    profile=profile_name, row=row, seed=seed, regime=regime_name, config=cfg,
                    label=row if regime_name is None else f"{row}@{regime_name}",
                    metrics=profile_metrics(profiles[row])))
    check_lr_scaling(specs)
    return GridPlan(study, profile_name, profile, specs, profiles, sizes)


def check_lr_scaling(trials: list[TrialSpec]) -> list[str]:
    """Warn, once per distinct recipe, when a batch differs from the recipe's reference batch at an unscaled lr.

    TSM #96: batch 20 at the lr chosen for batch 64 gave 41.6 top-1 against
    45.6. With ``scale_lr`` (the default) the lr follows the batch linearly
    (``Recipe.effective_lr``); with ``scale_lr: false`` it does not, and that
    is worth a warning. Returns the messages logged at WARNING level.
    """
    rows: dict[tuple[int, int, float, bool], list[str]] = {}
    for t in trials:
        r = t.config.recipe
        if r.reference_batch is not None and r.batch_size != r.reference_batch:
            rows.setdefault((r.batch_size, r.reference_batch, r.lr, r.scale_lr), []).append(t.label)
    every = set(t.label for t in trials)
    warnings = []
    for (batch, ref, lr, scaled), labels in rows.items():
        names = "every row" if set(labels) == every and len(every) > 1 else ", ".join(dict.fromkeys(labels))
        if scaled:
            log.info("lr scaled linearly to batch %d: %g x %d/%d = %g (%s)", batch, lr, batch, ref,
                     lr * batch / ref, names)
            continue
        msg = (f"batch {batch} differs from the recipe's reference_batch {ref}, and scale_lr is false: "
               f"the lr stays {lr:g}, chosen for batch {ref}, for {names} (linear scaling would give "
               f"{lr * batch / ref:g}; set recipe.scale_lr: true, or the batch back to {ref})")
        log.warning("%s", msg)
        warnings.append(msg)
    return warnings


def describe(p: GridPlan, max_concurrent: int | None) -> str:
    """The dry run's text: the setting in a few lines, then one line per trial with its costs."""
    study, profile = p.study, p.profile
    rows = []
    for t in p.specs:
        prof = p.profiles[t.row]
        rows.append({"trial": t.key, "block": t.block, "backbone": t.config.backbone.arch,
                     "options": ", ".join(f"{k}={v}" for k, v in t.config.row.options.items()) or "-",
                     "paper params (M)": round(prof["params"] / 1e6, 2), "profile frames": prof.get("frames"),
                     **{f"GFLOPs@{s}": round(prof["gflops"][str(s)], 2) for s in p.sizes}})
    r, d, res = profile.recipe, profile.data, profile.resources
    regimes = f" x {len(study.regimes)} regimes" if study.regimes else ""
    workers = f" per worker x {res.workers} data-parallel workers" if res.workers > 1 else ""
    head = (f"{study.name}: {len(study.rows)} rows{regimes} x {profile.seeds} seeds = {len(p.specs)} trials, "
            f"profile {p.profile_name}\n"
            f"backbone {profile.backbone.arch} (width {profile.backbone.width}), data {d.format} at {d.root} "
            f"({d.frames} frames, {d.size}px; test protocol {Protocol.from_data(d).name}), {r.epochs} epochs, "
            f"batch {r.batch_size}, lr {r.effective_lr:g}{lr_origin(r)} {r.schedule}, "
            f"{r.threads} thread(s)\nper trial: {res.cpu:g} CPU, {res.gpu:g} GPU{workers}; "
            f"concurrency: {max_concurrent or 'as many as the cluster fits'}\n")
    return head + "\n" + pd.DataFrame(rows).to_markdown(index=False)
