"""Typed configuration: the schema of study and train files, and nothing that runs.

Every other module takes these validated objects, never raw dicts. Unknown keys
are errors that name the key (``extra="forbid"``); YAML is read with
``yaml.safe_load`` only, so a tag such as ``!!python/object`` is rejected.

A study file::

    name: table1
    kind: table
    paper: results/paper/table1.csv
    profiles:
      laptop: {backbone: {...}, data: {...}, recipe: {...}, seeds: 2}
      paper:  {...}
    rows:
      TSN: {block: tsn}
      Ours: {block: vps, proportion: 0.25}

A train file (``harness train``) is one resolved trial: backbone, data, recipe,
row and seed.
"""
from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from harness.data.synth import SIZE_RANGE, SPEED_RANGE  # the generator owns its full ranges


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=False)


class Backbone(Strict):
    """The 2D ResNet the block goes into.

    ``resnet50`` / ``resnet101`` are the paper's backbones (torchvision layout).
    ``tiny`` is the laptop backbone: bottlenecks with ``width`` base channels and
    ``depths`` blocks per stage, and a 3x3 stride-1 stem without max-pool.
    """

    arch: Literal["resnet50", "resnet101", "tiny"] = "resnet50"
    width: int = Field(64, ge=1)
    depths: list[int] | None = None
    stem_stride: Literal[1, 2] = 1  # tiny only: stride of its 3x3 stem
    pretrained: str | None = None  # path to a torchvision-format ImageNet checkpoint

    def create_kwargs(self) -> dict[str, Any]:
        """The ``backbone`` argument of :func:`blocks.create`."""
        if self.arch == "tiny":
            return {"arch": "tiny", "width": self.width, "depths": self.depths or [1, 1, 1, 1],
                    "stem_stride": self.stem_stride}
        return {"arch": self.arch}


Range = tuple[float, float]  # [min, max]


def _check_range(name: str, r: Range, upper: float) -> Range:
    if not 0 < r[0] <= r[1] <= upper:
        raise ValueError(f"{name} must be [min, max] with 0 < min <= max <= {upper:g}, got {list(r)}")
    return r


class Synth(Strict):
    """Synthetic reversal-paired video set (laptop profile), generated on first use.

    ``*_size`` (object side / frame side) and ``*_speed`` (displacement per
    frame / frame side) are the ranges each split draws from; they differ
    between train and val in a scale-shift probe. The defaults are the
    generator's full ranges.
    """

    videos: int = Field(400, ge=2)
    frames: int = Field(16, ge=2)
    size: int = Field(64, ge=16)
    seed: int = 0
    val_fraction: float = Field(0.25, gt=0, lt=1)
    train_size: Range = SIZE_RANGE
    train_speed: Range = SPEED_RANGE
    val_size: Range = SIZE_RANGE
    val_speed: Range = SPEED_RANGE
    # "rich": textured clutter, torus motion, a family not visible in one frame (hard; probes).
    # "plain": one object per clip on a plain background, its shape names the motion family, so a
    # frame-order-blind model gets the family (50% of a pair) and only temporal order tells the twin.
    style: Literal["rich", "plain"] = "rich"

    @field_validator("train_size", "val_size", "train_speed", "val_speed")
    @classmethod
    def _ordered(cls, r: Range, info) -> Range:
        return _check_range(info.field_name, r, 1.0 if info.field_name.endswith("size") else 0.5)


class Buckets(Strict):
    """Edges [e1, e2] that cut size into small / medium / large and speed into slow / medium / fast.

    Fixed in the study file before any result is seen; the defaults are the
    thirds of the generator's full ranges (values are compared as ``< e1``,
    ``< e2``, else the top bucket).
    """

    size: Range = (0.1867, 0.2533)
    speed: Range = (0.03, 0.045)

    @field_validator("size", "speed")
    @classmethod
    def _ordered(cls, r: Range, info) -> Range:
        return _check_range(f"buckets.{info.field_name}", r, 1.0)


class Data(Strict):
    format: Literal["synth", "sthv1", "sthv2", "k400", "diving48", "list"]
    root: str
    annotations: str | None = None  # folder of annotation files; defaults to root
    frames: int = Field(8, ge=1)  # T: segments per clip, the one owner of the clip length
    size: int = Field(112, ge=8)  # crop side
    scale_size: int | None = None  # short side before cropping; default size * 8 / 7 (128 -> 112, 256 -> 224)
    flip: bool = False  # off for Something-Something (left/right classes)
    flip_label_swap: dict[int, int] | None = None
    test_clips: int = Field(1, ge=1)
    test_crops: Literal[1, 3, 5, 10] = 1
    workers: int = Field(0, ge=0)
    pin_memory: bool = False
    persistent_workers: bool = False
    prefetch_factor: int | None = None
    max_bad_fraction: float = Field(0.01, ge=0, le=1)
    synth: Synth | None = None
    # Stratified val top-1 (harness.probe): by the synth size x speed buckets, or by a user CSV clip_id,bucket.
    buckets: Buckets | None = None
    bucket_csv: str | None = None

    @model_validator(mode="after")
    def _one_stratification(self) -> "Data":
        if self.buckets is not None and self.bucket_csv is not None:
            raise ValueError("set data.buckets (synth size x speed) or data.bucket_csv (your own buckets), not both")
        return self

    @property
    def resize(self) -> int:
        return self.scale_size or round(self.size * 8 / 7)


class Recipe(Strict):
    """The training recipe; defaults are the paper's (Sec. Implementation Detail)."""

    epochs: int = Field(50, ge=1)
    batch_size: int = Field(64, ge=1)
    lr: float = Field(0.01, gt=0)
    momentum: float = Field(0.9, ge=0, lt=1)
    weight_decay: float = Field(5e-4, ge=0)
    schedule: Literal["step", "cosine"] = "step"
    lr_step: int = Field(10, ge=1)  # step decay x0.1 every lr_step epochs
    warmup_epochs: int = Field(0, ge=0)
    clip_grad: float | None = Field(20.0, gt=0)
    dropout: float = Field(0.3, ge=0, lt=1)
    alpha: float = Field(0.01, ge=0)  # weight of L_interaction (Eq. 2)
    beta: float = Field(0.001, ge=0)  # weight of L_capacity (Eq. 3)
    tsm_param_groups: bool = False
    threads: int = Field(1, ge=1)
    # The batch the lr was chosen for; with scale_lr the lr follows batch_size linearly.
    reference_batch: int | None = Field(None, ge=1)
    scale_lr: bool = True

    @property
    def effective_lr(self) -> float:
        """lr after linear scaling to batch_size (TSM #96: batch 20 at the batch-64 lr lost 4 points)."""
        if self.scale_lr and self.reference_batch:
            return self.lr * self.batch_size / self.reference_batch
        return self.lr


class Resources(Strict):
    cpu: float = Field(1, gt=0)
    gpu: float = Field(0, ge=0)


class Row(Strict):
    """A table row: a registered block and its constructor options."""

    model_config = ConfigDict(extra="allow")
    block: str
    # The paper backbone of this row (GST-R101); the laptop profile keeps its tiny backbone.
    backbone: Literal["resnet50", "resnet101"] = "resnet50"
    # Recipe keys this row changes (Table 2: the loss weights alpha, beta); same for every profile.
    recipe: dict[str, Any] = Field(default_factory=dict)

    @property
    def options(self) -> dict[str, Any]:
        return dict(self.model_extra or {})

    @model_validator(mode="after")
    def _known_block_and_options(self) -> "Row":
        import blocks  # pure torch; validating a row against the registry runs nothing

        try:
            blocks.check(self.block, self.options)
        except (KeyError, TypeError) as exc:  # pydantic reports ValueError only
            raise ValueError(exc.args[0]) from None
        unknown = set(self.recipe) - set(Recipe.model_fields)
        if unknown:
            raise ValueError(f"recipe has no key(s) {sorted(unknown)}; valid: {sorted(Recipe.model_fields)}")
        return self


SOURCES = ("paper", "reference-code", "assumed")


class Profile(Strict):
    backbone: Backbone
    data: Data
    recipe: Recipe = Recipe()
    seeds: int = Field(1, ge=1)
    resources: Resources = Resources()
    # Where each recipe value comes from: "paper: <section or table>", "reference-code: <repo>" or "assumed: <why>".
    provenance: dict[str, str] = Field(default_factory=dict)

    @field_validator("provenance")
    @classmethod
    def _known_sources(cls, provenance: dict[str, str]) -> dict[str, str]:
        for key, source in provenance.items():
            if key not in Recipe.model_fields:
                raise ValueError(f"provenance names {key!r}, which is not a recipe key")
            if source.split(":")[0].strip() not in SOURCES:
                raise ValueError(f"provenance of {key!r} must start with one of {', '.join(SOURCES)}, got {source!r}")
        return provenance


class Regime(Strict):
    """One train/test condition of a probe: overrides of the synth ranges per split (unset: the profile's).

    Each regime gets its own synth folder (``<root>-<regime>``), so trials of
    two regimes never regenerate each other's cached set.
    """

    description: str = ""
    train_size: Range | None = None
    train_speed: Range | None = None
    val_size: Range | None = None
    val_speed: Range | None = None

    @field_validator("train_size", "val_size", "train_speed", "val_speed")
    @classmethod
    def _ordered(cls, r: Range | None, info) -> Range | None:
        return None if r is None else _check_range(info.field_name, r, 1.0 if "size" in info.field_name else 0.5)

    def data(self, data: Data, name: str) -> Data:
        """The profile's ``data`` with this regime's ranges and its own synth root."""
        if data.format != "synth":
            raise ValueError(f"regime {name!r} sets synth ranges, but data.format is {data.format!r}; "
                             "use regimes with the synth laptop profile only")
        overrides = self.model_dump(exclude={"description"}, exclude_none=True)
        synth = Synth.model_validate({**(data.synth or Synth()).model_dump(), **overrides})
        return data.model_copy(update={"root": f"{data.root}-{name}", "synth": synth})


class Study(Strict):
    name: str
    kind: Literal["table", "search", "probe"] = "table"
    paper: str | None = None  # CSV of the paper's figures, results/paper/*.csv
    num_classes: int = Field(174, ge=2)  # of the paper's dataset; profile uses it
    profiles: dict[Literal["laptop", "paper"], Profile]
    rows: dict[str, Row]
    # Probe studies: named train/test conditions; the runner will expand rows x regimes x seeds.
    regimes: dict[str, Regime] | None = None

    @field_validator("rows")
    @classmethod
    def _some_rows(cls, rows: dict[str, Row]) -> dict[str, Row]:
        if not rows:
            raise ValueError("a study needs at least one row")
        return rows

    @model_validator(mode="after")
    def _regimes_belong_to_probes(self) -> "Study":
        if self.regimes is not None and self.kind != "probe":
            raise ValueError(f"regimes are for kind: probe studies; this study is kind: {self.kind}")
        if self.regimes is not None and not self.regimes:
            raise ValueError("regimes is empty: name at least one regime or leave the key out")
        bad = [n for n in self.regimes or {} if not re.fullmatch(r"[A-Za-z0-9_.-]+", n)]
        if bad:  # a regime's name becomes part of its synth folder and of MLflow names
            raise ValueError(f"regime names may hold letters, digits, '_', '-' and '.' only; rename {bad}")
        return self

    @model_validator(mode="after")
    def _paper_recipe_is_traceable(self) -> "Study":
        paper = self.profiles.get("paper")
        if paper is not None:
            missing = [k for k in Recipe.model_fields if k not in paper.provenance]
            if missing:
                raise ValueError(f"profiles.paper.provenance: say where each recipe value comes from; "
                                 f"missing: {', '.join(missing)}")
        return self


class TrainConfig(Strict):
    """One trial: what ``harness train`` reads and what a Ray Tune trial runs."""

    name: str = "trial"
    backbone: Backbone
    data: Data
    recipe: Recipe = Recipe()
    row: Row
    seed: int = 0


def trial_config(study: Study, profile: str, row: str, seed: int) -> TrainConfig:
    """The resolved trial of one row x seed: the profile's recipe with the row's recipe keys applied."""
    prof = study.profiles[profile]
    spec = study.rows[row]
    recipe = Recipe.model_validate({**prof.recipe.model_dump(), **spec.recipe})
    return TrainConfig(name=f"{study.name}/{profile}/{row}/seed{seed}", backbone=prof.backbone,
                       data=prof.data, recipe=recipe, row=spec, seed=seed)


_ENV = re.compile(r"\$\{(\w+)\}")


class _NoDuplicateKeys(yaml.SafeLoader):
    """safe_load that refuses a key given twice (YAML would keep the last one silently)."""


def _construct_mapping(loader: yaml.SafeLoader, node: yaml.MappingNode, deep: bool = False):
    seen: set[Any] = set()
    for key_node, _ in node.value:
        key = loader.construct_object(key_node, deep=deep)
        if key in seen:
            raise yaml.constructor.ConstructorError(
                None, None, f"duplicate key {key!r}", key_node.start_mark
            )
        seen.add(key)
    return loader.construct_mapping(node, deep=deep)


_NoDuplicateKeys.add_constructor(yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, _construct_mapping)


def read_yaml(path: str | Path) -> Any:
    """``yaml.safe_load`` semantics plus duplicate-key errors; no Python tags."""
    with open(path, encoding="utf-8") as f:
        return yaml.load(f, Loader=_NoDuplicateKeys)  # noqa: S506 - SafeLoader subclass


def expand_env(value: Any) -> Any:
    """Replace ``${VAR}`` in strings; an unset variable is left as is and fails later by path."""
    if isinstance(value, str):
        return _ENV.sub(lambda m: os.environ.get(m.group(1), m.group(0)), value)
    if isinstance(value, dict):
        return {k: expand_env(v) for k, v in value.items()}
    if isinstance(value, list):
        return [expand_env(v) for v in value]
    return value


def load_study(path: str | Path) -> Study:
    return Study.model_validate(expand_env(read_yaml(path)))


def load_train(path: str | Path) -> TrainConfig:
    return TrainConfig.model_validate(expand_env(read_yaml(path)))
