"""A search's space as Optuna sees it, and the configurations it stands for (pure: no Ray, no MLflow).

The study's ``search:`` section (``harness.config.Search``) names the space:
block options of the base row and recipe keys, each a choice, a log-uniform or a
uniform range; a log-uniform range with ``or_zero`` also tries exactly 0, as a
categorical ``<name>_zero`` beside ``<name>_log`` (a static space, so TPE,
NSGA-II and the importance evaluators see every parameter in every trial; the
price is that ``<name>_log`` is still drawn, and ignored, when ``<name>_zero``
is True). Used by the search's plan (:mod:`harness.study.search`) and its
report (:mod:`harness.tables.search`).
"""
from __future__ import annotations

from typing import Any

from harness.config import Data, Recipe, Row, Search, Study


def distributions(search: Search) -> dict[str, Any]:
    """The space as Optuna distributions (names as Optuna and the importance plot show them)."""
    from optuna.distributions import CategoricalDistribution, FloatDistribution

    out: dict[str, Any] = {}
    for name, p in search.space.items():
        if p.choice is not None:
            out[name] = CategoricalDistribution(p.choice)
        elif p.loguniform is not None and p.or_zero:
            out[f"{name}_zero"] = CategoricalDistribution([False, True])
            out[f"{name}_log"] = FloatDistribution(*p.loguniform, log=True)
        elif p.loguniform is not None:
            out[name] = FloatDistribution(*p.loguniform, log=True)
        elif p.uniform is not None:  # one of the three is always set (SearchParam._one_kind)
            out[name] = FloatDistribution(*p.uniform)
    return out


def decode(search: Search, params: dict[str, Any]) -> dict[str, Any]:
    """Optuna's params -> the value of each space key (``<name>_zero`` True gives exactly 0)."""
    out = {}
    for name, p in search.space.items():
        if p.or_zero:
            out[name] = 0.0 if params[f"{name}_zero"] else params[f"{name}_log"]
        else:
            out[name] = params[name]
    return out


def base_row(study: Study) -> tuple[str, Row]:
    return next(iter(study.rows.items()))


def sampled_row(study: Study, values: dict[str, Any]) -> Row:
    """The base row with the sampled block options and recipe keys applied."""
    name, row = base_row(study)
    recipe = {**row.recipe, **{k: v for k, v in values.items() if k in Recipe.model_fields}}
    options = {k: v for k, v in values.items() if k not in Recipe.model_fields}
    return Row.model_validate({**row.model_dump(), **options, "recipe": recipe})


def flops_input(study: Study) -> tuple[int, int]:
    """(frames, size) GFLOPs are counted at: the paper profile's input, else the first profile's."""
    data: Data = (study.profiles.get("paper") or next(iter(study.profiles.values()))).data
    return data.frames, data.size


def fmt(value: Any) -> str:
    if isinstance(value, float) and 0 < value < 1 and abs(1 / value - round(1 / value)) < 1e-9:
        return f"1/{round(1 / value)}"  # proportions as the paper writes them
    return f"{value:.3g}" if isinstance(value, float) else str(value)


def label(search: Search, values: dict[str, Any], number: int) -> str:
    """``#3 spatial_rf=5 temporal_rf=7 proportion=1/4 fusion=learned``: the block options a sample sets."""
    parts = [f"{k}={fmt(v)}" for k, v in values.items() if k not in Recipe.model_fields]
    return " ".join([f"#{number}", *parts])
