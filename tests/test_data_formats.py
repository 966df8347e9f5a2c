"""Annotation readers round-trip the official formats; bad files are skipped, counted and bounded."""
from __future__ import annotations

import csv
import json
import logging

import pytest
import torch

from harness.config import Data
from harness.data import build_loader
from harness.data.dataset import BadDataError, ClipDataset
from harness.data.formats import AnnotationError, read_split


# --------------------------------------------------------------------------- writers of each format


def make_sthv1(root, media, ids_labels, classes, names=("something-something-v1-labels.csv",
               "something-something-v1-train.csv", "something-something-v1-validation.csv")):
    ann = root / "ann"
    ann.mkdir(parents=True)
    (ann / names[0]).write_text("\n".join(classes) + "\n")
    for name, rows in zip(names[1:], ids_labels):
        (ann / name).write_text("".join(f"{i};{label}\n" for i, label in rows))
        for i, _ in rows:
            media.write_frame_folder(root / "frames" / str(i), media.indexed_frames(6, 16))
    return root / "frames", ann


def test_sthv1_round_trip_sorted_classes(tmp_path, data_media):
    classes = ["Pushing something", "Dropping something", "Holding something"]
    rows = ([("10", "Pushing something"), ("11", "Dropping something")], [("12", "Holding something")])
    root, ann = make_sthv1(tmp_path, data_media, rows, classes)
    train = read_split("sthv1", root, ann, "train")
    assert train.classes == sorted(classes)  # TSM sorts the label file
    assert [(e.path.name, e.label) for e in train.entries] == [("10", 2), ("11", 0)]
    assert all(e.frames and e.template == "{:05d}.jpg" for e in train.entries)
    val = read_split("sthv1", root, ann, "val")
    assert [(e.path.name, e.label) for e in val.entries] == [("12", 1)]


def test_sthv1_frames_load_through_the_loader(tmp_path, data_media):
    rows = ([(str(i), "b") for i in range(4)], [("9", "a")])
    root, ann = make_sthv1(tmp_path, data_media, rows, ["b", "a"])
    data = Data(format="sthv1", root=str(root), annotations=str(ann), frames=3, size=16)
    loader, classes = build_loader(data, "train", batch_size=2, seed=0, train=True)
    clips, labels = next(iter(loader))
    assert classes == ["a", "b"]
    assert clips.shape == (2, 3, 3, 16, 16) and clips.dtype == torch.uint8  # normalised on the device
    assert labels.tolist() == [1, 1]


def test_sthv2_round_trip_both_file_names(tmp_path, data_media):
    labels = {"Moving something up": "1", "Moving something down": "0"}
    items = [{"id": "5", "label": "Moving a cup up", "template": "Moving [something] up", "placeholders": ["a cup"]},
             {"id": "6", "label": "Moving a pen down", "template": "Moving [something] down",
              "placeholders": ["a pen"], "size": 0.2}]
    for owners in (True, False):
        ann = tmp_path / f"ann{owners}"
        ann.mkdir()
        prefix = "" if owners else "something-something-v2-"
        (ann / f"{prefix}labels.json").write_text(json.dumps(labels))
        (ann / f"{prefix}train.json").write_text(json.dumps(items))
        (ann / f"{prefix}validation.json").write_text(json.dumps(items[:1]))
        split = read_split("sthv2", tmp_path, ann, "train")
        assert split.classes == ["Moving something down", "Moving something up"]  # index order, not file order
        assert [(e.path.name, e.label) for e in split.entries] == [("5.webm", 1), ("6.webm", 0)]
        assert split.entries[1].extra == {"size": 0.2}  # extra keys kept, not used
        assert len(read_split("sthv2", tmp_path, ann, "val").entries) == 1


def test_sthv2_webm_decodes_the_sampled_frames(tmp_path, data_media):
    """The loader decodes exactly the TSN middle frames of a real VP9 webm (frame index encoded as grey)."""
    ann = tmp_path
    (ann / "labels.json").write_text(json.dumps({"a": "0"}))
    (ann / "validation.json").write_text(json.dumps([{"id": "1", "template": "a", "label": "a"}]))
    data_media.write_video(tmp_path / "v" / "1.webm", data_media.indexed_frames(16))
    split = read_split("sthv2", tmp_path / "v", ann, "val")
    ds = ClipDataset(split.entries, frames=4, train=False, resize_to=32, size=32)
    clip, label = ds[0]
    assert clip.shape == (1, 4, 3, 32, 32) and label == 0
    grey = clip[0, :, 0, 16:, 16:].float().mean(dim=(1, 2))  # uint8 pixels of the red channel
    assert [data_media.decode_index(float(g)) for g in grey] == [2, 6, 10, 14]


def write_k400_csv(path, rows, is_cc=False):
    with open(path, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["label", "youtube_id", "time_start", "time_end", "split"] + (["is_cc"] if is_cc else []))
        for r in rows:
            w.writerow(list(r) + ([0] if is_cc else []))


@pytest.mark.parametrize("flat", [False, True])
def test_k400_round_trip(tmp_path, data_media, flat):
    train = [("zumba", "aaa", 10, 20, "train"), ("abseiling", "bbb", 0, 10, "train"),
             ("passing American football (in game)", "ccc", 5, 15, "train")]
    write_k400_csv(tmp_path / "kinetics_train.csv", train, is_cc=True)
    write_k400_csv(tmp_path / "validate.csv", [("zumba", "ddd", 1, 11, "val")])
    for label, yt, s, e, _ in train + [("zumba", "ddd", 1, 11, "val")]:
        folder = tmp_path / "videos" if flat else tmp_path / "videos" / label.replace(" ", "_")
        data_media.write_video(folder / f"{yt}_{s:06d}_{e:06d}.mp4", data_media.indexed_frames(4, 32))
    split = read_split("k400", tmp_path / "videos", tmp_path, "train")
    assert split.classes == sorted(r[0] for r in train)
    assert [(e.path.name, e.label) for e in split.entries] == [
        ("aaa_000010_000020.mp4", 2), ("bbb_000000_000010.mp4", 0), ("ccc_000005_000015.mp4", 1)]
    assert all(e.path.is_file() for e in split.entries)
    val = read_split("k400", tmp_path / "videos", tmp_path, "val")
    assert val.classes == split.classes and [e.label for e in val.entries] == [2]


def test_k400_bad_header_names_the_file(tmp_path):
    (tmp_path / "train.csv").write_text("label,id\nx,y\n")
    with pytest.raises(AnnotationError, match=r"train.csv: missing column\(s\) youtube_id"):
        read_split("k400", tmp_path, tmp_path, "train")


@pytest.mark.parametrize("version", ["Diving48_V2_{}.json", "Diving48_{}.json"])
def test_diving48_round_trip(tmp_path, data_media, version):
    vocab = [["Back", "15som", "05Twis", "FREE"], ["Forward", "NoTwis", "PIKE", "1som"]]
    (tmp_path / "Diving48_vocab.json").write_text(json.dumps(vocab))
    train = [{"vid_name": "-mmq0PT-u8k_00155", "label": 1, "start_frame": 0, "end_frame": 59}]
    test = [{"vid_name": "abc_00001", "label": 0, "start_frame": 0, "end_frame": 40}]
    (tmp_path / version.format("train")).write_text(json.dumps(train))
    (tmp_path / version.format("test")).write_text(json.dumps(test))
    (tmp_path / "rgb").mkdir()
    split = read_split("diving48", tmp_path / "rgb", tmp_path, "train")
    assert split.classes == ["Back+15som+05Twis+FREE", "Forward+NoTwis+PIKE+1som"]
    assert [(e.path.name, e.label) for e in split.entries] == [("-mmq0PT-u8k_00155.mp4", 1)]
    val = read_split("diving48", tmp_path / "rgb", tmp_path, "val")  # val is the test file
    assert [(e.path.name, e.label) for e in val.entries] == [("abc_00001.mp4", 0)]


def test_list_format_round_trip(tmp_path, data_media):
    (tmp_path / "category.txt").write_text("open\nclose\nturn\n")
    (tmp_path / "train_videofolder.txt").write_text("a 6 2\nsub/b c 6 0\n")
    (tmp_path / "val_videofolder.txt").write_text("a 6 1\n")
    data_media.write_frame_folder(tmp_path / "a", data_media.indexed_frames(6, 16), "img_{:05d}.jpg")
    data_media.write_frame_folder(tmp_path / "sub" / "b c", data_media.indexed_frames(6, 16), "{:06d}.jpg")
    split = read_split("list", tmp_path, tmp_path, "train")
    assert split.classes == ["open", "close", "turn"]
    assert [(e.path.relative_to(tmp_path).as_posix(), e.num_frames, e.label) for e in split.entries] == [
        ("a", 6, 2), ("sub/b c", 6, 0)]
    ds = ClipDataset(split.entries, frames=3, train=False, resize_to=16, size=16)
    for i in range(2):  # both frame-name templates are found; middle frames of 3 segments: 1, 3, 5
        clip, _ = ds[i]
        grey = clip[0, :, 0, 8:, 8:].float().mean(dim=(1, 2))
        assert [data_media.decode_index(float(g)) for g in grey] == [1, 3, 5]


def test_list_without_category_counts_both_splits(tmp_path):
    (tmp_path / "train.txt").write_text("a 6 0\n")
    (tmp_path / "val.txt").write_text("b 6 4\n")
    assert read_split("list", tmp_path, tmp_path, "train").classes == ["0", "1", "2", "3", "4"]


@pytest.mark.parametrize("fmt,files,line", [
    ("sthv1", {"something-something-v1-labels.csv": "a\n", "something-something-v1-train.csv": "1;a\n../x;a\n"},
     "something-something-v1-train.csv:2"),
    ("list", {"train.txt": "ok 3 0\n/etc 3 0\n"}, "train.txt:2"),
    ("list", {"train.txt": "a/../../b 3 0\n"}, "train.txt:1"),
    ("sthv2", {"labels.json": '{"a": "0"}', "train.json": '[{"id": "../../x", "template": "a"}]'}, "train.json#0"),
    ("diving48", {"Diving48_vocab.json": '[["a"]]', "Diving48_V2_train.json": '[{"vid_name": "/abs", "label": 0}]'},
     "Diving48_V2_train.json#0"),
])
def test_path_escape_rejected_naming_the_line(tmp_path, fmt, files, line):
    for name, text in files.items():
        (tmp_path / name).write_text(text)
    with pytest.raises(AnnotationError, match=f"{line}: path .* would leave the data root"):
        read_split(fmt, tmp_path, tmp_path, "train")


def test_missing_annotation_file_lists_accepted_names(tmp_path):
    with pytest.raises(AnnotationError, match="labels.json, something-something-v2-labels.json"):
        read_split("sthv2", tmp_path, tmp_path, "train")


def test_unknown_label_names_the_line(tmp_path):
    (tmp_path / "labels.json").write_text('{"a": "0"}')
    (tmp_path / "train.json").write_text('[{"id": "1", "template": "a"}, {"id": "2", "template": "[b]"}]')
    with pytest.raises(AnnotationError, match=r"train.json#1: label 'b'"):
        read_split("sthv2", tmp_path, tmp_path, "train")


# --------------------------------------------------------------------------- bad files


def sthv2_set(tmp_path, media, n, bad=(), missing=()):
    """``n`` 24-frame webm clips of two classes; ``bad`` ones truncated, ``missing`` ones absent."""
    (tmp_path / "labels.json").write_text(json.dumps({"a": "0", "b": "1"}))
    items = [{"id": str(i), "template": "ab"[i % 2], "label": "ab"[i % 2]} for i in range(n)]
    (tmp_path / "train.json").write_text(json.dumps(items))
    (tmp_path / "validation.json").write_text(json.dumps(items))
    for i in range(n):
        if i in missing:
            continue
        path = tmp_path / "videos" / f"{i}.webm"
        media.write_video(path, media.indexed_frames(24, 32))
        if i in bad:
            media.truncate(path)
    return tmp_path


def test_truncated_video_is_skipped_counted_and_logged(tmp_path, data_media, caplog):
    root = sthv2_set(tmp_path, data_media, 10, bad={3})
    split = read_split("sthv2", root / "videos", root, "val")
    ds = ClipDataset(split.entries, frames=4, train=False, resize_to=16, size=16, max_bad_fraction=0.2, split="val")
    with caplog.at_level(logging.WARNING, logger="harness.data.dataset"):
        labels = [ds[i][1] for i in range(10)]
    assert ds.bad.count() == 1 and ds.bad.paths() == [str(root / "videos" / "3.webm")]
    assert "3.webm: truncated, 9 frames decode of 24 promised" in caplog.text
    assert labels[3] == 0  # replaced by its neighbour, entry 4, with that entry's label


def test_missing_file_is_counted_when_the_dataset_is_built(tmp_path, data_media):
    root = sthv2_set(tmp_path, data_media, 10, missing={7})
    split = read_split("sthv2", root / "videos", root, "val")
    ds = ClipDataset(split.entries, frames=4, train=True, resize_to=16, size=16, max_bad_fraction=0.1)
    assert ds.bad.count() == 1 and ds.bad.paths()[0].endswith("7.webm")
    with pytest.raises(BadDataError, match=r"1 of 10 .* unreadable.*first ones: \S*7.webm\. "):
        ClipDataset(split.entries, frames=4, train=True, resize_to=16, size=16, max_bad_fraction=0.0)


@pytest.mark.parametrize("workers", [0, 2])
def test_too_many_bad_files_fail_the_run(tmp_path, data_media, workers):
    """3 of 10 truncated with a 10% limit: the loader fails with the count and the paths; the marks made in
    DataLoader workers are counted in the main process."""
    root = sthv2_set(tmp_path, data_media, 10, bad={1, 4, 8})
    data = Data(format="sthv2", root=str(root / "videos"), annotations=str(root), frames=4, size=32,
                workers=workers, max_bad_fraction=0.1)
    loader, _ = build_loader(data, "train", batch_size=2, seed=0, train=True)
    with pytest.raises(BadDataError, match=r"[23] of 10 train entries .* more than max_bad_fraction=0.1") as err:
        list(loader)
    assert ".webm" in str(err.value) and "harness data inspect" in str(err.value)
    loader.dataset.bad.max_fraction = 0.3  # within the limit: a whole epoch runs, the bad ones replaced
    assert sum(len(y) for _, y in loader) == 10 and loader.dataset.bad.count() == 3
