"""Recipe provenance and linear lr scaling: validated in the study, warned about in `harness run`,
and logged (resolved recipe and sources) on the MLflow parent run. No Ray is started here."""
from __future__ import annotations

import argparse
import logging

import pytest
import yaml

from harness.cli import commands
from harness.config import Recipe, Study
from harness.study import engine, grid
from harness.study.plan import RunOptions
from harness.tracking import NewChild, Tracker
from harness.trial import TrialSpec

SOURCES = {k: f"assumed: test value of {k}" for k in Recipe.model_fields} | {
    "lr": "paper: Sec. 4 (0.01)", "batch_size": "paper: Sec. 4 (64)", "momentum": "reference-code: tsm"}


def study_dict(**recipe) -> dict:
    paper = {"backbone": {"arch": "tiny", "width": 4, "pretrained": "/ckpt/r50.pth"},
             "data": {"format": "synth", "root": "/data/synth", "frames": 4, "size": 16},
             "recipe": {"epochs": 3, "batch_size": 64, "lr": 0.01, "reference_batch": 64, **recipe},
             "provenance": dict(SOURCES)}
    laptop = {"backbone": {"arch": "tiny", "width": 4}, "data": {"format": "synth", "root": "/data/synth"},
              "recipe": {"epochs": 2, "batch_size": 8, "lr": 0.05}}
    return {"name": "mini", "num_classes": 4, "profiles": {"laptop": laptop, "paper": paper},
            "rows": {"TSN": {"block": "tsn"}, "TSM": {"block": "tsm", "recipe": {"lr": 0.02}}}}


def plan(profile: str = "paper", **recipe) -> grid.GridPlan:
    study = Study.model_validate(study_dict(**recipe))
    return grid.plan(study, profile, study.profiles[profile])


def trials(profile: str = "paper", **recipe) -> list[TrialSpec]:
    return plan(profile, **recipe).trials


# ----------------------------------------------------------------------------- lr scaling


def test_lr_follows_the_batch_linearly_by_default():
    r = Recipe(batch_size=20, lr=0.01, reference_batch=64)
    assert r.scale_lr and r.effective_lr == pytest.approx(0.003125)
    assert Recipe(batch_size=20, lr=0.01, reference_batch=64, scale_lr=False).effective_lr == 0.01
    assert Recipe(batch_size=20, lr=0.01).effective_lr == 0.01  # no reference batch: nothing to scale to


def test_the_optimizer_gets_the_scaled_lr():
    import torch

    from harness.train import param_groups

    model = torch.nn.Sequential()
    model.conv, model.fc = torch.nn.Conv2d(2, 2, 1), torch.nn.Linear(2, 2)  # TSM's groups need an fc head
    for tsm in (False, True):
        groups = param_groups(model, Recipe(batch_size=32, lr=0.01, reference_batch=64, tsm_param_groups=tsm),
                              from_imagenet=False)
        assert [g["lr"] for g in groups] == pytest.approx([0.005] * len(groups))


def test_unscaled_lr_at_another_batch_is_a_warning(caplog):
    planned = trials(batch_size=20, scale_lr=False)  # the plan warns too; count the check's own warnings
    caplog.clear()
    with caplog.at_level(logging.INFO, logger="harness.study.grid"):
        messages = grid.check_lr_scaling(planned)
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert warnings == messages and len(warnings) == 2  # TSN at lr 0.01, TSM at its own lr 0.02
    tsn = next(m for m in warnings if "TSN" in m)
    assert "batch 20 differs from the recipe's reference_batch 64" in tsn and "scale_lr is false" in tsn
    assert "the lr stays 0.01," in tsn and "0.003125" in tsn


@pytest.mark.parametrize("recipe", [{"batch_size": 20}, {"batch_size": 64, "scale_lr": False}])
def test_scaled_lr_or_the_reference_batch_is_not_a_warning(caplog, recipe):
    planned = trials(**recipe)
    with caplog.at_level(logging.INFO, logger="harness.study.grid"):
        assert grid.check_lr_scaling(planned) == []
    assert not [r for r in caplog.records if r.levelno >= logging.WARNING]
    if recipe["batch_size"] == 20:  # the scaling is said, at info level
        assert any("0.003125" in r.getMessage() for r in caplog.records)


def test_dry_run_warns_before_anything_starts(tmp_path, monkeypatch, caplog):
    d = study_dict(batch_size=20, scale_lr=False)
    (tmp_path / "mini.yaml").write_text(yaml.safe_dump(d))
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(grid, "profile_rows", lambda study, sizes, frames: {  # fvcore on R50: not this test's topic
        name: {"params": 1, "gflops": {str(s): 1.0 for s in sizes}} for name in study.rows})
    monkeypatch.setattr("harness.preflight.check_profile", lambda *a, **k: None)  # /data/synth does not exist
    args = argparse.Namespace(study="mini.yaml", profile="paper", seeds=None, address=None, max_concurrent=None,
                              resume=False, dry_run=True, storage=None, gpus=None, throughput=None,
                              until_resolved=False, max_trials=None)
    with caplog.at_level(logging.WARNING, logger="harness.study.grid"):
        assert commands.run(args) == 0
    assert any("scale_lr is false" in r.getMessage() for r in caplog.records)


# ----------------------------------------------------------------------------- provenance


def test_paper_profile_must_say_where_each_recipe_value_comes_from():
    d = study_dict()
    d["paper"] = "results/paper/mini.csv"  # compared with the paper's figures: provenance is required
    del d["profiles"]["paper"]["provenance"]["lr"]
    with pytest.raises(ValueError, match="missing: lr"):
        Study.model_validate(d)
    d["profiles"]["paper"]["provenance"]["lr"] = "my guess"
    with pytest.raises(ValueError, match="must start with one of paper, reference-code, assumed"):
        Study.model_validate(d)


@pytest.fixture
def tracker(tmp_path):
    t = Tracker(f"sqlite:///{tmp_path / 'mlflow.db'}")
    t.prepare()
    return t


def test_resolved_recipe_and_provenance_round_trip_into_mlflow(tracker):
    p = plan("paper", batch_size=16)
    parent = engine.start_parent(tracker, p, RunOptions("mini.yaml", "paper"), "abc")
    params = tracker.run(parent).params
    assert float(params["recipe.effective_lr"]) == pytest.approx(0.0025)  # 0.01 x 16 / 64
    assert params["recipe.global_batch_size"] == "16" and params["recipe.lr"] == "0.01"
    assert params["recipe.epochs"] == "3" and params["recipe.schedule"] == "step"
    assert params["recipe.pretrain"] == "/ckpt/r50.pth"
    assert {k: params[f"provenance.{k}"] for k in Recipe.model_fields} == SOURCES
    # each trial records the lr it trains with, row overrides included (TSM: 0.02 x 16 / 64)
    ids = tracker.ensure_children(parent, [NewChild.of(t) for t in p.trials])
    lrs = {t.row: float(tracker.run(ids[t.key]).params["recipe.effective_lr"]) for t in p.trials}
    assert lrs == pytest.approx({"TSN": 0.0025, "TSM": 0.005})


def test_laptop_recipe_sources_are_logged_as_unstated(tracker):
    parent = engine.start_parent(tracker, plan("laptop"), RunOptions("mini.yaml", "laptop"), "abc")
    params = tracker.run(parent).params
    assert params["provenance.lr"] == "unstated" and params["recipe.pretrain"] == "none"
    assert float(params["recipe.effective_lr"]) == 0.05 and "provenance" not in params
