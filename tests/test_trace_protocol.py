"""Named test protocols, and test clips that are reported, not silently repeated, when a video is too short."""
from __future__ import annotations

import dataclasses
import logging

import numpy as np
import pytest

from harness.config import Data
from harness.data import sampling
from harness.data.dataset import ClipDataset
from harness.data.formats import Entry
from harness.data.sampling import check_clips, clip_indices, short_video_count
from harness.protocol import Protocol


@pytest.mark.parametrize("name, fields", [
    ("8f-112-1x1", (8, 112, 1, 1, "tsn-middle")),
    ("16f-224-2x3", (16, 224, 2, 3, "tsn-middle")),
    ("16f-224-10x3-dense", (16, 224, 10, 3, "dense")),
    ("32f-256-4x10", (32, 256, 4, 10, "tsn-middle")),
])
def test_name_and_parse_round_trip(name, fields):
    protocol = Protocol.parse(name)
    assert dataclasses.astuple(protocol) == fields
    assert protocol.name == str(protocol) == name
    assert Protocol(*fields) == protocol and hash(Protocol(*fields)) == hash(protocol)


def test_default_sampling_is_not_spelled_out():
    assert Protocol(8, 112).name == "8f-112-1x1"
    assert Protocol.parse("8f-112-1x1-tsn-middle").name == "8f-112-1x1"  # one name for one protocol
    assert Protocol(8, 112, 10, 3).views == 30 and Protocol(8, 112, 10, 3).min_frames == 80


def test_protocol_is_frozen():
    with pytest.raises(dataclasses.FrozenInstanceError):
        Protocol(8, 112).frames = 16


@pytest.mark.parametrize("name, match", [
    ("8-112-1x1", "FRAMESf-SIZE-CLIPSxCROPS"),
    ("8f-112-1", "FRAMESf-SIZE-CLIPSxCROPS"),
    ("8F-112-1x1", "FRAMESf-SIZE-CLIPSxCROPS"),
    ("8f-112-1x2", r"crops must be one of \(1, 3, 5, 10\)"),
    ("0f-112-1x1", "frames must be a positive integer"),
    ("8f-112-1x1-dens", "did you mean 'dense'"),
])
def test_bad_names_say_what_a_name_looks_like(name, match):
    with pytest.raises(ValueError, match=match):
        Protocol.parse(name)


def test_from_data_is_what_the_loader_evaluates():
    data = Data(format="synth", root="x", frames=16, size=224, test_clips=2, test_crops=3)
    assert Protocol.from_data(data).name == "16f-224-2x3"
    assert Protocol.from_data(Data(format="synth", root="x")).name == "8f-112-1x1"


def test_n_clips_of_a_long_video_are_n_different_index_sets(caplog):
    short_video_count(reset=True)
    with caplog.at_level(logging.WARNING, logger="harness.data.sampling"):
        for n, t, clips in [(200, 8, 10), (80, 8, 10), (48, 16, 3), (40, 8, 2)]:
            idx = clip_indices(n, t, clips)
            assert len({tuple(row) for row in idx}) == clips
            assert len(np.unique(idx)) == clips * t  # no frame is shared between clips
    assert caplog.records == [] and short_video_count() == 0


def test_clips_are_distinct_exactly_when_the_check_passes():
    for n in range(1, 60):
        for t in (1, 3, 8):
            for clips in (2, 3, 5):
                idx = clip_indices(n, t, clips)
                assert (len(np.unique(idx)) == clips * t) == check_clips(n, t, clips), (n, t, clips)
    short_video_count(reset=True)


def test_too_many_clips_for_a_video_is_logged_with_its_counts(caplog):
    short_video_count(reset=True)
    with caplog.at_level(logging.WARNING, logger="harness.data.sampling"):
        idx = clip_indices(40, 8, 10, where="videos/17.webm")
    assert len(np.unique(idx)) < 80
    [record] = caplog.records
    assert "videos/17.webm: 40 frames cannot give 10 clips x 8 frames = 80 distinct frames" in record.message
    assert "share frames" in record.message and short_video_count() == 1


def test_a_video_no_longer_than_a_clip_says_every_clip_is_the_same(caplog):
    short_video_count(reset=True)
    with caplog.at_level(logging.WARNING, logger="harness.data.sampling"):
        idx = clip_indices(8, 8, 10, where="v.webm")
    assert (idx == 0).all()
    assert "every clip is the same" in caplog.records[0].message


def test_one_clip_keeps_tsm_short_video_rule_silently(caplog):
    with caplog.at_level(logging.WARNING, logger="harness.data.sampling"):
        assert clip_indices(5, 8, 1).tolist() == [[0] * 8]
    assert caplog.records == []


def test_warnings_stop_after_a_few_but_the_count_goes_on(caplog, monkeypatch):
    monkeypatch.setattr(sampling, "MAX_CLIP_WARNINGS", 2)
    short_video_count(reset=True)
    with caplog.at_level(logging.WARNING, logger="harness.data.sampling"):
        for i in range(6):
            clip_indices(10, 8, 4, where=f"v{i}")
    assert [r.message.split(":")[0] for r in caplog.records] == [
        "v0", "v1", "further videos too short for 4 clips x 8 frames are logged at debug level"]
    assert short_video_count(reset=True) == 6 and short_video_count() == 0


def test_the_eval_loader_names_the_short_video(tmp_path, data_media, caplog):
    data_media.write_frame_folder(tmp_path / "clip7", data_media.indexed_frames(6, 16))
    entry = Entry(tmp_path / "clip7", label=0, num_frames=6, frames=True)
    ds = ClipDataset([entry], frames=3, train=False, resize_to=16, size=16, clips=4)
    short_video_count(reset=True)
    with caplog.at_level(logging.WARNING, logger="harness.data.sampling"):
        views, _ = ds[0]
    assert views.shape[0] == 4
    assert any(str(tmp_path / "clip7") in r.message and "6 frames cannot give 4 clips x 3 frames" in r.message
               for r in caplog.records)


# ----------------------------------------------------------------------------- stored with each result


def test_each_child_run_stores_its_protocol_and_the_table_header_reads_it(tmp_path):
    from harness.config import Study
    from harness.study import engine, grid
    from harness.study.plan import RunOptions
    from harness.tables import grid as tables
    from harness.tracking import NewChild, Tracker

    study = Study.model_validate({
        "name": "mini", "num_classes": 4,
        "profiles": {"laptop": {"backbone": {"arch": "tiny", "width": 4}, "seeds": 2,
                                "data": {"format": "synth", "root": str(tmp_path / "synth"), "frames": 4,
                                         "size": 16, "test_clips": 2, "test_crops": 3}}},
        "rows": {"TSN": {"block": "tsn"}, "TSM": {"block": "tsm"}}})
    plan = grid.plan(study, "laptop", study.profiles["laptop"])
    trials = [t.with_trace(engine.trace_tags(t.config.data, {})) for t in plan.trials]
    tracker = Tracker(f"sqlite:///{tmp_path / 'mlflow.db'}")
    parent = engine.start_parent(tracker, plan, RunOptions("mini.yaml"), "abc")
    ids = tracker.ensure_children(parent, [NewChild.of(t) for t in trials])
    for t in trials:
        assert tracker.run(ids[t.key]).tags["harness.protocol"] == "4f-16-2x3"
        tracker.log_epoch(ids[t.key], {"epoch": 1, "val_top1": 50.0})
        tracker.finish_child(ids[t.key], "FINISHED", summary={"last_top1": 50.0, "best_top1": 50.0})
    md = tables.render(study, "laptop", tracker.read_study("mini", "laptop", parent))[2]["md"]
    assert "protocol 4f-16-2x3" in md.splitlines()[2] and "⚠" not in md
