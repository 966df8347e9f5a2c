"""Ray Tune: every trial of a study is one Tune trial. Ray is imported here and nowhere else.

    harness run studies/table1.yaml                       # local Ray, one trial per free core
    harness run studies/table1.yaml --address HOST:6379   # an existing cluster (or RAY_ADDRESS)
    harness run studies/table1.yaml --resume              # after a crash or a SIGKILL of the driver

Modules, one job each:

- ``session``: join a cluster or start a local Ray, and stop only what we started;
- ``trainable``: the Tune trainable, :func:`harness.train.fit` for one :class:`harness.trial.TrialSpec`;
- ``ddp``: data-parallel trials (a Tune trial that drives a Ray Train run) and a quick DDP check;
- ``callback``: the driver-side callback that writes each trial to its MLflow child run;
- ``experiment``: names, storage, retention and restore of a Tune experiment;
- ``grid``: a fixed list of trials (tables, probes);
- ``search``: Optuna samples trials while the study runs.

Tune saves its experiment state every ``TUNE_GLOBAL_CHECKPOINT_S`` seconds (1 s
here unless set; Ray's default lags ~8 s), and the tracking side is keyed by
trial, so a trial Ray re-runs after a crash updates its own child run.

On a cluster of more than one node, the experiment's storage must be a folder
every node sees (NFS) or an object store URI (``harness run --storage``;
``harness.preflight.check_storage`` refuses a local folder a node does not see
before any trial), and every node needs this package installed in the same
environment, with the data at the same path (docs/paper-profile.md).
"""
import os

# Experiment state current within ~1 s of a report, so a driver killed mid-study resumes
# finished trials as finished (see docs: tools-notes). Set before Ray reads it; users may override.
os.environ.setdefault("TUNE_GLOBAL_CHECKPOINT_S", "1")
os.environ.setdefault("TUNE_WARN_EXCESSIVE_EXPERIMENT_CHECKPOINT_SYNC_THRESHOLD_S", "0")
os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")  # no network here
os.environ.setdefault("RAY_DEDUP_LOGS", "1")
os.environ.setdefault("RAY_TRAIN_V2_ENABLED", "1")  # the Tune-drives-Train pattern of tune.ddp (Ray 2.60's default)
# Ctrl-C is the engine's (harness.study.engine.interrupted: parent KILLED, exit 130, one line). Tune's own SIGINT
# handler would swallow it: it stops the loop, prints its `Tuner.restore(path=..., trainable=...)` hint and
# returns normally, so the engine would see a run that merely left trials unfinished. Forced, not a default.
os.environ["TUNE_DISABLE_SIGINT_HANDLER"] = "1"
