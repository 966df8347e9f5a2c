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
      paper:  {backbone: {arch: resnet50, pretrained: {resnet50: ${IMAGENET_R50}, resnet101: ${IMAGENET_R101}}},
               data: {...}, recipe: {...}, provenance: {...}}
      ssv2:   {extends: paper, data: {format: sthv2, root: ${STHV2_ROOT}, annotations: ${STHV2_ANNOTATIONS}}}
    rows:
      TSN: {block: tsn}
      GST-R101: {block: gst, backbone: resnet101}
      Ours: {block: vps, proportion: 0.25}

Profiles are the user's: any name (letters, digits, ``_ - .``). ``extends: <profile>``
starts from another profile of the file: ``backbone``, ``data``, ``recipe``,
``resources`` and ``provenance`` are merged one level deep (a key given
replaces the base's, nested sections such as ``data.synth`` whole), every other
key (``seeds``) replaces the base's. A recipe key the profile changes does not
inherit the base's provenance entry. Resolution happens when the file is
loaded: every later module sees complete profiles, and ``Profile.extends`` only
records the lineage (:func:`lineage`), which row ``data`` overrides and search
budgets of the base also follow.

Provenance is required where a table compares with the paper's figures: in a
study with a ``paper:`` CSV, the profile named ``paper`` and every profile that
extends it (directly or not) must say where each recipe value comes from.
Elsewhere a missing entry is ``unstated`` (:meth:`Profile.recipe_sources`).

Backbones: a profile whose ``backbone.arch`` is a paper ResNet trains each row
on the row's own ``backbone`` when the row names one (GST-R101: resnet101),
else on the profile's arch; a ``tiny`` profile (laptop) trains every row on its
tiny ResNet, by design (:func:`trained_backbone`, :func:`backbone_differs`).
``backbone.pretrained`` is one path (the weights of ``arch``) or one path per
arch; every arch a row trains needs its entry when any is given.

A ``kind: search`` study has one row and a ``search:`` section (:class:`Search`):
the space Optuna samples around that row, the objective and a budget per profile
(``studies/rf_search.yaml``).

A train file (``harness train``) is one resolved trial: backbone, data, recipe,
row and seed.
"""
from __future__ import annotations

import difflib
import os
import re
import types
from collections.abc import Callable
from pathlib import Path
from typing import Any, Literal, Union, get_args, get_origin

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationInfo, field_validator, model_validator

# The synthetic generator's full ranges (harness.data.synth draws from them): object side / frame side and
# displacement per frame / frame side. Defined here, as the schema's defaults; synth imports them.
SIZE_RANGE = (0.12, 0.32)
SPEED_RANGE = (0.015, 0.06)


class ConfigError(ValueError):
    """A value that is wrong where it stands; ``keys`` is its path (from the model that raised it, or the file).

    Raised inside a validator, pydantic keeps it as the error's ``ctx["error"]``,
    so :func:`harness.errors.describe` can point at the line of the key itself.
    """

    def __init__(self, keys: tuple, message: str):
        super().__init__(f"{'.'.join(map(str, keys))}: {message}" if keys else message)
        self.keys, self.message = keys, message


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=False)


def _close(name: Any, valid: Any) -> str:
    """``; did you mean 'x'?`` for the closest of ``valid``, or nothing."""
    close = difflib.get_close_matches(str(name), [str(v) for v in valid], n=1)
    return f"; did you mean {close[0]!r}?" if close else ""


Arch = Literal["resnet50", "resnet101", "tiny"]
ARCHS: tuple[str, ...] = get_args(Arch)


class Backbone(Strict):
    """The 2D ResNet the block goes into.

    ``resnet50`` / ``resnet101`` are the paper's backbones (torchvision layout).
    ``tiny`` is the laptop backbone: bottlenecks with ``width`` base channels and
    ``depths`` blocks per stage, and a 3x3 stride-1 stem without max-pool.

    ``pretrained``: a torchvision-format ImageNet checkpoint, as one path (the
    weights of ``arch``) or one path per arch, for a profile whose rows train
    several (``{resnet50: ${IMAGENET_R50}, resnet101: ${IMAGENET_R101}}``). A
    trial's backbone (:class:`TrainConfig`) always holds the one path of its arch.
    """

    arch: Arch = "resnet50"
    width: int = Field(64, ge=1)
    depths: list[int] | None = None
    stem_stride: Literal[1, 2] = 1  # tiny only: stride of its 3x3 stem
    pretrained: str | dict[Arch, str] | None = None

    @field_validator("pretrained", mode="before")
    @classmethod
    def _path_or_one_per_arch(cls, value: Any) -> Any:
        if isinstance(value, dict):
            for arch, path in value.items():
                if arch not in ARCHS:
                    raise ConfigError((arch,), f"not a backbone{_close(arch, ARCHS)}; weights are named by arch: "
                                               f"{', '.join(ARCHS)}")
                if not isinstance(path, str):
                    raise ConfigError((arch,), f"give the path of the {arch} checkpoint, got {path!r}")
        elif value is not None and not isinstance(value, str):
            raise ValueError("give a checkpoint path, or one per arch: {resnet50: PATH, resnet101: PATH}")
        return value

    def weights(self, arch: str) -> str | None:
        """The checkpoint for ``arch``: None without ``pretrained``; ValueError when it names other archs only."""
        if not self.pretrained:
            return None
        named = self.pretrained if isinstance(self.pretrained, dict) else {self.arch: self.pretrained}
        if arch not in named:
            raise ValueError(f"names ImageNet weights for {', '.join(named)} only; give one path per backbone, "
                             f"e.g. {{resnet50: ${{IMAGENET_R50}}, resnet101: ${{IMAGENET_R101}}}}")
        return named[arch]

    def for_arch(self, arch: str) -> "Backbone":
        """This backbone as ``arch`` with that arch's one checkpoint path (a trial's backbone)."""
        return self.model_copy(update={"arch": arch, "pretrained": self.weights(arch)})

    def map_paths(self, fn: Callable[[str], str]) -> "Backbone":
        """A copy with ``fn`` applied to every checkpoint path (e.g. made absolute)."""
        p = self.pretrained
        mapped = {a: fn(v) for a, v in p.items()} if isinstance(p, dict) else None if p is None else fn(p)
        return self.model_copy(update={"pretrained": mapped})

    def create_kwargs(self) -> dict[str, Any]:
        """The ``backbone`` argument of :func:`blocks.create`."""
        if self.arch == "tiny":
            return {"arch": "tiny", "width": self.width, "depths": self.depths or [1, 1, 1, 1],
                    "stem_stride": self.stem_stride}
        return {"arch": self.arch}


Range = tuple[float, float]  # [min, max]


def _field_name(info: ValidationInfo) -> str:
    """The field a field validator is checking (pydantic always names it there)."""
    return info.field_name or ""


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
    def _ordered(cls, r: Range, info: ValidationInfo) -> Range:
        name = _field_name(info)
        return _check_range(name, r, 1.0 if name.endswith("size") else 0.5)


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
    def _ordered(cls, r: Range, info: ValidationInfo) -> Range:
        return _check_range(f"buckets.{_field_name(info)}", r, 1.0)


class Data(Strict):
    format: Literal["synth", "sthv1", "sthv2", "k400", "diving48", "list"]
    root: str
    annotations: str | None = None  # folder of annotation files; defaults to root
    frames: int = Field(8, ge=1)  # T: segments per clip, the one owner of the clip length
    size: int = Field(112, ge=8)  # crop side
    scale_size: int | None = None  # short side before cropping; default size * 8 / 7 (128 -> 112, 256 -> 224)
    flip: bool = False  # off for Something-Something (left/right classes)
    flip_label_swap: dict[int, int] | None = None
    # TSM's train-time multi-scale crop (zoom x0.875-1.33 at 32 -> 28 px). False: a `size` crop at one of the
    # same positions, no zoom. Scale probes turn it off: the zoom would show a training set of medium-sized
    # objects the sizes and speeds that its test cells hold out.
    multiscale_crop: bool = True
    test_clips: int = Field(1, ge=1)
    test_crops: Literal[1, 3, 5, 10] = 1
    workers: int = Field(0, ge=0)
    pin_memory: bool = False
    persistent_workers: bool = False
    prefetch_factor: int | None = None
    max_bad_fraction: float = Field(0.01, ge=0, le=1)
    # Decode once (harness.data.cache): "file" keeps a split's decoded frames (uint8) next to the data for every
    # trial, "memory" in this process; for small sets. Values are the decoder's bit for bit.
    cache: Literal["off", "memory", "file"] = "off"
    # Where videos decode: "cpu" (decord / simplejpeg, the tested default) or "gpu" (torchcodec with NVDEC;
    # needs a CUDA GPU, CUDA torch, torchcodec and FFmpeg's shared libraries: see docs/paper-profile.md).
    decoder: Literal["cpu", "gpu"] = "cpu"
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
    """What one trial asks of the cluster; ``cpu`` and ``gpu`` are per data-parallel worker.

    ``workers > 1`` trains each trial data-parallel (Ray Train, DDP: gloo on CPU, nccl on GPU), so a
    trial takes ``workers x cpu`` CPUs and ``workers x gpu`` GPUs. ``recipe.batch_size`` stays the
    global batch: each worker takes ``batch_size / workers`` clips a step (it must divide).
    """

    cpu: float = Field(1, gt=0)
    gpu: float = Field(0, ge=0)
    workers: int = Field(1, ge=1)


class RowData(Strict):
    """The ``data`` keys one row changes in one profile (Table 4: frames 8 / 16, side 112 / 224, test views).

    A row that sets ``size`` but not ``scale_size`` gets the default resize of
    its own size (``size * 8 / 7``), not the profile's resize of another size.
    """

    frames: int | None = Field(None, ge=1)
    size: int | None = Field(None, ge=8)
    scale_size: int | None = Field(None, ge=8)
    test_clips: int | None = Field(None, ge=1)
    test_crops: Literal[1, 3, 5, 10] | None = None

    def apply(self, data: Data) -> Data:
        update = self.model_dump(exclude_none=True)
        if "size" in update and "scale_size" not in update:
            update["scale_size"] = None
        merged = Data.model_validate({**data.model_dump(), **update})
        if merged.resize < merged.size:
            raise ValueError(f"scale_size {merged.resize} is below size {merged.size}: a crop cannot be "
                             "larger than the resized frame")
        return merged


class Row(Strict):
    """A table row: a registered block and its constructor options."""

    model_config = ConfigDict(extra="allow")
    block: str
    # The paper backbone of this row (GST-R101: resnet101), which its params / GFLOPs are counted on. Named
    # here, it is also what the row trains under a profile on a paper ResNet; a tiny profile (laptop) keeps its
    # tiny backbone for every row, by design. Unnamed, the row trains the profile's arch (trained_backbone).
    backbone: Literal["resnet50", "resnet101"] = "resnet50"
    # Recipe keys this row changes (Table 2: the loss weights alpha, beta); same for every profile.
    recipe: dict[str, Any] = Field(default_factory=dict)
    # Data keys this row changes, per profile: a row's "16 frames at 224" is 8 frames at 28 px on the laptop.
    # A profile that extends another takes the base's entry unless it has its own (row_data).
    data: dict[str, RowData] = Field(default_factory=dict)

    @property
    def options(self) -> dict[str, Any]:
        return dict(self.model_extra or {})

    @model_validator(mode="after")
    def _known_block_and_options(self) -> "Row":
        import blocks  # pure torch; validating a row against the registry runs nothing

        try:
            blocks.check(self.block, self.options)
        except (KeyError, TypeError) as exc:  # pydantic reports ValueError only
            option = getattr(exc, "option", None)  # blocks.registry.OptionError: point at the option's line
            raise ConfigError((option,) if option else (), exc.args[0]) from None
        unknown = set(self.recipe) - set(Recipe.model_fields)
        if unknown:
            raise ValueError(f"recipe has no key(s) {sorted(unknown)}; valid: {sorted(Recipe.model_fields)}")
        return self


SOURCES = ("paper", "reference-code", "assumed")


class Profile(Strict):
    """How a study runs: backbone, data, recipe, seeds, resources; ``extends`` is resolved at load time."""

    # The profile this one was built from (merged when the file is loaded; kept as the lineage).
    extends: str | None = None
    backbone: Backbone
    data: Data
    recipe: Recipe = Recipe()
    seeds: int = Field(1, ge=1)
    resources: Resources = Resources()
    # Training clips/s per device of the first row at this profile's input: the cost `harness run --dry-run` prints.
    throughput: float | None = Field(None, gt=0)
    # Where each recipe value comes from: "paper: <section or table>", "reference-code: <repo>" or "assumed: <why>".
    provenance: dict[str, str] = Field(default_factory=dict)

    def recipe_sources(self) -> dict[str, str]:
        """Every recipe key's source, ``unstated`` where the profile does not say."""
        return {k: self.provenance.get(k, "unstated") for k in Recipe.model_fields}

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
    def _ordered(cls, r: Range | None, info: ValidationInfo) -> Range | None:
        name = _field_name(info)
        return None if r is None else _check_range(name, r, 1.0 if "size" in name else 0.5)

    def data(self, data: Data, name: str) -> Data:
        """The profile's ``data`` with this regime's ranges and its own synth root."""
        if data.format != "synth":
            raise ValueError(f"regime {name!r} sets synth ranges, but data.format is {data.format!r}; "
                             "use regimes with the synth laptop profile only")
        overrides = self.model_dump(exclude={"description"}, exclude_none=True)
        synth = Synth.model_validate({**(data.synth or Synth()).model_dump(), **overrides})
        return data.model_copy(update={"root": f"{data.root}-{name}", "synth": synth})


class SearchParam(Strict):
    """One dimension of a search space: exactly one of ``choice``, ``loguniform`` or ``uniform``.

    A plain list is a ``choice``. ``or_zero`` (log-uniform only) also tries
    exactly 0, which no log scale holds: Optuna gets a categorical
    ``<name>_zero`` (False/True) beside a log-uniform ``<name>_log``, and the
    trial uses 0 when ``<name>_zero`` is True (``harness.space.decode``).
    """

    choice: list[str | int | float | bool] | None = None
    loguniform: Range | None = None
    uniform: Range | None = None
    or_zero: bool = False

    @model_validator(mode="before")
    @classmethod
    def _list_is_a_choice(cls, value: Any) -> Any:
        return {"choice": value} if isinstance(value, list) else value

    @model_validator(mode="after")
    def _one_kind(self) -> "SearchParam":
        given = [k for k in ("choice", "loguniform", "uniform") if getattr(self, k) is not None]
        if len(given) != 1:
            raise ValueError(f"give exactly one of choice, loguniform, uniform; got {given or 'none'}")
        if self.choice is not None and (not self.choice or len(set(map(repr, self.choice))) < len(self.choice)):
            raise ValueError(f"choice must list distinct values, got {self.choice}")
        low, high = self.loguniform or self.uniform or (0, 1)
        if not low < high or (self.loguniform is not None and low <= 0):
            raise ValueError(f"range must be [low, high] with {'0 < ' if self.loguniform else ''}low < high, "
                             f"got {[low, high]}")
        if self.or_zero and self.loguniform is None:
            raise ValueError("or_zero is for loguniform ranges (a choice can list 0 itself)")
        return self

    def values(self) -> list[Any]:
        """Values a check can try: every choice, the ends of a range, and 0 with ``or_zero``."""
        given = self.choice or self.loguniform or self.uniform or []  # exactly one is set (_one_kind)
        return list(given) + ([0.0] if self.or_zero else [])


class SearchBudget(Strict):
    """What a search spends under one profile: samples, concurrency and ASHA's early stopping."""

    num_samples: int = Field(16, ge=1)  # configurations sampled, the ones over the FLOPs budget included
    max_concurrent: int = Field(2, ge=1)  # trials at once; TPE learns from a trial only once it ends
    grace_period: int = Field(1, ge=1)  # ASHA: epochs every trial trains before it can be stopped
    reduction_factor: float = Field(2, gt=1)  # ASHA: at each rung, the top 1/reduction_factor go on


class Search(Strict):
    """A ``kind: search`` study: Optuna samples the one row's options and recipe keys, Ray Tune trains them.

    Single objective: ``metric`` (max) with TPE and ASHA. ``multi_objective``:
    (``metric`` max, GFLOPs min) with NSGA-II and no early stopping, since ASHA
    ranks by accuracy alone and would stop the cheap configurations a Pareto
    front is for. GFLOPs are the paper backbone's at the paper profile's input
    (``harness.profile``), known before training: a configuration above
    ``flops_budget`` is not trained and is told to Optuna as the worst top-1 (0).
    """

    space: dict[str, SearchParam]
    metric: Literal["val_top1", "val_top5"] = "val_top1"
    mode: Literal["max"] = "max"  # accuracies only: 0 is then the worst value a pruned trial is told
    multi_objective: bool = False
    flops_budget: float | None = Field(None, gt=0)  # GFLOPs per clip at the paper profile's frames and size
    seed: int = 0  # the sampler's seed and every trial's training seed
    startup_trials: int = Field(10, ge=0)  # TPE: random configurations before its model takes over
    population_size: int = Field(8, ge=2)  # NSGA-II: configurations per generation
    # The configuration the paper chose (values of space keys), marked on the Pareto front.
    reference: dict[str, Any] = Field(default_factory=dict)
    top_k: int = Field(10, ge=1)  # lines of the results table
    # Per profile; a profile without one takes the budget of the profile it extends.
    budget: dict[str, SearchBudget]

    @model_validator(mode="after")
    def _reference_in_space(self) -> "Search":
        unknown = sorted(set(self.reference) - set(self.space))
        if unknown:
            raise ValueError(f"reference names {unknown}, which are not keys of the space {sorted(self.space)}")
        if not self.space:
            raise ValueError("space is empty: name at least one option or recipe key to search")
        return self


def check_search(search: Search, rows: dict[str, Row], profiles: dict[str, Profile]) -> None:
    """What a search section must agree on with the rest of its study; each message names the key."""
    import difflib

    import blocks

    if len(rows) != 1:
        raise ValueError(f"a search study has one base row, the configuration the space overrides; "
                         f"rows has {len(rows)}: {', '.join(rows)}")
    row = next(iter(rows.values()))
    options = blocks.options(row.block)
    for key, param in search.space.items():
        if key in Recipe.model_fields and key in options:
            raise ValueError(f"space.{key} is both a recipe key and an option of block {row.block!r}")
        if key not in Recipe.model_fields and key not in options:
            close = difflib.get_close_matches(key, [*options, *Recipe.model_fields], n=1)
            raise ValueError(f"space.{key} is neither a recipe key nor an option of block {row.block!r}"
                             + (f"; did you mean {close[0]!r}?" if close else ""))
        for value in param.values():
            try:
                if key in options:
                    blocks.check(row.block, {**row.options, key: value})
                else:
                    for prof in profiles.values():
                        Recipe.model_validate({**prof.recipe.model_dump(), **row.recipe, key: value})
            except Exception as exc:  # noqa: BLE001 - any refusal is the value's fault; say which
                raise ValueError(f"space.{key}: value {value!r} is refused: {str(exc).splitlines()[0]}") from None
    for name in profiles:  # a profile that extends another spends the base's budget unless it has its own
        inherited = next((search.budget[n] for n in lineage(profiles, name) if n in search.budget), None)
        if inherited is not None:
            search.budget.setdefault(name, inherited)
    missing = [p for p in profiles if p not in search.budget]
    if missing:
        raise ValueError(f"budget: give a budget for every profile; missing: {', '.join(missing)}")
    for name, budget in search.budget.items():
        if name not in profiles:
            raise ValueError(f"budget.{name}: the study has no profile {name!r}")
        if budget.grace_period > profiles[name].recipe.epochs:
            raise ValueError(f"budget.{name}.grace_period {budget.grace_period} is above the profile's "
                             f"{profiles[name].recipe.epochs} epochs")


class Study(Strict):
    name: str
    kind: Literal["table", "search", "probe"] = "table"
    paper: str | None = None  # CSV of the paper's figures, results/paper/*.csv
    num_classes: int = Field(174, ge=2)  # of the paper's dataset; profile uses it
    profiles: dict[str, Profile]  # any names; "laptop" and "paper" are the shipped ones
    rows: dict[str, Row]
    # Probe studies: named train/test conditions; the runner will expand rows x regimes x seeds.
    regimes: dict[str, Regime] | None = None
    # Which epoch the paper's figures are: "best" (picked on the val set, as GST's authors did), "last",
    # or "unstated" when the paper does not say (PSN does not). Tables print it and compute Δ top-1 with it.
    paper_epoch: Literal["best", "last", "unstated"] = "unstated"
    # The study's PNG: top-1 against GFLOPs (tables), or the ||T_ij||_1 heatmaps of Fig. 5 (harness.plots).
    figure: Literal["accuracy_vs_gflops", "fusion_matrices"] = "accuracy_vs_gflops"
    # kind: search only: the space Optuna samples around the one row, objective, budgets (harness.study.search).
    search: Search | None = None
    # The orderings the tables judge (harness.stats, docs/statistics.md): every row against ``baseline``
    # (default: the first row) and each adjacent pair by mean; or exactly the pairs [A, B] of ``comparisons``.
    baseline: str | None = None
    comparisons: list[tuple[str, str]] | None = None

    @model_validator(mode="after")
    def _compared_rows_exist(self) -> "Study":
        named = [self.baseline] if self.baseline is not None else []
        named += [row for pair in self.comparisons or [] for row in pair]
        unknown = [row for row in named if row not in self.rows]
        if unknown:
            close = difflib.get_close_matches(unknown[0], list(self.rows), n=1)
            raise ValueError(f"baseline/comparisons name row {unknown[0]!r}, which the study does not have"
                             + (f"; did you mean {close[0]!r}?" if close else f"; rows: {', '.join(self.rows)}"))
        return self

    @model_validator(mode="before")
    @classmethod
    def _resolve_extends(cls, data: Any) -> Any:
        if isinstance(data, dict) and isinstance(data.get("profiles"), dict):
            return {**data, "profiles": resolve_profiles(data["profiles"])}
        return data

    @field_validator("profiles")
    @classmethod
    def _profile_names(cls, profiles: dict[str, Profile]) -> dict[str, Profile]:
        if not profiles:
            raise ValueError("a study needs at least one profile (see studies/table1.yaml)")
        for name in profiles:  # a profile's name becomes part of trial keys, MLflow names and folders
            if not re.fullmatch(r"[A-Za-z0-9_.-]+", name):
                raise ConfigError((name,), "profile names may hold letters, digits, '_', '-' and '.' only")
        return profiles

    @field_validator("search")
    @classmethod
    def _search_fits_the_study(cls, search: Search | None, info: ValidationInfo) -> Search | None:
        if search is not None and "rows" in info.data and "profiles" in info.data:
            check_search(search, info.data["rows"], info.data["profiles"])
        return search

    @model_validator(mode="after")
    def _search_belongs_to_searches(self) -> "Study":
        if self.kind == "search" and self.search is None:
            raise ValueError("kind: search needs a search: section (space, budget); see studies/rf_search.yaml")
        if self.kind != "search" and self.search is not None:
            raise ValueError(f"search: is for kind: search studies; this study is kind: {self.kind}")
        return self

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
    def _row_data_fits_its_profile(self) -> "Study":
        for name, row in self.rows.items():
            for profile in row.data:
                if profile not in self.profiles:
                    raise ConfigError(("rows", name, "data", profile), f"names profile {profile!r}, which this "
                                      f"study does not have{_close(profile, self.profiles)}")
            for profile in self.profiles:
                try:
                    row_data(self, profile, name)
                except ValueError as exc:
                    source = next(n for n in lineage(self.profiles, profile) if n in row.data)
                    raise ConfigError(("rows", name, "data", source), str(exc)) from None
        return self

    @model_validator(mode="after")
    def _every_trial_has_its_weights(self) -> "Study":
        for profile, prof in self.profiles.items():
            for row in self.rows:
                arch = trained_backbone(self, profile, row)
                try:
                    prof.backbone.weights(arch)
                except ValueError as exc:
                    raise ConfigError(("profiles", profile, "backbone", "pretrained"),
                                      f"rows.{row} trains {arch}, but this {exc}") from None
        return self

    @model_validator(mode="after")
    def _paper_recipe_is_traceable(self) -> "Study":
        for name, prof in self.profiles.items():
            missing = [k for k in Recipe.model_fields if k not in prof.provenance]
            if missing and compares_with_paper(self, name):
                hint = (f" (a recipe key it changes from {prof.extends!r} needs its own entry)"
                        if prof.extends else "")
                raise ConfigError(("profiles", name, "provenance"),
                                  f"say where each recipe value comes from, as this profile"
                                  f" is compared with the paper's figures{hint}; missing: {', '.join(missing)}")
        return self


def lineage(profiles: dict[str, Profile], name: str) -> list[str]:
    """``name`` and the profiles it extends, nearest first: ``["ssv2", "paper"]``."""
    out = [name]
    while (base := profiles[out[-1]].extends) is not None and base in profiles and base not in out:
        out.append(base)
    return out


def compares_with_paper(study: Study, profile: str) -> bool:
    """Whether the tables of ``profile`` are read against the paper's figures: the study has a ``paper:`` CSV
    and the profile is ``paper`` or extends it. Such a profile must state every recipe value's provenance."""
    return study.paper is not None and "paper" in lineage(study.profiles, profile)


def trained_backbone(study: Study, profile: str, row: str) -> str:
    """The arch the row's trials train under ``profile``: ``tiny`` under a tiny profile (every row, by design);
    else the row's own backbone when it names one (GST-R101: resnet101), else the profile's arch."""
    arch = study.profiles[profile].backbone.arch
    spec = study.rows[row]
    return arch if arch == "tiny" or "backbone" not in spec.model_fields_set else spec.backbone


def trained_archs(study: Study, profile: str) -> set[str]:
    """Every arch the rows of ``profile`` train: the ImageNet weights a run of it needs."""
    return {trained_backbone(study, profile, row) for row in study.rows}


def backbone_differs(study: Study, profile: str, row: str) -> bool:
    """Whether the row trains another backbone under ``profile`` than the one its params and GFLOPs are
    counted on, beyond what the whole profile says: a row that names its own backbone and gets the tiny
    one (GST-R101 on the laptop, same trial as GST), or a row that trains a paper profile's other arch.
    For a table note; under a tiny profile, every row that names no backbone is told by the header."""
    spec = study.rows[row]
    trained = trained_backbone(study, profile, row)
    named = "backbone" in spec.model_fields_set
    return trained != spec.backbone and (named or trained != "tiny")


# ----------------------------------------------------------------------------- profile inheritance

MERGED = ("backbone", "data", "recipe", "resources", "provenance")  # merged one level deep; other keys replace


def resolve_profiles(profiles: dict[str, Any]) -> dict[str, Any]:
    """Raw profiles with every ``extends`` merged in (see the module docstring); ConfigError names the key."""
    out: dict[str, Any] = {}
    for name in profiles:
        _resolve(profiles, name, out, ())
    return out


def _resolve(profiles: dict[str, Any], name: str, out: dict[str, Any], chain: tuple[str, ...]) -> Any:
    if name in out:
        return out[name]
    raw = profiles[name]
    base = raw.get("extends") if isinstance(raw, dict) else None
    if base is None:
        out[name] = raw
        return raw
    keys = ("profiles", name, "extends")
    if not isinstance(base, str) or base not in profiles:
        raise ConfigError(keys, f"no profile {base!r} to extend{_close(base, profiles)}; "
                                f"this study has {', '.join(map(str, profiles))}")
    if base in (*chain, name):
        raise ConfigError(keys, f"profiles extend each other in a circle: {' -> '.join((*chain, name, base))}")
    out[name] = _merge(_resolve(profiles, base, out, (*chain, name)), raw)
    return out[name]


def _merge(base: Any, child: dict[str, Any]) -> dict[str, Any]:
    """``child`` over ``base``: one level deep for :data:`MERGED`, replaced otherwise."""
    base = base.model_dump() if isinstance(base, BaseModel) else base
    if not isinstance(base, dict):
        return child
    merged = {**base, **child}
    for key in MERGED:
        if isinstance(base.get(key), dict) and isinstance(child.get(key), dict):
            merged[key] = {**base[key], **child[key]}
    b, c = base.get("backbone"), child.get("backbone")
    if isinstance(b, dict) and isinstance(c, dict) and "arch" in c and isinstance(b.get("pretrained"), str) \
            and "pretrained" not in c:  # one path names the base arch's weights, not the new arch's
        merged["backbone"]["pretrained"] = {b.get("arch", "resnet50"): b["pretrained"]}
    changed = set(child["recipe"]) if isinstance(child.get("recipe"), dict) else set()
    own = child.get("provenance")
    own_keys = set(own) if isinstance(own, dict) else set()
    if isinstance(merged.get("provenance"), dict):  # a changed recipe value's source is the child's to give
        merged["provenance"] = {k: v for k, v in merged["provenance"].items() if k not in changed or k in own_keys}
    return merged


class TrainConfig(Strict):
    """One trial: what ``harness train`` reads and what a Ray Tune trial runs."""

    name: str = "trial"
    backbone: Backbone
    data: Data
    recipe: Recipe = Recipe()
    row: Row
    seed: int = 0

    @model_validator(mode="after")
    def _one_checkpoint(self) -> "TrainConfig":
        """A trial trains one arch: ``backbone.pretrained`` becomes that arch's one path."""
        if isinstance(self.backbone.pretrained, dict):
            try:
                self.backbone = self.backbone.for_arch(self.backbone.arch)
            except ValueError as exc:
                raise ConfigError(("backbone", "pretrained"), f"the backbone is {self.backbone.arch}, but this {exc}")
        return self


def trial_config(study: Study, profile: str, row: str, seed: int) -> TrainConfig:
    """The resolved trial of one row x seed: the row's trained backbone (:func:`trained_backbone`) with its
    checkpoint, the profile's data and recipe with the row's keys applied."""
    prof = study.profiles[profile]
    spec = study.rows[row]
    recipe = Recipe.model_validate({**prof.recipe.model_dump(), **spec.recipe})
    backbone = prof.backbone.for_arch(trained_backbone(study, profile, row))
    return TrainConfig(name=f"{study.name}/{profile}/{row}/seed{seed}", backbone=backbone,
                       data=row_data(study, profile, row), recipe=recipe, row=spec, seed=seed)


def row_data(study: Study, profile: str, row: str) -> Data:
    """The profile's ``data`` with the row's overrides for that profile, or for the nearest profile it
    extends (frames, size, test views)."""
    data = study.profiles[profile].data
    spec = study.rows[row]
    override = next((spec.data[n] for n in lineage(study.profiles, profile) if n in spec.data), None)
    return override.apply(data) if override is not None else data


_ENV = re.compile(r"\$\{(\w+)\}")


class _NoDuplicateKeys(yaml.SafeLoader):
    """safe_load that refuses a key given twice (YAML would keep the last one silently)."""


def _construct_mapping(loader: yaml.SafeLoader, node: yaml.MappingNode, deep: bool = False) -> dict[Any, Any]:
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
    """``yaml.safe_load`` semantics plus duplicate-key errors; no Python tags. A file that is not UTF-8
    text is a :class:`ConfigError` (one line), not a decoder's message."""
    raw = Path(path).read_bytes()
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        line = raw.count(b"\n", 0, exc.start) + 1
        raise ConfigError((), f"not UTF-8 text (byte 0x{raw[exc.start]:02x} on line {line}); a study or train "
                              "file is YAML saved as UTF-8") from None
    try:
        return yaml.load(text, Loader=_NoDuplicateKeys)  # noqa: S506 - SafeLoader subclass
    except yaml.reader.ReaderError as exc:  # decodable, but a control character: a binary file
        line = text.count("\n", 0, exc.position) + 1
        raise ConfigError((), f"not UTF-8 text (character #x{exc.character:04x} on line {line}, which YAML "
                              "does not allow); a study or train file is YAML saved as UTF-8") from None


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
    """A study file (``harness run``); a train file (``row:``, no ``rows:``) is a ConfigError saying so."""
    raw = read_yaml(path)
    if isinstance(raw, dict) and "row" in raw and "rows" not in raw:
        raise ConfigError((), f"this is a train config (row:, not rows:); use `harness train {path}`")
    return Study.model_validate(expand_env(raw))


def load_train(path: str | Path) -> TrainConfig:
    """A train file (``harness train``); a study (``rows:``, no ``row:``) is a ConfigError saying so."""
    raw = read_yaml(path)
    if isinstance(raw, dict) and "rows" in raw and "row" not in raw:
        raise ConfigError((), f"this is a study (rows:, not row:); use `harness run {path}`")
    return TrainConfig.model_validate(expand_env(raw))


def valid_keys(model: type[BaseModel], loc: tuple) -> list[str]:
    """The keys of the section at ``loc`` (a pydantic error location under ``model``); [] when it is not a
    section with fixed keys. For an unknown-key error: what the user could have meant."""
    tp: Any = model
    for part in loc:
        tp = _section(tp)
        if isinstance(tp, type) and issubclass(tp, BaseModel):
            field = tp.model_fields.get(str(part))
            if field is None:
                return []
            tp = field.annotation
        elif get_origin(tp) in (dict, list):
            tp = get_args(tp)[-1]
        else:
            return []
    tp = _section(tp)
    return list(tp.model_fields) if isinstance(tp, type) and issubclass(tp, BaseModel) else []


def _section(tp: Any) -> Any:
    """``X | None`` -> ``X`` (the model or container member of a union)."""
    if get_origin(tp) in (Union, types.UnionType):
        members = [a for a in get_args(tp) if a is not type(None)]
        return next((a for a in members if isinstance(a, type) and issubclass(a, BaseModel)), members[0])
    return tp
