"""The fast decode path gives the old path's pixels bit for bit: simplejpeg vs Pillow, uint8 batches normalised
on the device vs per-clip normalisation in the worker, one container open vs PyAV's header read then decord.

No timing here: speed is `harness bench data`'s business.
"""
from __future__ import annotations

import io

import numpy as np
import pytest
import torch
from PIL import Image

from harness.config import Data, Synth
from harness.data import build_loader, video
from harness.data.dataset import ClipDataset
from harness.data.formats import Entry
from harness.data.sampling import train_indices
from harness.data.transforms import MEAN, STD, on_device, train_clip
from harness.data.video import FrameFolder, declared_size, open_entry, read_frame

from conftest import SYNTH_ARGS


def old_normalize(x: torch.Tensor) -> torch.Tensor:
    """The loader's normalisation before this change: per clip, in the worker (copied from the old transforms)."""
    mean = torch.tensor(MEAN, dtype=torch.float32).view(3, 1, 1)
    std = torch.tensor(STD, dtype=torch.float32).view(3, 1, 1)
    return (x.float().div_(255.0) - mean).div_(std).contiguous()


def old_frames(folder, indices) -> np.ndarray:
    """The frame-folder decode before this change: Pillow open + RGB per distinct frame, stacked."""
    read = {i: np.asarray(Image.open(folder / f"{i + 1:05d}.jpg").convert("RGB")) for i in set(indices.tolist())}
    return np.stack([read[i] for i in indices.tolist()])


def textured(n: int, h: int, w: int, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:h, 0:w]
    base = np.stack([x * 255 // w, y * 255 // h, (x + y) * 255 // (w + h)], -1)
    return np.clip(base[None] + rng.normal(0, 20, (n, h, w, 3)), 0, 255).astype(np.uint8)


@pytest.mark.parametrize("save", [dict(quality=90), dict(quality=75, subsampling=0), dict(quality=60, progressive=True),
                                  dict(quality=95, subsampling=1)])
@pytest.mark.parametrize("shape", [(100, 176), (37, 53)])
def test_jpeg_frames_are_pillows_pixels(tmp_path, save, shape):
    frame = textured(1, *shape)[0]
    path = tmp_path / "f.jpg"
    Image.fromarray(frame).save(path, **save)
    ours = read_frame(path)
    assert ours.dtype == np.uint8 and np.array_equal(ours, np.asarray(Image.open(path).convert("RGB")))
    into = np.zeros((*shape, 3), np.uint8)
    assert read_frame(path, into) is not None and np.array_equal(into, ours)  # decoded in place


@pytest.mark.parametrize("mode", ["L", "CMYK"])
def test_grey_and_cmyk_jpeg_are_pillows_pixels(tmp_path, mode):
    """Grey goes through libjpeg's own expansion, CMYK through Pillow (simplejpeg's conversion would differ)."""
    path = tmp_path / "f.jpg"
    Image.fromarray(textured(1, 40, 60)[0]).convert(mode).save(path, quality=85)
    assert np.array_equal(read_frame(path), np.asarray(Image.open(path).convert("RGB")))


def test_png_and_truncated_jpeg_behave_as_before(tmp_path):
    Image.fromarray(textured(1, 20, 30)[0]).save(tmp_path / "f.png")
    assert np.array_equal(read_frame(tmp_path / "f.png"), np.asarray(Image.open(tmp_path / "f.png").convert("RGB")))
    buf = io.BytesIO()
    Image.fromarray(textured(1, 64, 64)[0]).save(buf, format="JPEG")
    (tmp_path / "cut.jpg").write_bytes(buf.getvalue()[:300])
    with pytest.raises(video.UnreadableError, match="cut.jpg: cannot read image"):
        read_frame(tmp_path / "cut.jpg")  # Pillow's verdict, as before: simplejpeg's warning hands it over


def test_frame_folder_get_equals_the_old_decode(tmp_path, data_media):
    folder = tmp_path / "clip"
    data_media.write_frame_folder(folder, textured(7, 30, 44))
    clip = FrameFolder(folder, None, "{:05d}.jpg")
    for idx in (np.array([0, 1, 1, 3, 6, 6, 9, -2]), np.arange(7)):  # repeats, and out-of-range clamped
        clamped = np.clip(idx, 0, 6)
        assert np.array_equal(clip.get(idx), old_frames(folder, clamped))


def test_a_train_batch_equals_the_old_path_bit_for_bit(tmp_path, data_media):
    """Old: Pillow frames, per-clip float normalisation in the worker, float collate. New: simplejpeg into the
    clip's array, uint8 collate, normalised after the move to the device. The model sees the same floats."""
    entries = []
    for i in range(4):
        folder = tmp_path / str(i)
        data_media.write_frame_folder(folder, textured(12, 50, 90, seed=i))
        entries.append(Entry(folder, i % 2, frames=True, template="{:05d}.jpg"))
    kw = dict(frames=4, train=True, resize_to=64, size=56, flip=True, swap={0: 1, 1: 0})
    ds = ClipDataset(entries, **kw)
    keys = [(i, 1000 + i) for i in range(4)]
    new = on_device(torch.stack([ds[k][0] for k in keys]), "cpu")
    old = []
    for index, seed in keys:  # ClipDataset's order of random draws: frame offsets, then crop and flip
        rng = np.random.default_rng([seed, index])
        frames = old_frames(entries[index].path, train_indices(12, 4, rng))
        clip, _ = train_clip(frames, entries[index].label, resize_to=64, size=56, flip=True,
                             swap={0: 1, 1: 0}, rng=rng)
        old.append(old_normalize(clip))
    assert new.dtype == torch.float32 and torch.equal(new, torch.stack(old))


def test_loader_batches_are_uint8_and_float_batches_pass_through(data_synth_dir):
    synth = Synth(**{k: SYNTH_ARGS[k] for k in ("videos", "frames", "size", "seed")})  # read, not regenerated
    data = Data(format="synth", root=str(data_synth_dir), frames=4, size=28, scale_size=32, synth=synth)
    clips, _ = next(iter(build_loader(data, "val", batch_size=4, seed=0, train=False)[0]))
    assert clips.dtype == torch.uint8 and clips.shape == (4, 1, 4, 3, 28, 28)
    x = torch.randn(2, 4, 3, 8, 8)
    assert on_device(x, "cpu") is x  # model input already (synthetic batches, test loaders)


@pytest.mark.parametrize("suffix", [".webm", ".mp4"])
def test_declared_size_tells_complete_from_cut(tmp_path, data_media, suffix):
    path = tmp_path / f"v{suffix}"
    data_media.write_video(path, data_media.indexed_frames(12, 32))
    assert declared_size(path) == path.stat().st_size
    data_media.truncate(path, 0.6)
    assert declared_size(path) > path.stat().st_size
    (tmp_path / "junk.webm").write_bytes(b"not a video at all")
    assert declared_size(tmp_path / "junk.webm") is None


def test_a_complete_video_opens_once_and_a_cut_one_is_still_caught(tmp_path, data_media, monkeypatch):
    """No PyAV header read for a complete file (one open, decord's); a cut one still gets the promise check."""
    path = tmp_path / "v.webm"
    data_media.write_video(path, data_media.indexed_frames(24, 32))
    expected = video.container_frames(path)
    opened = []
    real = video.container_frames
    monkeypatch.setattr(video, "container_frames", lambda p: opened.append(p) or real(p))
    clip = open_entry(Entry(path, 0))
    assert opened == [] and clip.num_frames == expected == 24
    idx = np.array([0, 5, 11, 23])
    got = [data_media.decode_index(f[8:, 8:].mean()) for f in clip.get(idx)]
    assert got == idx.tolist()
    data_media.truncate(path, 0.6)
    with pytest.raises(video.UnreadableError, match="truncated, 9 frames decode of 24 promised"):
        open_entry(Entry(path, 0))
    assert opened == [path]
