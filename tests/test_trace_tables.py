"""Tables say how and on what their numbers were measured: protocol and data fingerprint in the header,
rows that differ flagged, and which epoch the paper's figures are."""
from __future__ import annotations

import pytest

from conftest import study_runs_of, trial_run

from harness.config import Study
from harness.tables import grid as tables

FP_A, FP_B = "a" * 16, "b" * 16


def study(**extra) -> Study:
    return Study.model_validate({
        "name": "mini", "num_classes": 4, **extra,
        "profiles": {"laptop": {"backbone": {"arch": "tiny", "width": 4},
                                "data": {"format": "synth", "root": "x", "frames": 4, "size": 16}}},
        "rows": {"TSN": {"block": "tsn"}, "TSM": {"block": "tsm"}}})


def trial(row: str, seed: int, *, protocol: str | None = "4f-16-1x1", fingerprint: str | None = FP_A,
          params: dict | None = None, last: float = 50.0, best: float = 60.0, regime: str | None = None):
    tags = {"harness.row": row, "harness.seed": str(seed), **({"harness.regime": regime} if regime else {})}
    if protocol:
        tags["harness.protocol"] = protocol
    if fingerprint:
        tags["harness.data_fingerprint"] = fingerprint
    key = f"mini/laptop/{row}/{regime}/seed{seed}" if regime else f"mini/laptop/{row}/seed{seed}"
    return trial_run(key, tags=tags, params=params, run_id=f"{row}{seed}",
                     metrics={"last_top1": last, "best_top1": best, "val_top5": 90.0, "best_epoch": 1.0, "epoch": 2.0},
                     history={1: best, 2: last})


def runs(*trials):
    return study_runs_of(*trials, tags={"harness.seeds": "2"})


def md(s: Study, r) -> str:
    return tables.render(s, "laptop", r)[2]["md"]


def test_header_names_the_protocol_and_the_data_fingerprint():
    text = md(study(), runs(*(trial(row, s) for row in ("TSN", "TSM") for s in (0, 1))))
    header = text.splitlines()[2]
    assert "protocol 4f-16-1x1" in header and f"data fingerprint {FP_A}" in header
    assert "⚠" not in text and "| protocol" not in text and "| data" not in text  # nothing to flag


def test_a_row_tested_with_another_protocol_is_flagged_not_mixed_in():
    text = md(study(), runs(trial("TSN", 0), trial("TSN", 1), trial("TSM", 0, protocol="8f-16-1x1"),
                            trial("TSM", 1, protocol="8f-16-1x1"), trial("TSM", 2)))
    assert "protocol 4f-16-1x1" in text.splitlines()[2]  # the majority of finished trials
    tsm = next(line for line in text.splitlines() if line.startswith("| TSM"))
    tsn = next(line for line in text.splitlines() if line.startswith("| TSN"))
    assert "4f-16-1x1 + 8f-16-1x1 ⚠" in tsm and "⚠" not in tsn
    assert "⚠ protocol: the runs of TSM were tested with a protocol other than the header's, 4f-16-1x1" in text


def test_protocol_of_runs_without_the_tag_comes_from_their_data_params():
    params = {"data.frames": "8", "data.size": "112", "data.test_clips": "2", "data.test_crops": "3"}
    text = md(study(), runs(trial("TSN", 0, protocol=None, params=params),
                            trial("TSM", 0, protocol=None, params=params)))
    assert "protocol 8f-112-2x3" in text.splitlines()[2]


def test_rows_whose_runs_used_another_data_copy_are_flagged():
    s = study()
    r = runs(trial("TSN", 0), trial("TSN", 1), trial("TSM", 0), trial("TSM", 1, fingerprint=FP_B))
    frame, h, texts = tables.render(s, "laptop", r)
    assert h["data"] == FP_A
    assert frame.set_index("row")["data_fingerprint_differs"].to_dict() == {"TSN": False, "TSM": True}
    assert frame.set_index("row").loc["TSM", "data_fingerprint"] == f"{FP_A} + {FP_B}"
    assert f"{FP_A} + {FP_B} ⚠" in texts["md"] and "⚠ data: the runs of TSM read data whose fingerprint differs from the header's" in texts["md"]
    assert "data_fingerprint_differs" in texts["csv"].splitlines()[0]


def test_same_fingerprint_everywhere_is_not_flagged_and_missing_is_said():
    frame, h, _ = tables.render(study(), "laptop", runs(trial("TSN", 0, fingerprint=None),
                                                        trial("TSM", 0, fingerprint=None)))
    assert h["data"] == "not recorded" and not frame["data_fingerprint_differs"].any()


def test_probe_regimes_each_have_their_own_data_and_are_not_flagged_for_it():
    s = Study.model_validate({
        "name": "mini", "kind": "probe", "num_classes": 4,
        "profiles": {"laptop": {"backbone": {"arch": "tiny", "width": 4},
                                "data": {"format": "synth", "root": "x", "frames": 4, "size": 16}}},
        "rows": {"TSN": {"block": "tsn"}}, "regimes": {"small": {}, "large": {}}})
    trials = [trial("TSN", 0, fingerprint=fp, regime=regime) for regime, fp in (("small", FP_A), ("large", FP_B))]
    frame, h, _ = tables.render(s, "laptop", runs(*trials))
    assert not frame["data_fingerprint_differs"].any()
    assert FP_A in h["data"] and FP_B in h["data"]


@pytest.mark.parametrize("paper_epoch, says", [
    ("best", "best-epoch top-1 (study paper_epoch: best)"),
    ("last", "last-epoch top-1 (study paper_epoch: last)"),
    ("unstated", "does not say which epoch"),
])
def test_the_table_says_which_epoch_the_paper_figures_are(tmp_path, paper_epoch, says):
    (tmp_path / "paper.csv").write_text("row,paper_top1\nTSN,40\nTSM,45\n")
    s = study(paper=str(tmp_path / "paper.csv"), paper_epoch=paper_epoch)
    frame, _, texts = tables.render(s, "laptop", runs(trial("TSN", 0, last=50.0, best=60.0),
                                                      trial("TSM", 0, last=50.0, best=60.0)))
    assert says in texts["md"]
    ours = 60.0 if paper_epoch == "best" else 50.0  # Δ compares like with like
    assert frame.set_index("row")["delta_top1"].to_dict() == pytest.approx({"TSN": ours - 40, "TSM": ours - 45})
    assert set(frame.columns) >= {"top1_mean", "best_top1_mean"}  # both epochs are in every table


def test_paper_epoch_defaults_to_unstated_and_rejects_other_values():
    assert study().paper_epoch == "unstated"
    with pytest.raises(ValueError, match="paper_epoch"):
        study(paper_epoch="final")


def test_rows_that_set_their_own_protocol_show_it_per_row_and_are_not_flagged():
    s = study()
    s = s.model_copy(update={"rows": {**s.rows, "TSM": s.rows["TSM"].model_validate(
        {"block": "tsm", "data": {"laptop": {"frames": 8}}})}})
    frame, h, texts = tables.render(s, "laptop", runs(trial("TSN", 0), trial("TSM", 0, protocol="8f-16-1x1")))
    assert h["protocol"].startswith("per row") and "⚠" not in texts["md"]
    assert frame.set_index("row")["protocol"].to_dict() == {"TSN": "4f-16-1x1", "TSM": "8f-16-1x1"}


def test_a_flagged_protocol_is_marked_in_one_protocol_column():
    shown = tables.render(study(), "laptop", runs(trial("TSN", 0), trial("TSN", 1),
                                                  trial("TSM", 0, protocol="8f-16-1x1")))[2]["md"]
    head = next(line for line in shown.splitlines() if line.startswith("| row"))
    assert head.count("protocol") == 1


def test_commit_is_dirty_for_code_changes_but_not_for_regenerated_results(tmp_path):
    import subprocess

    from harness.tracking import git_commit

    def git(*args):
        subprocess.run(["git", "-c", "user.name=t", "-c", "user.email=t@t", *args], cwd=tmp_path, check=True,
                       capture_output=True)

    (tmp_path / "results").mkdir()
    (tmp_path / "results" / "t.md").write_text("old\n")
    (tmp_path / "code.py").write_text("x = 1\n")
    git("init", "-q")
    git("add", ".")
    git("commit", "-qm", "c")
    clean = git_commit(tmp_path)
    assert not clean.endswith("+dirty")
    (tmp_path / "results" / "t.md").write_text("regenerated\n")
    assert git_commit(tmp_path) == clean
    (tmp_path / "code.py").write_text("x = 2\n")
    assert git_commit(tmp_path) == clean + "+dirty"
