"""The plan of a search: Optuna samples configurations of the study's one row while the study runs.

Each sample becomes a :class:`harness.trial.TrialSpec` in the driver
(:class:`TrialMaker`): the resolved train config, and the configuration's
params and GFLOPs on the paper backbone at the paper profile's input
(``harness.profile``; 1-3 s a new configuration, cached). Over
``flops_budget`` the trial reports at once without training and Optuna is told
top-1 0 (``harness.tune.search.TrialSpecSearcher``), so it learns to avoid the
region; the trial still counts as one of ``num_samples``. A trial's key is
``<study>/<profile>/<Ray trial id>``: stable across ``--resume`` and unique per
sample, so a child run is never shared.

What it gives up: ASHA ranks by accuracy alone, so a cheap configuration it
stops early is plotted at its last epoch but kept off the Pareto front (which
holds only trials that trained every epoch); multi-objective mode runs without
early stopping for that reason. A trial's top-1 is its last epoch's.
"""
from __future__ import annotations

import json
import logging
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

import pandas as pd

from harness import names
from harness.config import Data, Profile, Row, Search, SearchBudget, Study, TrainConfig, trial_config
from harness.profile import profile_row
from harness.space import base_row, decode, distributions, flops_input, fmt, label, sampled_row
from harness.study.plan import Launch, parent_params, profile_metrics, with_profile
from harness.trial import TrialSpec, flatten

log = logging.getLogger(__name__)


def train_config(study: Study, profile_name: str, profile: Profile, values: dict[str, Any], key: str) -> TrainConfig:
    """The resolved trial of one sample: :func:`harness.config.trial_config` of the sampled row."""
    name, _ = base_row(study)
    resolved = with_profile(study.model_copy(update={"rows": {name: sampled_row(study, values)}}), profile_name,
                            profile)
    cfg = trial_config(resolved, profile_name, name, study.search.seed if study.search else 0)
    return cfg.model_copy(update={"name": key})


def gflops_of(study: Study, row: Row) -> tuple[float, dict[str, Any]]:
    """GFLOPs of a row on its paper backbone at :func:`harness.space.flops_input`, and the whole profile."""
    frames, size = flops_input(study)
    prof = profile_row(row, num_classes=study.num_classes, frames=frames, sizes=[size])
    return float(prof["gflops"][str(size)]), prof


def reference_gflops(study: Study) -> float | None:
    """GFLOPs of the paper's choice (``search.reference``) on the base row; None if none is given."""
    if study.search is None or not study.search.reference:
        return None
    return gflops_of(study, sampled_row(study, study.search.reference))[0]


@dataclass(frozen=True)
class TrialMaker:
    """Turns Optuna's params into a trial spec, in the driver; pickled with Tune's searcher state."""

    study: Study
    search: Search
    profile_name: str
    profile: Profile
    trace: dict[str, str]

    def __call__(self, trial_id: str, params: dict[str, Any], number: int) -> TrialSpec:
        search = self.search
        values = decode(search, params)
        key = f"{self.study.name}/{self.profile_name}/{trial_id}"
        cfg = train_config(self.study, self.profile_name, self.profile, values, key)
        gflops, prof = gflops_of(self.study, cfg.row)
        budget = search.flops_budget
        over = (f"{gflops:.2f} GFLOPs is over the budget of {budget:g}; not trained"
                if budget is not None and gflops > budget else "")
        name = label(search, values, number)
        log.info("sampled %s: %.2f GFLOPs%s", name, gflops, " (over budget: not trained)" if over else "")
        return TrialSpec(key=key, study=self.study.name, profile=self.profile_name, row=base_row(self.study)[0],
                         seed=search.seed, label=name, config=cfg, sample=number, search_params=params,
                         metrics=profile_metrics(prof), trace=self.trace, gflops=gflops, over_budget=over)


@dataclass
class SearchPlan:
    """A search's budget under one profile; its trials are sampled while it runs."""

    study: Study
    profile_name: str
    profile: Profile
    search: Search
    profiles: dict[str, dict[str, Any]] = field(default_factory=dict)  # a sample is profiled when Optuna makes it

    @property
    def trials(self) -> list[TrialSpec]:
        return []

    @property
    def total(self) -> int:
        return self.budget.num_samples

    @property
    def budget(self) -> SearchBudget:
        return self.search.budget[self.profile_name]

    def base_data(self) -> Data:
        return train_config(self.study, self.profile_name, self.profile, {}, "base").data

    def data(self) -> list[Data]:
        return [self.base_data()]  # every sample reads the base row's data

    def parent_params(self) -> dict[str, Any]:
        search = self.search
        return {**parent_params(self.study, self.profile_name, self.profile),
                "num_samples": self.budget.num_samples, "max_concurrent": self.budget.max_concurrent,
                "sampler": sampler_text(self.study, self.profile_name),
                **flatten(search.model_dump(mode="json", exclude={"space", "budget", "reference"}), "search."),
                "search.space": json.dumps(search.model_dump(mode="json")["space"]),
                "search.reference": json.dumps(search.reference)}

    def parent_metrics(self) -> dict[str, float]:
        ref = reference_gflops(self.study)
        return {} if ref is None else {names.REFERENCE_GFLOPS: ref}

    def describe(self, max_concurrent: int | None) -> str:
        return describe(self, max_concurrent)

    def add_seeds(self, extra: Mapping[str, int]) -> list[TrialSpec]:
        raise ValueError("--until-resolved adds seeds to a table's rows; a search samples configurations")

    def cover(self, keys: Iterable[str]) -> None:
        """A search's trials are sampled; nothing beyond them to take in."""

    def launch(self, how: Launch) -> None:
        from harness.tune.experiment import checkpoints_to_keep
        from harness.tune.search import run_search

        maker = TrialMaker(self.study, self.search, self.profile_name, self.profile, how.trace(self.base_data()))
        log.info("%s: %s; %d samples", self.study.name, sampler_text(self.study, self.profile_name),
                 self.budget.num_samples)
        run_search(distributions(self.search), maker, search=self.search, budget=self.budget,
                   epochs=self.profile.recipe.epochs, experiment=how.experiment, resources=self.profile.resources,
                   callback=how.callback, max_concurrent=how.max_concurrent or self.budget.max_concurrent,
                   keep=checkpoints_to_keep(self.profile.backbone.arch), restore=how.restore)


def plan(study: Study, profile_name: str, profile: Profile) -> SearchPlan:
    import optuna

    if study.search is None:
        raise ValueError(f"study {study.name!r} has no search: section; a search needs one")
    optuna.logging.set_verbosity(optuna.logging.WARNING)  # not "A new study created in memory" per study
    return SearchPlan(study, profile_name, profile, study.search)


def sampler_text(study: Study, profile_name: str) -> str:
    s = study.search
    if s is None:
        return ""
    b = s.budget[profile_name]
    epochs = study.profiles[profile_name].recipe.epochs
    if s.multi_objective:
        return (f"NSGA-II (seed {s.seed}, generations of {s.population_size}) on ({s.metric} max, GFLOPs min), "
                f"FIFO: every trial trains {epochs} epochs")
    return (f"TPE (seed {s.seed}, {s.startup_trials} random startup samples) on {s.metric} (max), "
            f"ASHA (grace {b.grace_period} epochs, top 1/{b.reduction_factor:g} go on at each rung, max {epochs})")


def describe(p: SearchPlan, max_concurrent: int | None) -> str:
    study, profile, search = p.study, p.profile, p.search
    frames, size = flops_input(study)
    ref = reference_gflops(study)
    space = pd.DataFrame([{"Optuna parameter": k, "distribution": repr(d)} for k, d in distributions(search).items()])
    r, d = profile.recipe, profile.data
    return "\n".join([
        f"{study.name}: search of {len(search.space)} keys of row {base_row(study)[0]!r} "
        f"({base_row(study)[1].block}), profile {p.profile_name}",
        f"{sampler_text(study, p.profile_name)}; {p.budget.num_samples} samples, "
        f"{max_concurrent or p.budget.max_concurrent} at a time",
        f"backbone {profile.backbone.arch}, data {d.format} at {d.root} ({d.frames} frames, {d.size}px), "
        f"{r.epochs} epochs, batch {r.batch_size}",
        f"GFLOPs at {frames} frames x {size}px on the paper backbone; budget "
        f"{search.flops_budget if search.flops_budget is not None else 'none'}; the paper's choice "
        f"({', '.join(f'{k}={fmt(v)}' for k, v in search.reference.items()) or 'not given'}): "
        f"{'-' if ref is None else f'{ref:.2f}'} GFLOPs", "", space.to_markdown(index=False)])
