"""``harness data inspect``: every entry opened, unreadable ones listed, exit codes 0 / 1 / 2."""
from __future__ import annotations

import json

from harness.cli import main

from conftest import SYNTH_ARGS


def run(capsys, *argv):
    code = main(["data", "inspect", *argv])
    out, err = capsys.readouterr()
    return code, out, err


def test_json_on_synth_reports_every_clip_readable(data_synth_dir, capsys):
    root = data_synth_dir
    for split, n in (("train", 30), ("val", 10)):
        code, out, _ = run(capsys, "--format", "sthv2", "--root", str(root / "videos"), "--annotations", str(root),
                           "--split", split, "--json")
        report = json.loads(out)
        assert code == 0
        assert report["entries"] == report["readable"] == n and report["unreadable"] == []
        assert report["classes"] == 10
        assert report["frames"] == {"min": SYNTH_ARGS["frames"], "median": SYNTH_ARGS["frames"],
                                    "max": SYNTH_ARGS["frames"]}


def _set_with_bad_files(tmp_path, media, n=10, truncated=(2,), missing=(5,), garbage=(7,)):
    (tmp_path / "labels.json").write_text(json.dumps({"a": "0"}))
    (tmp_path / "validation.json").write_text(json.dumps([{"id": str(i), "template": "a"} for i in range(n)]))
    for i in range(n):
        path = tmp_path / "v" / f"{i}.webm"
        if i in missing:
            continue
        media.write_video(path, media.indexed_frames(24, 32))
        if i in truncated:
            media.truncate(path)
        if i in garbage:
            path.write_bytes(path.read_bytes()[:64] + b"\x17" * 4000)
    return tmp_path


def test_unreadable_files_are_listed_and_fail_above_the_limit(tmp_path, data_media, capsys):
    root = _set_with_bad_files(tmp_path, data_media)
    args = ["--format", "sthv2", "--root", str(root / "v"), "--annotations", str(root), "--json"]
    code, out, _ = run(capsys, *args)
    report = json.loads(out)
    assert code == 1  # 3 of 10 > 1%
    assert sorted(report["unreadable"]) == sorted(str(root / "v" / f"{i}.webm") for i in (2, 5, 7))
    assert report["readable"] == 7 and report["entries"] == 10
    reasons = " ".join(report["reasons"])
    assert "truncated" in reasons and "missing" in reasons
    code, out, _ = run(capsys, *args, "--max-bad-fraction", "0.3")
    assert code == 0 and json.loads(out)["ok"]


def test_text_report(tmp_path, data_media, capsys):
    root = _set_with_bad_files(tmp_path, data_media, n=4, truncated=(), missing=(1,), garbage=())
    code, out, _ = run(capsys, "--format", "sthv2", "--root", str(root / "v"), "--annotations", str(root),
                       "--max-bad-fraction", "0.5")
    assert code == 0
    assert "4 entries, 1 classes, 3 readable, 1 unreadable" in out
    assert "frames min/median/max: 24/24/24" in out and "1.webm: missing" in out


def test_unusable_arguments_exit_2_with_one_line(tmp_path, capsys):
    code, out, err = run(capsys, "--format", "k400", "--root", str(tmp_path), "--annotations", str(tmp_path / "no"))
    assert code == 2 and out == ""
    assert err.startswith("error: annotations folder") and err.count("\n") == 1
    (tmp_path / "labels.json").write_text("{not json")
    code, _, err = run(capsys, "--format", "sthv2", "--root", str(tmp_path), "--annotations", str(tmp_path))
    assert code == 2 and err.startswith("error: ") and "labels.json: not valid JSON" in err
    code, _, err = run(capsys, "--format", "sthv2", "--root", str(tmp_path), "--annotations", str(tmp_path),
                       "--max-bad-fraction", "2")
    assert code == 2 and "--max-bad-fraction" in err
