"""The typed trial: one training run of a study, from the plan to Ray Tune, to MLflow, to the tables.

A :class:`TrialSpec` is made by a study kind's plan (or by the search when
Optuna samples), travels unchanged as the ``"trial"`` entry of a Ray Tune
trial's config, names its MLflow child run (:meth:`TrialSpec.tags`), and is read
back by the tables from those tags (:class:`TrialIdentity`). Its key is the
same in every invocation of a study, which is what lets ``--resume`` and Ray's
retries update a trial's own record instead of adding one::

    table1/laptop/TSM/seed0            # a table row x seed
    scale_probe/laptop/TSM/shift/seed1 # a probe row x regime x seed
    rf_search/laptop/6d1e2_00003       # a search sample (Ray's trial id)
"""
from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from harness import names
from harness.config import TrainConfig


def grid_key(study: str, profile: str, row: str, seed: int, regime: str | None = None) -> str:
    middle = row if regime is None else f"{row}/{regime}"
    return f"{study}/{profile}/{middle}/seed{seed}"


def flatten(d: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    """``{"recipe": {"lr": 0.1}}`` -> ``{"recipe.lr": 0.1}``: dotted keys for MLflow params and config diffs.

    A mapping is opened only when it is non-empty with string keys; anything
    else (a list, ``{}``, a label map of ints) stays one value.
    """
    out: dict[str, Any] = {}
    for k, v in d.items():
        if isinstance(v, Mapping) and v and all(isinstance(x, str) for x in v):
            out.update(flatten(v, f"{prefix}{k}."))
        else:
            out[f"{prefix}{k}"] = v
    return out


class TrialIdentity(BaseModel):
    """Where a trial sits in its study: what its child run's tags say (:meth:`TrialSpec.tags`), and all the
    tables know of it from them (:meth:`from_tags`)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    key: str
    study: str
    profile: str
    row: str
    seed: int
    label: str
    regime: str | None = None
    sample: int | None = None

    @classmethod
    def from_tags(cls, tags: Mapping[str, str]) -> "TrialIdentity":
        row = tags.get(names.ROW, "")
        regime = tags.get(names.REGIME) or None
        sample = tags.get(names.SAMPLE)
        return cls(key=tags[names.TRIAL_KEY], study=tags.get(names.STUDY, ""), profile=tags.get(names.PROFILE, ""),
                   row=row, seed=int(tags.get(names.SEED, -1)),
                   # runs made before the label tag: a grid trial's line was its row (row@regime in probes)
                   label=tags.get(names.LABEL) or (row if regime is None else f"{row}@{regime}"),
                   regime=regime, sample=int(sample) if sample is not None else None)


class TrialSpec(TrialIdentity):
    """What one trial trains and how it is named and recorded.

    Args:
        key: stable identity across invocations (see the module docstring).
        study, profile, row, seed: where it sits in the study; ``row`` is the
            study's row (a search's base row).
        label: the table line it counts in: the row, ``row@regime``, or a
            search sample's options (``#3 spatial_rf=5 ...``).
        config: the resolved train config, what ``harness train`` would read.
        regime: a probe's train/test condition.
        sample: a search sample's number (1-based).
        search_params: a search sample's raw Optuna values.
        metrics: numbers the child run starts with (the row's params and
            GFLOPs on the paper backbone).
        trace: tags that say how and on what it was measured (protocol, data
            fingerprint, commit).
        gflops: a search sample's GFLOPs, its second objective and its budget's measure.
        over_budget: why a search sample is not trained (over the FLOPs budget).
    """

    config: TrainConfig
    search_params: dict[str, Any] = Field(default_factory=dict)
    metrics: dict[str, float] = Field(default_factory=dict)
    trace: dict[str, str] = Field(default_factory=dict)
    gflops: float | None = None
    over_budget: str = ""

    @property
    def block(self) -> str:
        return self.config.row.block

    @property
    def run_name(self) -> str:
        """The child run's name in the MLflow UI."""
        return self.label if self.sample is not None else f"{self.label} seed{self.seed}"

    @property
    def epochs(self) -> int:
        return self.config.recipe.epochs

    def tags(self) -> dict[str, str]:
        """The child run's tags: its identity (read back by :meth:`TrialIdentity.from_tags`) and its trace."""
        tags = {names.KIND: names.TRIAL, names.TRIAL_KEY: self.key, names.STUDY: self.study,
                names.PROFILE: self.profile, names.ROW: self.row, names.LABEL: self.label,
                names.SEED: str(self.seed), names.BLOCK: self.block, names.BACKBONE: self.config.backbone.arch}
        if self.regime is not None:
            tags[names.REGIME] = self.regime
        if self.sample is not None:
            tags[names.SAMPLE] = str(self.sample)
        return {**tags, **self.trace}

    def params(self) -> dict[str, Any]:
        """The child run's params: the resolved train config, flattened, the lr it really uses, Optuna's values."""
        return {**flatten(self.config.model_dump(mode="json")),
                names.EFFECTIVE_LR: self.config.recipe.effective_lr,
                **{names.SEARCH_PARAM.format(name=k): v for k, v in self.search_params.items()}}

    def with_trace(self, trace: Mapping[str, str]) -> "TrialSpec":
        return self.model_copy(update={"trace": {**self.trace, **trace}})
