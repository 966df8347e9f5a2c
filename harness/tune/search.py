"""A search: Optuna (through Ray Tune's ``OptunaSearch``) samples each trial when a slot frees.

:class:`TrialSpecSearcher` turns a sample into the same :class:`harness.trial.TrialSpec`
a table trial has, so the trainable and the MLflow callback serve both. Single
objective: TPE with ASHA early stopping by epoch; multi-objective (top-1 up,
GFLOPs down): NSGA-II, every trial trains all epochs.
"""
from __future__ import annotations

import logging
import os
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from ray import tune
from ray.tune.search import ConcurrencyLimiter, Searcher

from harness.config import Resources, Search, SearchBudget
from harness.trial import TrialSpec
from harness.tune import ddp
from harness.tune.callback import MlflowCallback
from harness.tune.experiment import TRIAL, entry, run_config, spec_of, trial_dirname, trial_name
from harness.tune.fitting import PRUNED_FLOPS
from harness.tune.trainable import trainable

log = logging.getLogger(__name__)

MakeSpec = Callable[[str, dict[str, Any], int], TrialSpec]  # (Ray trial id, Optuna's params, sample number)


class TrialSpecSearcher(Searcher):
    """Wraps ``OptunaSearch``: a sample becomes a trial spec, and Optuna is told one value per trial.

    ``make_spec(trial_id, params, number)`` (``harness.study.search.TrialMaker``) resolves
    Optuna's params into a spec with the configuration's ``gflops`` and whether it
    is ``over_budget``. What Optuna is told when a trial ends: the last epoch's
    ``metric`` (also for a trial ASHA stopped early: the value at its last rung),
    and ``gflops`` as the second objective in multi-objective mode. A trial over
    the FLOPs budget was never trained; it is told ``worst`` (top-1 0), so TPE puts
    its region among the bad ones and NSGA-II ranks it behind every trained one.

    The state (counter, last values, GFLOPs) is saved with the experiment beside
    OptunaSearch's own (``get_state``; Tune walks wrappers by ``.searcher``), so
    ``Tuner.restore`` brings back both the Optuna study and this bookkeeping.
    """

    def __init__(self, searcher: Searcher, make_spec: MakeSpec, *, metric: str, objectives: Sequence[str],
                 worst: float) -> None:
        self.searcher = searcher
        self.make_spec = make_spec
        self.objective_metric, self.objectives, self.worst = metric, list(objectives), worst
        self.count = 0
        self.last: dict[str, float] = {}
        self.gflops: dict[str, float] = {}
        super().__init__(metric=searcher.metric, mode=searcher.mode)

    def set_search_properties(self, metric: str | None, mode: str | None, config: dict[str, Any],
                              **spec: Any) -> bool:
        return bool(self.searcher.set_search_properties(metric, mode, config, **spec))

    def suggest(self, trial_id: str) -> dict | None:
        params = self.searcher.suggest(trial_id)
        if params is None or params == Searcher.FINISHED:
            return params
        self.count += 1
        spec = self.make_spec(trial_id, params, self.count)
        self.gflops[trial_id] = spec.gflops if spec.gflops is not None else float("nan")
        return {**params, TRIAL: entry(spec)}

    def on_trial_result(self, trial_id: str, result: dict) -> None:
        if self.objective_metric in result:  # epoch results; the closing summary and a pruned report carry none
            self.last[trial_id] = result[self.objective_metric]
            self.searcher.on_trial_result(trial_id, result)

    def on_trial_complete(self, trial_id: str, result: dict | None = None, error: bool = False) -> None:
        value = self.worst if (result or {}).get(PRUNED_FLOPS) else self.last.get(trial_id)
        told = None
        if value is not None and not error:
            told = {self.objective_metric: value, "gflops": self.gflops.get(trial_id)}
            told = {k: told[k] for k in self.objectives}
        self.searcher.on_trial_complete(trial_id, result=told, error=error)
        self.last.pop(trial_id, None)

    def get_state(self) -> dict:
        return {"count": self.count, "last": dict(self.last), "gflops": dict(self.gflops)}

    def set_state(self, state: dict) -> None:
        self.count, self.last, self.gflops = state["count"], dict(state["last"]), dict(state["gflops"])


def optuna_searcher(space: Mapping[str, Any], *, metric: str, multi_objective: bool, seed: int,
                    startup_trials: int, population_size: int) -> Searcher:
    """Ray Tune's OptunaSearch over Optuna distributions: TPE (seeded), or NSGA-II on (metric, gflops)."""
    import optuna
    from ray.tune.search.optuna import OptunaSearch

    sampler: optuna.samplers.BaseSampler
    if multi_objective:
        sampler = optuna.samplers.NSGAIISampler(population_size=population_size, seed=seed)
        return OptunaSearch(dict(space), metric=[metric, "gflops"], mode=["max", "min"], sampler=sampler)
    # constant_liar: a running trial counts as a bad result, so concurrent trials are not sampled alike
    sampler = optuna.samplers.TPESampler(seed=seed, n_startup_trials=startup_trials, constant_liar=True)
    return OptunaSearch(dict(space), metric=metric, mode="max", sampler=sampler)


def search_algorithm(space: Mapping[str, Any], make_spec: MakeSpec, *, metric: str, multi_objective: bool, seed: int,
                     startup_trials: int, population_size: int, max_concurrent: int) -> Searcher:
    """OptunaSearch wrapped by :class:`TrialSpecSearcher` and a ConcurrencyLimiter.

    The limiter matters: without it Tune asks for every sample at once (they
    queue as PENDING), and TPE would choose them all before any result came back.
    """
    inner = optuna_searcher(space, metric=metric, multi_objective=multi_objective, seed=seed,
                            startup_trials=startup_trials, population_size=population_size)
    objectives = [metric, "gflops"] if multi_objective else [metric]
    wrapped = TrialSpecSearcher(inner, make_spec, metric=metric, objectives=objectives, worst=0.0)
    return ConcurrencyLimiter(wrapped, max_concurrent=max_concurrent)


def run_search(space: Mapping[str, Any], make_spec: MakeSpec, *, search: Search, budget: SearchBudget, epochs: int,
               experiment: str, resources: Resources, callback: MlflowCallback, max_concurrent: int,
               max_failures: int = 2, keep: int | None = 2, restore: bool = False) -> dict[str, str]:
    """Run (or resume) a search with Ray Tune; returns Tune's final state per trial key.

    Single objective: ASHA on ``search.metric`` by epoch (``budget.grace_period``
    epochs, then the top ``1/reduction_factor`` at each rung go on, up to
    ``epochs``). Multi-objective: FIFO, every trial trains all epochs.
    ``restore=True``: ``Tuner.restore`` of the experiment; the searcher (Optuna's
    study, sampler RNG, this harness's bookkeeping) comes back from the saved
    experiment state, unfinished trials resume from their last checkpoint.
    ``keep``: checkpoints kept per trial (``experiment.checkpoints_to_keep``).
    """
    from ray.tune.schedulers import ASHAScheduler, FIFOScheduler

    # A trial's closing summary (best/last top-1) carries no per-epoch metric; ASHA skips results without
    # its metric, and TrialSpecSearcher tells Optuna the last epoch's value itself. Tune's strict check
    # would otherwise reject the summary.
    os.environ["TUNE_DISABLE_STRICT_METRIC_CHECKING"] = "1"
    request, data_parallel = ddp.trial_resources(resources, experiment=experiment, max_failures=max_failures)
    wrapped = tune.with_resources(trainable, request)
    if restore:
        log.info("restoring Ray experiment %s (Optuna's study comes back with it)", experiment)
        tuner = tune.Tuner.restore(experiment, trainable=wrapped, resume_unfinished=True,
                                   resume_errored=True, restart_errored=False)
    else:
        scheduler = FIFOScheduler() if search.multi_objective else ASHAScheduler(
            time_attr="epoch", metric=search.metric, mode="max", max_t=epochs, grace_period=budget.grace_period,
            reduction_factor=budget.reduction_factor, stop_last_trials=False)  # let a trial send its summary
        algorithm = search_algorithm(space, make_spec, metric=search.metric, multi_objective=search.multi_objective,
                                     seed=search.seed, startup_trials=search.startup_trials,
                                     population_size=search.population_size, max_concurrent=max_concurrent)
        tuner = tune.Tuner(
            wrapped,
            param_space=dict(data_parallel),  # constants every sample joins (a data-parallel trial's workers)
            tune_config=tune.TuneConfig(search_alg=algorithm, scheduler=scheduler, num_samples=budget.num_samples,
                                        trial_name_creator=trial_name, trial_dirname_creator=trial_dirname,
                                        # not reused as in tune.grid: with reuse, one search resumed after a
                                        # SIGKILL trained a sample twice (test_search's resume test, once)
                                        reuse_actors=False),
            run_config=run_config(experiment, callback, max_failures=max_failures, keep=keep),
        )
    grid = tuner.fit()
    return {spec_of(r.config).key if r.config and TRIAL in r.config else "?": "ERROR" if r.error else "TERMINATED"
            for r in (grid[i] for i in range(len(grid)))}
