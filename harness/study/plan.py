"""What every kind's plan shares: the resolved profile, the rows' params and GFLOPs, the recipe as MLflow
params, and the :class:`Plan` interface the engine runs."""
from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

from harness import names, paper
from harness.config import Data, Profile, Recipe, Study
from harness.profile import PAPER_SIZE, paper_input, profile_row
from harness.trial import TrialSpec, flatten

if TYPE_CHECKING:  # Ray is imported when a study runs, not for a dry run
    from harness.tune.callback import MlflowCallback

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class RunOptions:
    """What ``harness run`` was asked: the study file and how to run it."""

    study_path: str
    profile: str = "laptop"
    seeds: int | None = None
    address: str | None = None
    max_concurrent: int | None = None
    resume: bool = False
    storage: str | None = None  # where Ray keeps trials and checkpoints; default work/ray/<study>
    out_dir: Path = Path("results")
    max_failures: int = 2
    until_resolved: bool = False  # add seeds to the rows of unresolved orderings, a wave at a time
    max_trials: int | None = None  # the study's trials in all with until_resolved (default: 3x the plan's)


@dataclass(frozen=True)
class Launch:
    """How the engine asks a plan to run: where the Ray experiment lives and what the trials carry."""

    experiment: str  # folder or URI of the Tune experiment
    callback: "MlflowCallback"
    restore: bool  # continue the saved experiment (Tuner.restore)
    max_concurrent: int | None
    trace: Callable[[Data], dict[str, str]]  # a trial's trace tags from its data: protocol, fingerprint, commit
    todo: frozenset[str]  # keys of the known trials still to run


class Plan(Protocol):
    """What a study kind plans; the engine prepares, tracks and launches it the same way for every kind."""

    study: Study
    profile_name: str
    profile: Profile
    profiles: dict[str, dict[str, Any]]  # per row: its params and GFLOPs on the paper backbone (none for a search)

    @property
    def trials(self) -> list[TrialSpec]:
        """The trials known before any runs (a search knows none: Optuna samples them as it goes)."""

    @property
    def total(self) -> int:
        """How many trials the plan runs in all."""

    def data(self) -> list[Data]:
        """The data copies the trials read: generated (synthetic) and fingerprinted once, before Ray."""

    def parent_params(self) -> dict[str, Any]:
        """The parent run's params: the resolved profile and what the kind adds."""

    def parent_metrics(self) -> dict[str, float]:
        """Numbers the parent run starts with (a search: the GFLOPs of the paper's choice)."""

    def describe(self, max_concurrent: int | None) -> str:
        """The plan as ``--dry-run`` prints it."""

    def launch(self, how: Launch) -> None:
        """Run the trials on Ray Tune (the engine holds the Ray session and the MLflow parent run)."""

    def add_seeds(self, extra: Mapping[str, int]) -> list[TrialSpec]:
        """More seeds for some rows (``harness run --until-resolved``): the new trials, now in the plan."""

    def cover(self, keys: Iterable[str]) -> None:
        """Take in the trials a resumed study already holds beyond the plan (seeds an earlier wave added)."""


# ----------------------------------------------------------------------------- the resolved profile


def absolute(value: str) -> str:
    """A relative path made absolute against the current folder (so a worker elsewhere reads the same
    files); ``${VAR}`` left for its error, URIs as they are."""
    if "${" in value or "://" in value:
        return value
    return str(Path(value).expanduser().resolve())


def resolve_profile(study: Study, name: str, seeds: int | None = None) -> Profile:
    """The profile a run uses: ``--seeds`` applied, paths absolute."""
    if name not in study.profiles:
        raise ValueError(f"study {study.name!r} has no profile {name!r}; it has {', '.join(study.profiles)}")
    prof = study.profiles[name].model_copy(deep=True)
    if seeds is not None:
        if seeds < 1:
            raise ValueError(f"--seeds must be at least 1, got {seeds}")
        prof.seeds = seeds
    prof.data.root = absolute(prof.data.root)
    prof.data.annotations = absolute(prof.data.annotations) if prof.data.annotations else None
    prof.backbone = prof.backbone.map_paths(absolute)  # one checkpoint path, or one per arch
    return prof


def with_profile(study: Study, name: str, profile: Profile) -> Study:
    """The study with one profile replaced by its resolved form."""
    return study.model_copy(update={"profiles": {**study.profiles, name: profile}})


def parent_params(study: Study, profile_name: str, profile: Profile) -> dict[str, Any]:
    """The resolved profile and recipe as the parent run's params (a kind adds its own)."""
    return {"study": study.name, "profile": profile_name,
            **flatten(profile.model_dump(mode="json", exclude={"provenance"})), **recipe_params(profile)}


def recipe_params(profile: Profile) -> dict[str, Any]:
    """The resolved recipe as MLflow params: what a trial really trains with, beyond the raw keys.

    ``recipe.global_batch_size`` is the batch per optimizer step (``batch_size``,
    split over ``resources.workers`` when data-parallel); ``recipe.effective_lr`` the lr after
    linear scaling; ``recipe.pretrain`` the ImageNet checkpoint or ``none``.
    The harness has no partial-BN option: every BN layer trains, so there is no
    key for it. ``provenance.<key>`` says where each recipe value comes from
    (``unstated`` where the profile does not say, as in laptop profiles).
    """
    r = profile.recipe
    out: dict[str, Any] = {names.GLOBAL_BATCH: r.batch_size, names.EFFECTIVE_LR: r.effective_lr,
                           "recipe.epochs": r.epochs, "recipe.schedule": r.schedule,
                           names.PRETRAIN: profile.backbone.pretrained or "none"}
    out.update({names.PROVENANCE_PARAM.format(key=k): profile.provenance.get(k, "unstated")
                for k in Recipe.model_fields})
    return out


# ----------------------------------------------------------------------------- params and GFLOPs


def profile_sizes(study: Study) -> list[int]:
    """Input sides to profile: the reference profile's size, plus the sizes the paper's CSV quotes GFLOPs at."""
    sizes = paper.gflops_sizes(study)
    if "paper" in study.profiles:
        sizes.add(study.profiles["paper"].data.size)
    return sorted(sizes) or [PAPER_SIZE]  # never a laptop side: GFLOPs there compare with nothing


def profile_rows(study: Study, sizes: Sequence[int], profile_name: str = "paper") -> dict[str, dict[str, Any]]:
    """Params and GFLOPs of every row on its paper backbone (``harness.profile``).

    Each row at its paper setting (:func:`harness.profile.paper_input`: the
    paper profile with the row's data keys, else the paper's 8 frames at 112
    px, whatever ``profile_name`` trains at): its frames, and its own side
    besides ``sizes`` (Table 4's rows are 8 or 16 frames at 112 or 224).
    """
    out = {}
    for name, row in study.rows.items():
        start = time.perf_counter()
        frames, size = paper_input(study, name)  # the paper's setting, never the laptop's tiny input
        row_sizes = sorted({*sizes, size})
        out[name] = profile_row(row, num_classes=study.num_classes, frames=frames, sizes=row_sizes)
        log.info("profiled %-20s %6.2f M params  %s GFLOPs at %d frames  (%.1f s)", name,
                 out[name]["params"] / 1e6, " / ".join(f"{out[name]['gflops'][str(s)]:.2f}@{s}" for s in row_sizes),
                 frames, time.perf_counter() - start)
    return out


def profile_metrics(prof: dict[str, Any]) -> dict[str, float]:
    """A row's profile as the metrics its child runs start with (numbers the tables read back)."""
    out = {names.PROFILE_PARAMS: float(prof["params"])}
    out.update({names.profile_gflops(s): float(v) for s, v in prof["gflops"].items()})
    if prof.get("frames") is not None:  # the frames those GFLOPs are counted at
        out[names.PROFILE_FRAMES] = float(prof["frames"])
    if prof.get("fusion_params") is not None:
        out[names.PROFILE_FUSION_PARAMS] = float(prof["fusion_params"])
    if prof.get("ir_interactions") is not None:
        out[names.PROFILE_IR_INTERACTIONS] = float(prof["ir_interactions"])
    return out


def lr_origin(r: Recipe) -> str:
    """`` (= 0.01 x 16/64)`` when the lr was scaled to the batch, else nothing."""
    return f" (= {r.lr:g} x {r.batch_size}/{r.reference_batch})" if r.effective_lr != r.lr else ""


def data_key(data: Data) -> tuple[str, str, str | None]:
    """What a data fingerprint depends on: the reader and where it reads (not frames or size)."""
    return data.format, data.root, data.annotations
