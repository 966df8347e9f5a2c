"""The typed trial goes unchanged from the plan to Ray Tune's config, to its MLflow tags, and back to the tables."""
from __future__ import annotations

import pickle

import pytest

from harness import names
from harness.config import Study
from harness.study import grid
from harness.trial import TrialIdentity, TrialSpec
from harness.tune.experiment import entry, spec_of, trial_name


@pytest.fixture
def specs(monkeypatch) -> list[TrialSpec]:
    monkeypatch.setattr(grid, "profile_rows", lambda study, sizes, name: {
        row: {"params": 1, "gflops": {str(s): 1.0 for s in sizes}} for row in study.rows})
    study = Study.model_validate({
        "name": "mini", "kind": "probe", "num_classes": 4,
        "profiles": {"laptop": {"backbone": {"arch": "tiny", "width": 4}, "seeds": 2,
                                "data": {"format": "synth", "root": "x", "frames": 4, "size": 16}}},
        "rows": {"TSN": {"block": "tsn"}, "Ours": {"block": "vps", "proportion": 0.25}},
        "regimes": {"shift": {"train_size": [0.2, 0.25]}}})
    return grid.plan(study, "laptop", study.profiles["laptop"]).trials


def test_a_spec_read_back_from_its_tags_is_the_same_trial(specs):
    identity = set(TrialIdentity.model_fields)
    for spec in specs:
        tags = spec.tags()
        assert tags[names.TRIAL_KEY] == spec.key and tags[names.BLOCK] == spec.block
        assert TrialIdentity.from_tags(tags) == TrialIdentity(**spec.model_dump(include=identity))
    assert {s.key for s in specs} == {f"mini/laptop/{row}/shift/seed{seed}" for row in ("TSN", "Ours")
                                      for seed in (0, 1)}


def test_a_spec_travels_through_tune_and_pickling_unchanged(specs):
    for spec in specs:
        config = {"trial": entry(spec)}
        assert spec_of(pickle.loads(pickle.dumps(config))) == spec  # what Ray does to a trial's config
        assert trial_name(type("Trial", (), {"config": config})()) == f"{spec.label}-seed{spec.seed}"
