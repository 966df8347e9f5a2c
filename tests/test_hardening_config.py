"""A typo fails in a second: every bad study file gives exit 2 and one line naming file, line and key.

Each case runs `harness run` in a clean folder and checks that nothing was
written there (no work/ with MLflow or Ray state, no results/) and that no Ray
session was started.
"""
import re

import pytest

from harness.cli import main

GOOD = """\
name: bad
profiles:
  laptop:
    backbone: {arch: tiny, width: 4}
    data: {format: synth, root: work/data/s, frames: 4, size: 16}
    recipe: {epochs: 1, batch_size: 4, lr: 0.01}
    seeds: 1
    resources: {cpu: 1}
rows:
  TSN: {block: tsn}
  Ours: {block: vps, proportion: 0.25}
"""

CASES = {
    "yaml syntax": (GOOD.replace("rows:", "rows: [", 1), 11, "yaml"),
    "unknown top-level key": (GOOD + "colour: red\n", 12, "colour"),
    "unknown block": (GOOD.replace("{block: tsn}", "{block: tsx}"), 10, "rows.TSN"),
    "unknown block option": (GOOD.replace("proportion: 0.25", "proprtion: 0.25"), 11, "rows.Ours.proprtion"),
    "wrong option type": (GOOD.replace("proportion: 0.25", "proportion: quarter"), 11, "rows.Ours.proportion"),
    "option on its own line": (GOOD.replace("{block: vps, proportion: 0.25}", "\n    block: tsm\n    fold_div: '8'"),
                               13, "rows.Ours.fold_div"),
    "wrong type": (GOOD.replace("epochs: 1", "epochs: ten"), 6, "profiles.laptop.recipe.epochs"),
    "negative learning rate": (GOOD.replace("lr: 0.01", "lr: -0.01"), 6, "profiles.laptop.recipe.lr"),
    "proportion outside (0, 1]": (GOOD.replace("proportion: 0.25", "proportion: 1.5"), 11, "rows.Ours"),
    "frames < 1": (GOOD.replace("frames: 4", "frames: 0"), 5, "profiles.laptop.data.frames"),
    "missing data path": (GOOD.replace("format: synth, root: work/data/s", "format: sthv2, root: /no/such/dir"),
                          5, "profiles.laptop.data.root"),
    "duplicate row names": (GOOD + "  TSN: {block: tsm}\n", 12, "yaml"),
    "seeds <= 0": (GOOD.replace("seeds: 1", "seeds: 0"), 7, "profiles.laptop.seeds"),
    "resources larger than the cluster": (GOOD.replace("cpu: 1}", "cpu: 4096}"), 8,
                                          "profiles.laptop.resources.cpu"),
    "dropout fusion without a rate": (GOOD.replace("proportion: 0.25", "fusion: dropout"), 11, "rows.Ours"),
    "no rows": (GOOD.split("rows:")[0] + "rows: {}\n", 9, "rows"),
    "python object tag": (GOOD.replace("name: bad", "name: !!python/object:os.system ls"), 1, "yaml"),
    "unset environment variable": (GOOD.replace("format: synth, root: work/data/s",
                                                "format: sthv1, root: \"${NO_SUCH_ROOT_VAR}\""), 5,
                                   "profiles.laptop.data.root"),
}


@pytest.mark.parametrize("case", CASES)
def test_bad_study_fails_fast_with_one_line_and_writes_nothing(case, tmp_path, monkeypatch, capsys):
    text, line, key = CASES[case]
    monkeypatch.chdir(tmp_path)
    (tmp_path / "study.yaml").write_text(text)
    profiled = []  # "fails fast" means before the slow work: profiling a row on ResNet-50 is the first of it
    monkeypatch.setattr("harness.profile._profile", lambda *a, **k: profiled.append(a))
    code = main(["run", "study.yaml"])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2
    assert len(err) == 1, err
    assert re.fullmatch(rf"error: study\.yaml:{line}: {re.escape(key)}[.:].+", err[0]), err[0]
    assert profiled == []
    assert sorted(p.name for p in tmp_path.iterdir()) == ["study.yaml"]  # no work/, no results/
    import ray

    assert not ray.is_initialized()
