"""Profiles are the user's, rows train their own backbone, and config errors say what to fix (issue 20).

Fast and without Ray: study files are validated, trials resolved, and the
module a trial trains is built once (ResNet-101, on CPU, no forward).
"""
from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from pydantic import ValidationError

from harness.cli import main
from harness.config import (ConfigError, Recipe, Study, TrainConfig, backbone_differs, lineage, load_study,
                            load_train, row_data, trained_archs, trained_backbone, trial_config)
from harness.errors import describe
from harness.preflight import PreflightError, check_profile

ROOT = Path(__file__).resolve().parents[1]
SOURCES = {k: f"assumed: test value of {k}" for k in Recipe.model_fields}


def study_dict(**top) -> dict:
    laptop = {"backbone": {"arch": "tiny", "width": 4}, "data": {"format": "synth", "root": "work/data/s",
                                                                 "frames": 4, "size": 16},
              "recipe": {"epochs": 1, "batch_size": 4, "lr": 0.05}, "seeds": 2, "resources": {"cpu": 1}}
    paper = {"backbone": {"arch": "resnet50", "pretrained": {"resnet50": "/w/r50.pth", "resnet101": "/w/r101.pth"}},
             "data": {"format": "sthv1", "root": "/data/v1", "annotations": "/data/v1-ann", "frames": 8, "size": 112},
             "recipe": {"epochs": 50, "batch_size": 64, "lr": 0.01}, "seeds": 1,
             "resources": {"cpu": 8, "gpu": 1}, "provenance": dict(SOURCES)}
    rows = {"GST": {"block": "gst"}, "GST-R101": {"block": "gst", "backbone": "resnet101"},
            "Ours": {"block": "vps", "proportion": 0.25, "data": {"paper": {"frames": 16}}}}
    return {"name": "mini", "paper": "results/paper/table1.csv", "profiles": {"laptop": laptop, "paper": paper},
            "rows": rows, **top}


def write(tmp_path: Path, d: dict, name: str = "study.yaml") -> Path:
    path = tmp_path / name
    path.write_text(yaml.safe_dump(d, sort_keys=False))
    return path


def one_line(path: Path, exc: BaseException) -> str:
    line = describe(path, exc)
    assert "\n" not in line, line
    return line


# ----------------------------------------------------------------------------- 1. row backbones


def test_a_row_trains_its_own_backbone_with_its_own_weights():
    """GST-R101 under the paper profile: the trial is ResNet-101 with the resnet101 checkpoint, and the module
    train.create_model builds from it has ResNet-101's 23 bottlenecks in layer3."""
    from harness.train import create_model

    study = Study.model_validate(study_dict())
    r101, r50 = trial_config(study, "paper", "GST-R101", 0), trial_config(study, "paper", "GST", 0)
    assert (r101.backbone.arch, r101.backbone.pretrained) == ("resnet101", "/w/r101.pth")
    assert (r50.backbone.arch, r50.backbone.pretrained) == ("resnet50", "/w/r50.pth")
    model = create_model(r101, num_classes=174)
    assert len(model.layer3) == 23 and len(create_model(r50, num_classes=174).layer3) == 6
    assert trained_backbone(study, "paper", "GST-R101") == "resnet101"
    assert trained_archs(study, "paper") == {"resnet50", "resnet101"}


def test_the_laptop_keeps_its_tiny_backbone_and_flags_the_rows_that_asked_for_another():
    study = Study.model_validate(study_dict())
    assert {trial_config(study, "laptop", r, 0).backbone.arch for r in study.rows} == {"tiny"}
    assert [r for r in study.rows if backbone_differs(study, "laptop", r)] == ["GST-R101"]
    assert not any(backbone_differs(study, "paper", r) for r in study.rows)
    assert trained_archs(study, "laptop") == {"tiny"}


def test_a_paper_profile_on_resnet101_trains_unnamed_rows_on_it_and_says_so():
    d = study_dict()
    d["profiles"]["paper"]["backbone"]["arch"] = "resnet101"
    study = Study.model_validate(d)
    assert trained_backbone(study, "paper", "GST") == "resnet101"  # the profile's arch
    assert backbone_differs(study, "paper", "GST")  # its params / GFLOPs columns count resnet50
    assert not backbone_differs(study, "paper", "GST-R101")


def test_shipped_table1_trains_gst_r101_on_resnet101_with_imagenet_r101(monkeypatch):
    monkeypatch.setenv("IMAGENET_R50", "/ckpt/r50.pth")
    monkeypatch.setenv("IMAGENET_R101", "/ckpt/r101.pth")
    study = load_study(ROOT / "studies" / "table1.yaml")
    for profile in ("paper", "ssv2"):
        cfg = trial_config(study, profile, "GST-R101", 0)
        assert (cfg.backbone.arch, cfg.backbone.pretrained) == ("resnet101", "/ckpt/r101.pth")
        assert trial_config(study, profile, "GST", 0).backbone.pretrained == "/ckpt/r50.pth"
    assert trial_config(study, "laptop", "GST-R101", 0).backbone.arch == "tiny"


def test_one_checkpoint_path_cannot_serve_a_row_on_another_arch(tmp_path):
    d = study_dict()
    d["profiles"]["paper"]["backbone"]["pretrained"] = "/w/r50.pth"  # the old form: the weights of arch
    path = write(tmp_path, d)
    with pytest.raises(ValidationError) as err:
        load_study(path)
    line = one_line(path, err.value)
    assert re.fullmatch(r".+study\.yaml:\d+: profiles\.paper\.backbone\.pretrained: rows\.GST-R101 trains "
                        r"resnet101, but this names ImageNet weights for resnet50 only; .+resnet101: .+", line), line
    d["rows"].pop("GST-R101")
    assert load_study(write(tmp_path, d)).profiles["paper"].backbone.pretrained == "/w/r50.pth"  # still valid


def test_weights_named_by_an_unknown_arch_suggest_the_closest(tmp_path):
    d = study_dict()
    d["profiles"]["paper"]["backbone"]["pretrained"] = {"resnet50": "/w/r50.pth", "resnet10": "/w/r101.pth"}
    path = write(tmp_path, d)
    with pytest.raises(ValidationError) as err:
        load_study(path)
    line = one_line(path, err.value)
    assert "profiles.paper.backbone.pretrained.resnet10: not a backbone; did you mean 'resnet101'?" in line


def test_a_train_file_with_one_path_per_arch_keeps_its_own_arch_s_path():
    cfg = TrainConfig.model_validate({"backbone": {"arch": "resnet101", "pretrained": {"resnet50": "a",
                                                                                       "resnet101": "b"}},
                                      "data": {"format": "synth", "root": "x"}, "row": {"block": "tsn"}})
    assert cfg.backbone.pretrained == "b"
    with pytest.raises(ValidationError, match="the backbone is resnet101, but this names ImageNet weights for "):
        TrainConfig.model_validate({"backbone": {"arch": "resnet101", "pretrained": {"resnet50": "a"}},
                                    "data": {"format": "synth", "root": "x"}, "row": {"block": "tsn"}})


def test_preflight_checks_the_weights_of_the_archs_the_rows_train(tmp_path):
    (tmp_path / "r50.pth").write_bytes(b"")
    d = study_dict()
    d["profiles"]["paper"]["backbone"]["pretrained"] = {"resnet50": str(tmp_path / "r50.pth"),
                                                        "resnet101": "${NO_SUCH_R101_VAR}"}
    d["profiles"]["paper"]["data"] = {"format": "synth", "root": "work/data/s"}
    study = Study.model_validate(d)
    prof = study.profiles["paper"]
    with pytest.raises(PreflightError, match="NO_SUCH_R101_VAR is not set") as err:
        check_profile(prof, "paper", archs=trained_archs(study, "paper"))
    assert err.value.keys == ("profiles", "paper", "backbone", "pretrained", "resnet101")
    check_profile(prof, "paper", archs={"resnet50"})  # a study without a ResNet-101 row needs no R101 weights


# ----------------------------------------------------------------------------- 2. profiles are the user's


def test_any_profile_name_works_and_needs_no_provenance():
    d = study_dict()
    d["profiles"]["my-cluster.v2"] = d["profiles"].pop("paper") | {"provenance": {}}
    d["rows"]["Ours"]["data"] = {"my-cluster.v2": {"frames": 16}}
    study = Study.model_validate(d)
    assert study.profiles["my-cluster.v2"].recipe_sources()["lr"] == "unstated"
    assert trial_config(study, "my-cluster.v2", "Ours", 0).data.frames == 16
    assert trial_config(study, "my-cluster.v2", "Ours", 0).name == "mini/my-cluster.v2/Ours/seed0"


def test_a_profile_name_that_cannot_be_a_key_is_refused(tmp_path):
    d = study_dict()
    d["profiles"]["a/b"] = d["profiles"]["laptop"]
    path = write(tmp_path, d)
    with pytest.raises(ValidationError) as err:
        load_study(path)
    assert re.fullmatch(r".+study\.yaml:\d+: profiles\.a/b: profile names may hold .+", one_line(path, err.value))


def test_extends_merges_sections_one_level_and_replaces_the_rest():
    d = study_dict()
    d["profiles"]["ssv2"] = {"extends": "paper", "seeds": 3,
                             "data": {"format": "sthv2", "root": "/data/v2", "annotations": "/data/v2-ann"},
                             "recipe": {"epochs": 30}, "provenance": {"epochs": "assumed: v2 converges sooner"},
                             "resources": {"gpu": 2},
                             "backbone": {"pretrained": {"resnet50": "/w/r50b.pth", "resnet101": "/w/r101b.pth"}}}
    study = Study.model_validate(d)
    base, ssv2 = study.profiles["paper"], study.profiles["ssv2"]
    assert (ssv2.data.format, ssv2.data.root, ssv2.data.frames, ssv2.data.size) == ("sthv2", "/data/v2", 8, 112)
    assert (ssv2.recipe.epochs, ssv2.recipe.batch_size, ssv2.recipe.lr) == (30, 64, 0.01)
    assert (ssv2.resources.cpu, ssv2.resources.gpu, ssv2.seeds) == (8, 2, 3)
    assert ssv2.backbone.arch == "resnet50" and trial_config(study, "ssv2", "GST-R101", 0).backbone.pretrained \
        == "/w/r101b.pth"
    assert ssv2.extends == "paper" and lineage(study.profiles, "ssv2") == ["ssv2", "paper"]
    assert base.data.format == "sthv1" and base.seeds == 1  # the base is untouched
    assert row_data(study, "ssv2", "Ours").frames == 16  # the row's paper override follows the profile that extends it
    assert ssv2.provenance == {**base.provenance, "epochs": "assumed: v2 converges sooner"}


def test_a_recipe_value_changed_by_an_extending_profile_needs_its_own_source(tmp_path):
    d = study_dict()
    d["profiles"]["fast"] = {"extends": "paper", "recipe": {"lr": 0.02}}
    path = write(tmp_path, d)
    with pytest.raises(ValidationError) as err:
        load_study(path)
    line = one_line(path, err.value)
    assert re.fullmatch(r".+study\.yaml:\d+: profiles\.fast\.provenance: say where each recipe value comes from.+"
                        r"changes from 'paper' needs its own entry\); missing: lr", line), line
    d["profiles"]["fast"]["provenance"] = {"lr": "assumed: a faster schedule"}
    assert load_study(write(tmp_path, d)).profiles["fast"].provenance["lr"] == "assumed: a faster schedule"
    del d["paper"]  # no paper figures to compare with: a missing source is "unstated", never a stop
    del d["profiles"]["fast"]["provenance"]
    assert load_study(write(tmp_path, d)).profiles["fast"].recipe_sources()["lr"] == "unstated"


def test_a_changed_arch_does_not_inherit_one_path_as_its_weights():
    d = study_dict()
    d["profiles"]["paper"]["backbone"]["pretrained"] = "/w/r50.pth"
    d["rows"].pop("GST-R101")
    d["profiles"]["deep"] = {"extends": "paper", "backbone": {"arch": "resnet101"}}
    with pytest.raises(ValidationError, match="rows.GST trains resnet101, but this names ImageNet weights for "
                                              "resnet50 only"):
        Study.model_validate(d)


@pytest.mark.parametrize("extends, message", [
    ("papr", "no profile 'papr' to extend; did you mean 'paper'?"),
    ("loop", "profiles extend each other in a circle: loop -> paper2 -> loop"),
])
def test_a_bad_extends_names_its_line(tmp_path, extends, message):
    d = study_dict()
    d["profiles"]["loop"] = {"extends": "paper2"}
    d["profiles"]["paper2"] = {"extends": extends}
    path = write(tmp_path, d)
    with pytest.raises(ValidationError) as err:
        load_study(path)
    line = one_line(path, err.value)
    lineno = path.read_text().splitlines().index(f"    extends: {extends}") + 1  # paper2's
    assert line.startswith(f"{path}:{lineno}: profiles.paper2.extends: {message}"), line


def test_a_search_budget_is_inherited_by_an_extending_profile():
    study = load_study(ROOT / "studies" / "rf_search.yaml")
    d = yaml.safe_load((ROOT / "studies" / "rf_search.yaml").read_text())
    d["profiles"]["big"] = {"extends": "paper", "seeds": 1}
    big = Study.model_validate(d)
    assert big.search.budget["big"] == study.search.budget["paper"]


def test_table1_ships_a_something_something_v2_profile():
    study = load_study(ROOT / "studies" / "table1.yaml")
    paper, ssv2 = study.profiles["paper"], study.profiles["ssv2"]
    assert ssv2.extends == "paper"
    assert (ssv2.data.format, ssv2.data.root, ssv2.data.annotations) == ("sthv2", "${STHV2_ROOT}",
                                                                         "${STHV2_ANNOTATIONS}")
    assert ssv2.data.model_dump(exclude={"format", "root", "annotations"}) == \
        paper.data.model_dump(exclude={"format", "root", "annotations"})
    assert ssv2.model_dump(exclude={"data", "extends"}) == paper.model_dump(exclude={"data", "extends"})
    assert not ssv2.data.flip  # Something-Something has left/right classes


def test_a_study_with_a_profile_of_its_own_name_dry_runs(tmp_path, monkeypatch, capsys):
    from harness import profile

    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(profile, "_profile", lambda block, options, backbone, num_classes, frames, sizes: {
        "params": 1, "params_backbone": 1, "params_blocks": 0, "params_head": 0,
        "gflops": {str(s): 1.0 for s in sizes}, "gflops_per_frame": {str(s): 1.0 for s in sizes},
        "fusion_params": None, "ir_interactions": None, "ir_interactions_all": None, "skipped_ops": []})
    d = study_dict()
    d["profiles"] = {"mine": d["profiles"]["laptop"], "quick": {"extends": "mine", "seeds": 1}}
    d["rows"]["Ours"].pop("data")
    write(tmp_path, d)
    assert main(["run", "study.yaml", "--profile", "quick", "--dry-run"]) == 0
    out = capsys.readouterr().out
    assert "3 rows x 1 seeds = 3 trials, profile quick" in out and "mini/quick/GST-R101/seed0" in out


# ----------------------------------------------------------------------------- 8. errors a user meets


@pytest.mark.parametrize("edit, line_of, message", [
    (lambda d: d.update(colour="red"), "colour:", "colour: unknown key; valid keys: name, kind, paper,"),
    (lambda d: d["profiles"]["laptop"]["data"].update(fromat="synth"), "fromat:",
     "profiles.laptop.data.fromat: unknown key; did you mean 'format'? valid keys: format, root, annotations,"),
    (lambda d: d["profiles"]["laptop"].update(extend="paper"), "extend:",
     "profiles.laptop.extend: unknown key; did you mean 'extends'? valid keys: extends, backbone, data,"),
    # a misspelt required key: reported as the typo it is, not as "format: Field required"
    (lambda d: d["profiles"]["laptop"]["data"].update(fromat=d["profiles"]["laptop"]["data"].pop("format")),
     "fromat:", "profiles.laptop.data.fromat: unknown key; did you mean 'format'? valid keys: format, root,"),
])
def test_an_unknown_key_lists_the_valid_ones_and_the_closest(tmp_path, capsys, edit, line_of, message):
    d = study_dict()
    d["profiles"]["paper"]["data"] = {"format": "synth", "root": "work/data/s"}  # no data paths to check
    edit(d)
    path = write(tmp_path, d)
    lineno = next(i for i, text in enumerate(path.read_text().splitlines(), 1) if text.strip().startswith(line_of))
    assert main(["run", str(path), "--dry-run"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith(f"error: {path}:{lineno}: {message}"), err


@pytest.mark.parametrize("content", [b"name: caf\xe9\n", "name: x\n".encode("utf-16"), b"name: x\x00y\n",
                                     b"\x89PNG\r\n\x1a\n\x00\x00"])
@pytest.mark.parametrize("command", ["run", "train"])
def test_a_file_that_is_not_utf8_text_is_one_line(tmp_path, capsys, content, command):
    path = tmp_path / "bad.yaml"
    path.write_bytes(content)
    assert main([command, str(path)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and re.fullmatch(rf"error: {re.escape(str(path))}: not UTF-8 text \(.+ on line \d+.*\); "
                                          r"a study or train file is YAML saved as UTF-8", err[0]), err


def test_run_on_a_train_config_and_train_on_a_study_say_which_command(capsys, monkeypatch):
    monkeypatch.chdir(ROOT)
    assert main(["run", "studies/smoke.yaml"]) == 2
    assert capsys.readouterr().err.strip() == ("error: studies/smoke.yaml: this is a train config (row:, not rows:); "
                                               "use `harness train studies/smoke.yaml`")
    assert main(["train", "studies/table1.yaml"]) == 2
    assert capsys.readouterr().err.strip() == ("error: studies/table1.yaml: this is a study (rows:, not row:); "
                                               "use `harness run studies/table1.yaml`")
    with pytest.raises(ConfigError, match="use `harness train"):
        load_study("studies/smoke.yaml")
    with pytest.raises(ConfigError, match="use `harness run"):
        load_train("studies/table1.yaml")


def test_config_does_not_import_the_synth_generator():
    """One direction only: harness.data.synth takes its ranges from harness.config, never the reverse."""
    code = "import sys, harness.config; print('harness.data.synth' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=ROOT)
    assert out.stdout.strip() == "False"
    from harness.config import SIZE_RANGE, SPEED_RANGE, Synth
    from harness.data import synth

    assert (synth.SIZE_RANGE, synth.SPEED_RANGE) == (SIZE_RANGE, SPEED_RANGE) == ((0.12, 0.32), (0.015, 0.06))
    assert Synth().train_size == SIZE_RANGE
