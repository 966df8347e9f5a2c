"""data.cache: decoded once, the same clips bit for bit; keyed by the data, rebuilt when it changes."""
from __future__ import annotations

import pickle

import pytest
import torch

from harness.config import Data, Synth
from harness.data import cache as cache_mod
from harness.data import video
from harness.data.dataset import build_dataset
from harness.data.formats import DataError

from conftest import SYNTH_ARGS


def _data(root, **kw) -> Data:
    """The conftest's synth set as a Data config (its parameters, so it is read, not regenerated)."""
    synth = Synth(**{k: SYNTH_ARGS[k] for k in ("videos", "frames", "size", "seed")})
    return Data(format="synth", root=str(root), frames=4, size=28, scale_size=32, synth=synth, **kw)


def _items(ds, keys):
    return [ds[k] for k in keys]


@pytest.fixture
def synth_copy(data_synth_dir, tmp_path):
    """A private copy of the small synth set: these tests write cache files and change annotations."""
    import shutil

    root = tmp_path / "set"
    shutil.copytree(data_synth_dir, root)
    return root


@pytest.mark.parametrize("mode", ["memory", "file"])
@pytest.mark.parametrize("split,train", [("train", True), ("val", False)])
def test_cached_clips_equal_decoded_ones_bit_for_bit(synth_copy, mode, split, train):
    plain = build_dataset(_data(synth_copy), split, train=train)[0]
    cached = build_dataset(_data(synth_copy, cache=mode), split, train=train)[0]
    assert cached.cache is not None and plain.cache is None
    keys = [(i, 77 + i) for i in range(len(plain))]
    for (a, la), (b, lb) in zip(_items(plain, keys), _items(cached, keys)):
        assert la == lb and a.dtype == b.dtype == torch.uint8 and torch.equal(a, b)


def test_the_file_is_built_once_next_to_the_data_and_mapped_after(synth_copy, monkeypatch):
    build_dataset(_data(synth_copy, cache="file"), "train", train=True)
    files = sorted(p.name for p in (synth_copy / ".harness-cache").glob("train-*"))
    assert len(files) == 2 and files[0].endswith(".json") and files[1].endswith(".u8")
    monkeypatch.setattr(cache_mod, "open_entry", lambda e: pytest.fail(f"decoded {e.path} again"))
    ds = build_dataset(_data(synth_copy, cache="file"), "train", train=True)[0]
    assert ds[(0, 1)][0].shape == (4, 3, 28, 28)
    clone = pickle.loads(pickle.dumps(ds.cache))  # a spawned worker maps the file by its path
    entry = ds.entries[3]
    assert (clone.clip(entry).get([0, 5]) == ds.cache.clip(entry).get([0, 5])).all()


def test_changed_data_gets_a_new_file_and_the_stale_one_goes(synth_copy):
    build_dataset(_data(synth_copy, cache="file"), "val", train=False)
    before = {p.name for p in (synth_copy / ".harness-cache").glob("val-*")}
    ann = synth_copy / "validation.json"
    ann.write_text(ann.read_text() + "\n")  # other bytes, the same entries: another fingerprint
    build_dataset(_data(synth_copy, cache="file"), "val", train=False)
    after = {p.name for p in (synth_copy / ".harness-cache").glob("val-*")}
    assert len(after) == 2 and not before & after


def test_an_unreadable_clip_stays_skipped_with_its_reason(synth_copy, data_media, caplog):
    ds = build_dataset(_data(synth_copy), "val", train=False)[0]
    victim = ds.entries[1].path
    data_media.truncate(victim, 0.3)
    cached = build_dataset(_data(synth_copy, cache="memory"), "val", train=False)[0]
    with pytest.raises(video.UnreadableError):
        cached.cache.clip(cached.entries[1])
    clip, label = cached[1]  # replaced by the next readable entry, as without the cache
    assert label == cached.entries[2].label and str(victim) in caplog.text


def test_a_huge_split_is_refused_with_what_to_do(synth_copy, monkeypatch):
    monkeypatch.setattr(cache_mod, "MAX_BYTES", 1000)
    with pytest.raises(DataError, match="cache is for small sets: set data.cache: off"):
        build_dataset(_data(synth_copy, cache="memory"), "val", train=False)


def test_cache_and_decoder_values_are_checked():
    with pytest.raises(ValueError, match="cache"):
        Data(format="synth", root="r", cache="disk")
    assert Data(format="synth", root="r").cache == "off" and Data(format="synth", root="r").decoder == "cpu"


def test_gpu_decoder_without_a_gpu_says_what_it_needs(synth_copy):
    with pytest.raises(DataError, match="data.decoder: gpu needs a CUDA GPU, CUDA torch, torchcodec"):
        build_dataset(_data(synth_copy, decoder="gpu"), "val", train=False)
    with pytest.raises(DataError, match="set data.workers: 0"):
        build_dataset(_data(synth_copy, decoder="gpu", workers=2), "val", train=False)
