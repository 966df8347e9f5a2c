"""The driver side of every trial: its MLflow child run, written from Tune's callbacks only.

The workers never open the tracking store, so there is one writer. The
callback holds only the store URI and the parent run id, so it pickles into
Tune's experiment state and is rebuilt from the store on ``Tuner.restore``.
A trial's child run is created when the trial starts (its start is the
trial's own), reused when Ray re-runs the trial, and closed once.
"""
from __future__ import annotations

import json
import logging
import time
from typing import Any

import yaml
from ray import tune
from ray.tune.result import AUTO_RESULT_KEYS

from harness import names
from harness.errors import last_line
from harness.tracking import DONE, NewChild, Tracker
from harness.train import PREDICTIONS_KEY
from harness.trial import TrialSpec
from harness.tune.ddp import BACKEND
from harness.tune.experiment import spec_of, trial_name
from harness.tune.fitting import FINAL, FUSION_MATRICES, NODE_ID, PRETRAINED, PRUNED_FLOPS, REASON, STATUS, SUMMARY

log = logging.getLogger(__name__)

# Result keys that are not metrics: Tune's own, and what the trial's reports carry besides numbers.
NOT_METRICS = set(AUTO_RESULT_KEYS) | {
    "done", "trial_id", "experiment_tag", "should_checkpoint", "iterations_since_restore",
    "time_since_restore", "timesteps_since_restore", "warmup_time", "pid", "episodes_total",
    "timesteps_total", FINAL, NODE_ID, STATUS, REASON, FUSION_MATRICES, PRETRAINED, PREDICTIONS_KEY, BACKEND,
}


class MlflowCallback(tune.Callback):
    """Writes each trial's epochs, predictions and summary to its MLflow child run; runs in the driver only."""

    def __init__(self, uri: str, parent_id: str, total: int) -> None:
        self.uri, self.parent_id, self.total = uri, parent_id, total
        self._reset()

    def _reset(self) -> None:
        self._tracker: Tracker | None = None
        self._ids: dict[str, str] = {}
        self._final: dict[str, dict[str, Any]] = {}
        self._done: set[str] = set()
        self._start = time.monotonic()

    def __getstate__(self) -> dict[str, Any]:
        return {"uri": self.uri, "parent_id": self.parent_id, "total": self.total}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)
        self._reset()

    @property
    def tracker(self) -> Tracker:
        if self._tracker is None:
            self._tracker = Tracker(self.uri)
            children = self._tracker.children(self.parent_id)
            self._ids = {k: r.run_id for k, r in children.items()}
            self._done = {k for k, r in children.items() if r.status in DONE}
        return self._tracker

    def _run_id(self, trial: Any) -> tuple[TrialSpec, str]:
        """The trial's spec and child run, created (with its ``trial.yaml``) when the trial first shows up."""
        spec = spec_of(trial.config)
        tracker = self.tracker  # loads the children already in the store
        if spec.key not in self._ids:
            self._ids.update(tracker.ensure_children(self.parent_id, [NewChild.of(spec)]))
            tracker.log_text(self._ids[spec.key], yaml.safe_dump(spec.config.model_dump(mode="json"),
                                                                 sort_keys=False), names.TRIAL_YAML)
        return spec, self._ids[spec.key]

    def on_trial_start(self, iteration: int, trials: list[Any], trial: Any, **info: Any) -> None:
        self._run_id(trial)
        log.info("start  %-24s (%d/%d done)", trial_name(trial), len(self._done), self.total)

    def on_trial_result(self, iteration: int, trials: list[Any], trial: Any, result: dict[str, Any],
                        **info: Any) -> None:
        spec, run_id = self._run_id(trial)
        if result.get(FINAL):
            self._final[spec.key] = dict(result)
            return
        if names.EPOCH not in result:
            return
        tracker = self.tracker
        if tracker.status(run_id) in DONE or int(result[names.EPOCH]) <= tracker.last_epoch(run_id):
            log.debug("%s epoch %s already in MLflow; not logged again", spec.key, result[names.EPOCH])
            return
        if result.get(PREDICTIONS_KEY):  # before the epoch: a kill in between logs both again, not half
            tracker.log_text(run_id, result[PREDICTIONS_KEY], names.PREDICTIONS)
        tracker.log_epoch(run_id, {k: v for k, v in result.items() if k not in NOT_METRICS})
        log.info("epoch  %-24s %2d/%d  val top-1 %5.1f  loss %.3f  %.0f clips/s  [%d/%d trials done, %.0f s]",
                 trial_name(trial), int(result[names.EPOCH]), spec.epochs, result.get(names.VAL_TOP1, float("nan")),
                 result.get(names.TRAIN_LOSS, float("nan")), result.get(names.CLIPS_PER_S, 0.0),
                 len(self._done), self.total, time.monotonic() - self._start)

    def on_trial_complete(self, iteration: int, trials: list[Any], trial: Any, **info: Any) -> None:
        spec, run_id = self._run_id(trial)
        final = self._final.pop(spec.key, None) or {}
        summary = {k: final.get(k) for k in SUMMARY}
        tags = {names.NODE_ID: final.get(NODE_ID, ""), names.TRIAL_ID: trial.trial_id}
        if final.get(names.WORLD_SIZE):  # a data-parallel trial: rank 0's node above
            tags.update({names.WORLD_SIZE_TAG: final[names.WORLD_SIZE], names.BACKEND: final.get(BACKEND, "")})
        if final.get(REASON):
            tags[names.REASON] = str(final[REASON])[:5000]
        if final.get(PRUNED_FLOPS):
            tags[names.PRUNED] = "flops"
        elif not final and self.tracker.last_epoch(run_id) < spec.epochs:  # ASHA stops a trial before its summary
            tags[names.STOPPED_EARLY] = str(self.tracker.last_epoch(run_id))
        artifacts = {names.FUSION_MATRICES: json.loads(final[FUSION_MATRICES])} if final.get(FUSION_MATRICES) else {}
        if final.get(PRETRAINED):  # which ImageNet file the trial loaded, and what of it did not fit
            artifacts[names.PRETRAINED] = json.loads(final[PRETRAINED])
        if self.tracker.finish_child(run_id, final.get(STATUS) or "FINISHED", summary=summary, tags=tags,
                                     artifacts=artifacts):
            self._done.add(spec.key)
            failed = final.get(STATUS) == "FAILED" and final.get(REASON)
            log.info("done   %-24s %s  best %.1f  last %.1f  [%d/%d trials done]%s", trial_name(trial),
                     final.get(STATUS) or "FINISHED", _num(summary[names.BEST_TOP1]), _num(summary[names.LAST_TOP1]),
                     len(self._done), self.total, f": {final[REASON]}" if failed else "")

    def on_trial_error(self, iteration: int, trials: list[Any], trial: Any, **info: Any) -> None:
        spec, run_id = self._run_id(trial)
        try:
            reason = trial.get_error() or ""
        except Exception:  # noqa: BLE001 - the reason is a courtesy; the status is what matters
            reason = ""
        reason = reason or f"the trial raised; see {trial.path}"
        self.tracker.finish_child(run_id, "FAILED", summary={},
                                  tags={names.ERROR: "1", names.REASON: str(reason)[-5000:]})
        self._done.add(spec.key)
        log.error("error  %-24s after %d attempts: %s", trial_name(trial), trial.num_failures, last_line(str(reason)))


def _num(v: Any) -> float:
    return float("nan") if v is None else float(v)
