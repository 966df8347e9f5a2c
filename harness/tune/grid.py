"""A fixed list of trials (a table's rows x seeds, a probe's regimes too) run as one Tune experiment."""
from __future__ import annotations

import logging
from collections.abc import Sequence

from ray import tune

from harness.config import Resources
from harness.trial import TrialSpec
from harness.tune import ddp
from harness.tune.callback import MlflowCallback
from harness.tune.experiment import (TRIAL, checkpoints_to_keep, entry, run_config, spec_of, trial_dirname,
                                     trial_name)
from harness.tune.trainable import trainable

log = logging.getLogger(__name__)


def run_trials(specs: Sequence[TrialSpec], *, experiment: str, resources: Resources, callback: MlflowCallback,
               max_concurrent: int | None = None, max_failures: int = 2, restore: bool = False) -> dict[str, str]:
    """Run (or resume) the trials of a plan with Ray Tune; returns Tune's final state per trial key.

    ``experiment`` is where Tune keeps the experiment (a folder or a URI).
    ``restore=True`` continues it with ``Tuner.restore`` (unfinished and errored
    trials resume from their last checkpoint; finished ones are not run again).
    """
    request, data_parallel = ddp.trial_resources(resources, experiment=experiment, max_failures=max_failures)
    wrapped = tune.with_resources(trainable, request)
    keep = checkpoints_to_keep(specs[0].config.backbone.arch) if specs else 2
    if restore:
        log.info("restoring Ray experiment %s", experiment)
        tuner = tune.Tuner.restore(experiment, trainable=wrapped, resume_unfinished=True,
                                   resume_errored=True, restart_errored=False)
    else:
        if data_parallel and max_concurrent is None:
            max_concurrent = ddp.data_parallel_slots(resources)
        tuner = tune.Tuner(
            wrapped,
            param_space={TRIAL: tune.grid_search([entry(s) for s in specs]), **data_parallel},
            tune_config=tune.TuneConfig(max_concurrent_trials=max_concurrent, trial_name_creator=trial_name,
                                        trial_dirname_creator=trial_dirname,
                                        # one worker process per slot for the whole study: no Python +
                                        # torch start-up per trial (reset() moves it to the trial's folder)
                                        reuse_actors=True),
            run_config=run_config(experiment, callback, max_failures=max_failures, keep=keep),
        )
    grid = tuner.fit()
    return {spec_of(r.config).key if r.config else "?": "ERROR" if r.error else "TERMINATED"
            for r in (grid[i] for i in range(len(grid)))}
