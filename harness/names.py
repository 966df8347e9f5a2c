"""Every name the harness writes to MLflow and reads back: tags, params, metrics, artifacts. Defined once.

The trainer names its metrics with these constants, the tracker writes them,
the tables read them; a renamed constant renames all three at once, and a
misspelt one is an ``AttributeError``, not a table that reads ``None``.
Pure constants: importing this module imports nothing else, so the trainer
(which knows nothing of MLflow) can use it.
"""
from __future__ import annotations

import re

# ----------------------------------------------------------------------------- tags: what a run is

KIND = "harness.kind"  # "parent" (one `harness run` invocation) or "trial" (a child run)
PARENT, TRIAL = "parent", "trial"  # the values of KIND
STUDY = "harness.study"  # also an experiment tag: the experiments this harness made
PROFILE = "harness.profile"
TRIAL_KEY = "harness.trial_key"  # <study>/<profile>/<row>[/<regime>]/seed<k>, or <study>/<profile>/<Ray id> (search)
ROW = "harness.row"
LABEL = "harness.label"  # the table line: the row, row@regime, or a search sample's options
SEED = "harness.seed"
BLOCK = "harness.block"
BACKBONE = "harness.backbone"  # the backbone the trial trains
REGIME = "harness.regime"  # probe studies: the train/test condition
SAMPLE = "harness.search_trial"  # search studies: the sample's number, 1-based
COMMIT = "harness.git_commit"  # short HEAD, "+dirty" when the tree had changes
SEEDS = "harness.seeds"  # parent: seeds per row
MACHINE = "harness.machine"  # parent: the driver's CPU, cores, torch build and GPUs (harness.device.describe)
STUDY_FILE = "harness.study_file"
WALL_S = "harness.wall_s"  # parent: seconds of the invocations that ran to their end, summed
RAY_EXPERIMENT = "harness.ray_experiment"  # parent: the Ray Tune experiment folder or URI
INTERRUPTED = "harness.interrupted"  # parent: "1" while a Ctrl-C paused the study
WAVES = "harness.waves"  # parent: JSON list of the seeds --until-resolved added, wave by wave, and why
PROTOCOL = "harness.protocol"  # how top-1 was measured, e.g. 8f-112-1x1 (harness.protocol)
FINGERPRINT = "harness.data_fingerprint"  # one hash of the train and val data
FINGERPRINT_TRAIN = "harness.data_fingerprint.train"
FINGERPRINT_VAL = "harness.data_fingerprint.val"
DECODER = "harness.data_decoder"
ERROR = "harness.error"  # "1": the trial raised (Ray gave up on it); a resume retries it
REASON = "harness.reason"  # why a trial FAILED
NODE_ID = "harness.node_id"
TRIAL_ID = "harness.trial_id"  # Ray Tune's id of the trial
WORLD_SIZE_TAG = "harness.world_size"  # data-parallel trials
BACKEND = "harness.backend"  # gloo / nccl
PRUNED = "harness.pruned"  # "flops": over the search's FLOPs budget, not trained
STOPPED_EARLY = "harness.stopped_early"  # the epoch ASHA stopped the trial after
LOST = "harness.lost"  # "1": its Ray trial was lost with a killed driver (searches); KILLED

# MLflow's own tags
PARENT_ID = "mlflow.parentRunId"
RUN_NAME = "mlflow.runName"
GIT_COMMIT = "mlflow.source.git.commit"
EXPERIMENT_KIND = "mlflow.experimentKind"  # its kind; MLflow 3.17 takes the layout from the link (harness.ui)
SAVED_VIEW = "mlflow.sharedViewState.{key}"  # experiment tag: a runs-page view the UI lists under "Views"

# ----------------------------------------------------------------------------- metrics

EPOCH = "epoch"  # also the step; its latest value says which epochs a child holds
TRAIN_LOSS = "train_loss"
TRAIN_TOP1 = "train_top1"
VAL_LOSS = "val_loss"
VAL_TOP1 = "val_top1"
VAL_TOP5 = "val_top5"
LR = "lr"
CLIPS_PER_S = "clips_per_s"
BEST_TOP1 = "best_top1"  # summary metrics, logged once when a trial ends
LAST_TOP1 = "last_top1"
BEST_EPOCH = "best_epoch"
EPOCHS_DONE = "epochs_done"
NUM_PARAMS = "num_params"  # of the model the trial trained
IR_INTERACTIONS = "ir_interactions"
WORLD_SIZE = "world_size"
PROFILE_PARAMS = "profile_params"  # the row on the paper backbone (harness.profile), logged at creation
PROFILE_GFLOPS = "profile_gflops_{size}"
PROFILE_FRAMES = "profile_frames"  # the frames those GFLOPs are counted at (the paper's setting)
PROFILE_FUSION_PARAMS = "profile_fusion_params"
PROFILE_IR_INTERACTIONS = "profile_ir_interactions"
REFERENCE_GFLOPS = "reference_gflops"  # search parent: GFLOPs of the paper's choice
ROW_TOP1 = "row/{row}/top1"  # parent: a row's mean top-1, so the chart view compares rows
ROW_GFLOPS = "row/{row}/gflops"  # parent: a row's GFLOPs on the paper backbone


def profile_gflops(size: int | str) -> str:
    return PROFILE_GFLOPS.format(size=size)


def row_metric(template: str, row: str) -> str:
    """``ROW_TOP1`` / ``ROW_GFLOPS`` for a row, its name made a valid MLflow metric name (``+`` -> ``_``)."""
    return template.format(row=re.sub(r"[^A-Za-z0-9_\-. /]", "_", row).strip("/"))


# ----------------------------------------------------------------------------- params and artifacts

SEARCH_PARAM = "search.{name}"  # a search child: Optuna's raw value of one parameter
PROVENANCE_PARAM = "provenance.{key}"
EFFECTIVE_LR = "recipe.effective_lr"
GLOBAL_BATCH = "recipe.global_batch_size"
PRETRAIN = "recipe.pretrain"

TRIAL_YAML = "trial.yaml"  # a child's train config: what `harness train` reads
STUDY_YAML = "study.resolved.yaml"  # the parent's study, profile resolved
FUSION_MATRICES = "fusion_matrices.json"
PREDICTIONS = "predictions.json"  # a child's per-clip validation predictions at the last epoch
PRETRAINED = "pretrained.json"  # a child's ImageNet weights as loaded: path, sha256, missing and unexpected keys
RESULTS_ARTIFACTS = "results"  # the parent's folder of table files
