"""``harness data fingerprint`` changes with the data (annotations, decoded pixels), not with paths or timestamps."""
from __future__ import annotations

import csv
import json
import os
import shutil

import pytest
from conftest import SYNTH_ARGS

from harness.cli import main
from harness.config import Data
from harness.data.fingerprint import FRAMES, fingerprint
from harness.data.sampling import val_indices

N, T = 6, 16  # clips per set, frames per clip
SAMPLED = ("0", "2", "4")  # every 2nd of ids 0..5 with sample=3
FRAME = int(val_indices(T, FRAMES)[2])  # a frame the fingerprint decodes


def changed(frames, at: int):
    """The same frames with one 8x8 block of frame ``at`` turned red."""
    out = frames.copy()
    out[at, 12:20, 12:20] = (255, 0, 0)
    return out


def sthv2_set(root, media):
    """Six VP9 webm clips in the sthv2 layout; returns the Data config of its val split."""
    root.mkdir(parents=True, exist_ok=True)
    (root / "labels.json").write_text(json.dumps({"a": "0", "b": "1"}))
    items = [{"id": str(i), "template": "ab"[i % 2], "label": "ab"[i % 2]} for i in range(N)]
    (root / "validation.json").write_text(json.dumps(items, indent=1))
    for i in range(N):
        media.write_video(root / "videos" / f"{i}.webm", media.indexed_frames(T))
    return Data(format="sthv2", root=str(root / "videos"), annotations=str(root))


def sthv1_set(root, media):
    """Six frame folders of jpgs in the sthv1 layout."""
    (root / "labels.csv").write_text("a\nb\n")
    (root / "validation.csv").write_text("".join(f"{i};{'ab'[i % 2]}\n" for i in range(N)))
    for i in range(N):
        media.write_frame_folder(root / "frames" / str(i), media.indexed_frames(T))
    return Data(format="sthv1", root=str(root / "frames"), annotations=str(root))


def k400_set(root, media):
    rows = [("zumba" if i % 2 else "abseiling", f"yt{i}", 0, 10, "val") for i in range(3)]
    for name in ("train.csv", "validate.csv"):
        with open(root / name, "w", newline="") as f:
            csv.writer(f).writerows([("label", "youtube_id", "time_start", "time_end", "split"), *rows])
    for label, yt, *_ in rows:
        media.write_video(root / "videos" / label / f"{yt}_000000_000010.mp4", media.indexed_frames(T))
    return Data(format="k400", root=str(root / "videos"), annotations=str(root))


def diving48_set(root, media):
    (root / "Diving48_vocab.json").write_text(json.dumps([["Back", "PIKE"], ["Forward", "TUCK"]]))
    (root / "Diving48_V2_test.json").write_text(json.dumps([{"vid_name": f"d{i}", "label": i % 2} for i in range(3)]))
    for i in range(3):
        media.write_video(root / "rgb" / f"d{i}.mp4", media.indexed_frames(T))
    return Data(format="diving48", root=str(root / "rgb"), annotations=str(root))


def list_set(root, media):
    (root / "val_videofolder.txt").write_text("".join(f"v{i} {T} {i % 2}\n" for i in range(3)))
    for i in range(3):
        media.write_frame_folder(root / f"v{i}", media.indexed_frames(T), "img_{:05d}.jpg")
    return Data(format="list", root=str(root), annotations=str(root))


@pytest.mark.parametrize("make, clips, decoder", [
    (sthv2_set, 3, "decord"), (sthv1_set, 3, "Pillow"), (k400_set, 3, "decord"),
    (diving48_set, 3, "decord"), (list_set, 3, "Pillow")])
def test_every_format_gives_a_fingerprint(tmp_path, data_media, make, clips, decoder):
    d = fingerprint(make(tmp_path, data_media), sample=3)
    assert d["clips"] == clips and d["unreadable"] == []
    assert d["decoder"].startswith(decoder + " ")
    assert len(d["fingerprint"]) == 16 and len(d["annotations"]) == len(d["pixels"]) == 64


def test_synth_is_read_as_sthv2_under_its_root(data_synth_dir):
    synth = fingerprint(Data(format="synth", root=str(data_synth_dir)), sample=4)
    sthv2 = fingerprint(Data(format="sthv2", root=str(data_synth_dir / "videos"),
                             annotations=str(data_synth_dir)), sample=4)
    assert synth["fingerprint"] == sthv2["fingerprint"] and synth["clips"] == 4


def test_one_changed_frame_of_a_sampled_video_changes_it(tmp_path, data_media):
    data = sthv2_set(tmp_path, data_media)
    # write the edited clip before anything decodes (PyAV's VP9 encoder and decord do not mix; see video.py)
    data_media.write_video(tmp_path / "edited.webm", changed(data_media.indexed_frames(T), FRAME))
    before = fingerprint(data, sample=3)
    shutil.copyfile(tmp_path / "edited.webm", tmp_path / "videos" / f"{SAMPLED[1]}.webm")
    after = fingerprint(data, sample=3)
    assert after["fingerprint"] != before["fingerprint"] and after["pixels"] != before["pixels"]
    assert after["annotations"] == before["annotations"]


def test_a_change_outside_the_sample_is_not_seen(tmp_path, data_media):
    """The documented limit: only the sampled clips are decoded (raise --sample to see more)."""
    data = sthv2_set(tmp_path, data_media)
    data_media.write_video(tmp_path / "edited.webm", changed(data_media.indexed_frames(T), FRAME))
    before = fingerprint(data, sample=3)
    shutil.copyfile(tmp_path / "edited.webm", tmp_path / "videos" / "1.webm")  # id 1 is not sampled
    assert fingerprint(data, sample=3)["fingerprint"] == before["fingerprint"]
    assert fingerprint(data, sample=N)["fingerprint"] != fingerprint(data, sample=3)["fingerprint"]


def test_one_changed_jpg_of_a_frame_folder_changes_it(tmp_path, data_media):
    from PIL import Image

    data = sthv1_set(tmp_path, data_media)
    before = fingerprint(data, sample=3)
    jpg = tmp_path / "frames" / SAMPLED[2] / f"{FRAME + 1:05d}.jpg"
    Image.fromarray(changed(data_media.indexed_frames(T), FRAME)[FRAME]).save(jpg, quality=95)
    assert fingerprint(data, sample=3)["pixels"] != before["pixels"]


def test_timestamps_and_location_do_not_change_it(tmp_path, data_media):
    data = sthv2_set(tmp_path / "a", data_media)
    before = fingerprint(data, sample=3)
    for dirpath, _, files in os.walk(tmp_path / "a"):
        for name in files:
            os.utime(os.path.join(dirpath, name), (1_000_000_000, 1_000_000_000))
    assert fingerprint(data, sample=3) == before
    shutil.copytree(tmp_path / "a", tmp_path / "copy")
    moved = Data(format="sthv2", root=str(tmp_path / "copy" / "videos"), annotations=str(tmp_path / "copy"))
    assert fingerprint(moved, sample=3)["fingerprint"] == before["fingerprint"]


def test_one_changed_annotation_line_changes_it(tmp_path, data_media):
    data = sthv2_set(tmp_path, data_media)
    before = fingerprint(data, sample=3)
    ann = tmp_path / "validation.json"
    ann.write_text(ann.read_text().replace('"label": "b"', '"label": "b!"', 1))  # a line no sampled clip reads
    after = fingerprint(data, sample=3)
    assert after["annotations"] != before["annotations"] and after["fingerprint"] != before["fingerprint"]
    assert after["pixels"] == before["pixels"]


def test_an_unreadable_sampled_clip_is_hashed_and_listed(tmp_path, data_media):
    data = sthv2_set(tmp_path, data_media)
    before = fingerprint(data, sample=3)
    (tmp_path / "videos" / f"{SAMPLED[0]}.webm").unlink()
    after = fingerprint(data, sample=3)
    assert after["fingerprint"] != before["fingerprint"]
    assert len(after["unreadable"]) == 1 and "0.webm: missing" in after["unreadable"][0]


def test_cli_json_and_text(tmp_path, data_media, capsys):
    sthv2_set(tmp_path, data_media)
    argv = ["data", "fingerprint", "--format", "sthv2", "--root", str(tmp_path / "videos"),
            "--annotations", str(tmp_path), "--sample", "3"]
    assert main(argv + ["--json"]) == 0
    d = json.loads(capsys.readouterr().out)
    assert {"fingerprint", "annotations", "pixels", "decoder", "clips"} <= set(d) and d["clips"] == 3
    assert main(argv) == 0
    text = capsys.readouterr().out
    assert text.startswith(f"fingerprint {d['fingerprint']}") and "validation.json" in text


def test_cli_unusable_arguments_exit_2(tmp_path, capsys):
    assert main(["data", "fingerprint", "--format", "sthv2", "--root", str(tmp_path / "nope")]) == 2
    assert "does not exist" in capsys.readouterr().err
    assert main(["data", "fingerprint", "--format", "sthv2", "--root", str(tmp_path), "--sample", "0"]) == 2
    assert "--sample must be >= 1" in capsys.readouterr().err


# ----------------------------------------------------------------------------- every run records it (harness run)


def run_trials(root, rows=("TSN", "TSM"), seeds=1):
    """`harness run`'s plan for a tiny study over the synth set at ``root`` (nothing is trained)."""
    from harness.config import Study
    from harness.study import grid

    study = Study.model_validate({
        "name": "mini", "num_classes": 4,
        "profiles": {"laptop": {"backbone": {"arch": "tiny", "width": 4}, "seeds": seeds,
                                "data": {"format": "synth", "root": str(root), "frames": 4, "size": 16,
                                         "synth": SYNTH_ARGS}}},  # the shared set's: never rewritten
        "rows": {r: {"block": r.lower()} for r in rows}})
    return grid.plan(study, "laptop", study.profiles["laptop"]).trials


def test_every_trial_gets_the_fingerprint_of_its_data_computed_once(data_synth_dir, monkeypatch):
    import harness.data.fingerprint as fp
    from harness.study import engine

    calls = []
    real = fp.fingerprint
    monkeypatch.setattr(engine, "fingerprint", lambda data, split: calls.append(split) or real(data, split))
    trials = run_trials(data_synth_dir, seeds=2)
    prints = engine.data_fingerprints(t.config.data for t in trials)
    assert sorted(calls) == ["train", "val"]  # 4 trials, one data copy: each split read once
    tags = {t.key: engine.trace_tags(t.config.data, prints) for t in trials}
    assert len({frozenset(v.items()) for v in tags.values()}) == 1
    one = next(iter(tags.values()))
    data = trials[0].config.data
    assert one["harness.data_fingerprint.val"] == real(data, "val")["fingerprint"]  # what the CLI prints
    assert one["harness.data_fingerprint.train"] == real(data, "train")["fingerprint"]
    assert len(one["harness.data_fingerprint"]) == 16 and one["harness.data_decoder"].startswith("decord ")
    assert one["harness.protocol"] == "4f-16-1x1"


def test_another_copy_of_the_data_gets_another_fingerprint(tmp_path, data_synth_dir):
    from harness.study.engine import data_fingerprints

    copy = tmp_path / "copy"
    shutil.copytree(data_synth_dir, copy)
    original = list(data_fingerprints(t.config.data for t in run_trials(data_synth_dir)).values())
    assert list(data_fingerprints(t.config.data for t in run_trials(copy)).values()) == original  # same bytes elsewhere: same
    labels = json.loads((copy / "labels.json").read_text())
    (copy / "labels.json").write_text(json.dumps(dict(reversed(list(labels.items())))))  # classes reordered
    [changed] = data_fingerprints(t.config.data for t in run_trials(copy)).values()
    assert changed["harness.data_fingerprint"] != original[0]["harness.data_fingerprint"]
    assert changed["harness.data_fingerprint.val"] != original[0]["harness.data_fingerprint.val"]


def test_data_that_cannot_be_read_is_tagged_unavailable(tmp_path, caplog):
    from harness.study.engine import data_fingerprints

    prints = data_fingerprints(t.config.data for t in run_trials(tmp_path / "missing"))
    assert list(prints.values()) == [{"harness.data_fingerprint": "unavailable"}]
    assert "data fingerprint of" in caplog.text


def test_a_resumed_trial_whose_data_changed_says_so(tmp_path, caplog):
    from harness.study.engine import retag_resumed
    from harness.tracking import NewChild, Tracker

    t = Tracker(f"sqlite:///{tmp_path / 'mlflow.db'}")
    parent = t.start_parent("mini", "laptop", params={}, tags={})
    ids = t.ensure_children(parent, [NewChild(k, k, {"harness.data_fingerprint": "old"})
                                     for k in ("fresh", "started", "same")])
    t.log_epoch(ids["started"], {"epoch": 1, "val_top1": 10.0})
    runs = {k: t.run(i) for k, i in ids.items()}
    now = {"harness.data_fingerprint": "new", "harness.data_fingerprint.val": "v"}
    retag_resumed(t, runs, {"fresh": now, "started": now, "same": {"harness.data_fingerprint": "old"}})
    tags = {k: t.run(i).tags for k, i in ids.items()}
    assert tags["fresh"]["harness.data_fingerprint"] == "new"  # not started: trains on today's data only
    assert tags["started"]["harness.data_fingerprint"] == "old+new"  # the tables flag a mixed fingerprint
    assert tags["same"]["harness.data_fingerprint"] == "old"
    assert "the data changed since this trial started" in caplog.text
