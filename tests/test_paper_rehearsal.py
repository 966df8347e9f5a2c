"""A rehearsal of the paper path on CPU: the paper's input (8 frames at 112, ResNet-50 from an ImageNet file,
a ResNet-101 row from its own file) on real encoded videos in Something-Something v2's official layout, through
``harness run`` end to end. Nothing of the synthetic generator: VP9 webm files written with PyAV, the owners'
JSON annotations, and torchvision-layout checkpoint files.

The checkpoints hold random weights under torchvision's key names. torchvision is not a dependency (and is not
installed), so the test writes torchvision's naming down from its architecture (ResNet v1.5 bottlenecks,
``layerN.i.{conv,bn}K``, ``downsample.0/1`` on each stage's first block, ``fc``) and checks that blocks' own ResNet,
from which the files are saved, has exactly those keys and shapes.
"""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import harness, tracker_for

LAYERS = {"resnet50": [3, 4, 6, 3], "resnet101": [3, 4, 23, 3]}
CLASSES = ["Moving something left", "Moving something right", "Moving something up", "Moving something down"]
MOVES = [(0, -4), (0, 4), (-4, 0), (4, 0)]  # (dy, dx) per frame, one per class


def torchvision_resnet(arch: str, num_classes: int = 1000) -> dict[str, tuple[int, ...]]:
    """torchvision.models.<arch>().state_dict(): every key and its shape, from the architecture alone."""
    keys: dict[str, tuple[int, ...]] = {}

    def bn(name: str, c: int) -> None:
        keys.update({f"{name}.weight": (c,), f"{name}.bias": (c,), f"{name}.running_mean": (c,),
                     f"{name}.running_var": (c,), f"{name}.num_batches_tracked": ()})

    keys["conv1.weight"] = (64, 3, 7, 7)
    bn("bn1", 64)
    inplanes = 64
    for stage, blocks_in_stage in enumerate(LAYERS[arch]):
        planes = 64 * 2 ** stage
        for i in range(blocks_in_stage):
            p = f"layer{stage + 1}.{i}"
            keys[f"{p}.conv1.weight"] = (planes, inplanes, 1, 1)
            bn(f"{p}.bn1", planes)
            keys[f"{p}.conv2.weight"] = (planes, planes, 3, 3)
            bn(f"{p}.bn2", planes)
            keys[f"{p}.conv3.weight"] = (planes * 4, planes, 1, 1)
            bn(f"{p}.bn3", planes * 4)
            if i == 0:
                keys[f"{p}.downsample.0.weight"] = (planes * 4, inplanes, 1, 1)
                bn(f"{p}.downsample.1", planes * 4)
            inplanes = planes * 4
    keys.update({"fc.weight": (num_classes, 2048), "fc.bias": (num_classes,)})
    return keys


def imagenet_file(arch: str, path: Path) -> Path:
    """A torchvision-layout ImageNet checkpoint of ``arch`` (random weights): blocks' plain ResNet, 1000 classes."""
    import blocks

    torch.manual_seed(0)
    state = blocks.create("tsn", backbone=arch, num_classes=1000, num_frames=1).state_dict()
    torch.save(state, path)
    return path


@pytest.mark.parametrize("arch,count", [("resnet50", 320), ("resnet101", 626)])
def test_blocks_resnet_has_torchvisions_key_names_and_shapes(arch, count):
    import blocks

    want = torchvision_resnet(arch)
    got = {k: tuple(v.shape) for k, v in
           blocks.create("tsn", backbone=arch, num_classes=1000, num_frames=1).state_dict().items()}
    assert len(want) == count  # torchvision's resnet50 / resnet101 state_dicts hold 320 / 626 entries
    assert got == want


def clip(label: int, rng: np.random.Generator, frames: int = 16, h: int = 120, w: int = 160) -> np.ndarray:
    """A textured background and a bright square moving in the class's direction."""
    background = rng.integers(40, 90, (h, w, 3), dtype=np.uint8)
    dy, dx = MOVES[label]
    y, x = h // 2 - 12 - dy * frames // 2, w // 2 - 12 - dx * frames // 2
    out = np.empty((frames, h, w, 3), np.uint8)
    for t in range(frames):
        out[t] = background
        top, left = int(np.clip(y + dy * t, 0, h - 24)), int(np.clip(x + dx * t, 0, w - 24))
        out[t, top:top + 24, left:left + 24] = (230, 200, 60)
    return out


def sthv2_set(root: Path, data_media, per_class: dict[str, int]) -> None:
    """``root/videos/<id>.webm`` and ``root/annotations/{labels,train,validation}.json`` as the owners ship them."""
    rng = np.random.default_rng(7)
    ann = root / "annotations"
    ann.mkdir(parents=True)
    (ann / "labels.json").write_text(json.dumps({c: str(i) for i, c in enumerate(CLASSES)}))
    vid = 1000
    for split, n in per_class.items():
        items = []
        for label, template in enumerate(CLASSES):
            for _ in range(n):
                vid += 1
                data_media.write_video(root / "videos" / f"{vid}.webm", clip(label, rng))
                items.append({"id": str(vid), "label": template.lower(), "template": template,
                              "placeholders": ["something"]})
        (ann / f"{split}.json").write_text(json.dumps(items))


STUDY = """\
name: rehearsal
num_classes: 4
profiles:
  paper:
    backbone: {{arch: resnet50, pretrained: {{resnet50: {r50}, resnet101: {r101}}}}}
    data: {{format: sthv2, root: {root}/videos, annotations: {root}/annotations, frames: 8, size: 112,
            scale_size: 128, workers: 0}}
    recipe: {{epochs: 1, batch_size: 2, lr: 0.01, schedule: step, lr_step: 10, weight_decay: 0.0005, dropout: 0.3,
              threads: 1}}
    seeds: 1
    resources: {{cpu: 1, gpu: 0}}
rows:
  TSN: {{block: tsn}}
  GST-R101: {{block: gst, backbone: resnet101}}
"""


@pytest.mark.slow
def test_paper_profile_rehearsal_on_real_webm_files(tmp_path, data_media):
    data = tmp_path / "sthv2"
    sthv2_set(data, data_media, {"train": 2, "validation": 1})  # 8 train and 4 validation clips
    weights = tmp_path / "weights"
    weights.mkdir()
    r50, r101 = imagenet_file("resnet50", weights / "r50.pth"), imagenet_file("resnet101", weights / "r101.pth")
    project = tmp_path / "project"
    project.mkdir()
    (project / "rehearsal.yaml").write_text(STUDY.format(r50=r50, r101=r101, root=data))

    dry = harness(["run", "rehearsal.yaml", "--profile", "paper", "--dry-run"], project)
    assert dry.returncode == 0, dry.stdout[-2000:] + dry.stderr[-3000:]
    assert "resnet101" in dry.stdout, dry.stdout  # the plan names GST-R101's trained backbone

    r = harness(["run", "rehearsal.yaml", "--profile", "paper"], project, timeout=600)
    assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-3000:]
    # checked by SHA-256 before any trial: random weights are none of torchvision's files, but have their keys
    for arch, path in (("resnet50", r50), ("resnet101", r101)):
        assert (f"profiles.paper.backbone.pretrained.{arch}: {path.name}: the keys of a torchvision {arch}, "
                "origin unknown") in r.stderr, r.stderr[-3000:]

    t = tracker_for(project)
    parent = t.latest_parent("rehearsal", "paper")
    children = t.children(parent.run_id)
    assert sorted(children) == ["rehearsal/paper/GST-R101/seed0", "rehearsal/paper/TSN/seed0"]
    for key, arch, path in (("rehearsal/paper/TSN/seed0", "resnet50", r50),
                            ("rehearsal/paper/GST-R101/seed0", "resnet101", r101)):
        run = children[key]
        assert run.status == "FINISHED", (key, run.tags.get("harness.reason"))
        assert run.tags["harness.backbone"] == arch and run.params["backbone.arch"] == arch, key
        assert run.params["backbone.pretrained"] == str(path), key
        assert (run.params["data.frames"], run.params["data.size"], run.params["data.format"]) == ("8", "112",
                                                                                                     "sthv2")
        loaded = t.read_json(run.run_id, "pretrained.json")  # what the trial loaded, recorded by the trial
        assert loaded["path"] == str(path) and len(loaded["sha256"]) == 64, loaded
        assert loaded["unexpected"] == [], loaded
        backbone_keys = set(torchvision_resnet(arch)) - {"fc.weight", "fc.bias"}
        assert not backbone_keys & set(loaded["missing"]), f"{key}: ImageNet weights not loaded: {loaded}"
        assert {"fc.weight", "fc.bias"} <= set(loaded["missing"])  # a 4-class head, trained from scratch
        steps = [step for step, _ in t.metric_history(run.run_id, "val_top1")]
        assert steps == [1], (key, steps)
    # each row trained its own backbone: GST on ResNet-101 ~37 M params (Table 1: 37.52 M at 174 classes), TSN on
    # ResNet-50 ~24 M; GST on ResNet-50 would be ~21 M
    r50_params = children["rehearsal/paper/TSN/seed0"].metrics["num_params"]
    r101_params = children["rehearsal/paper/GST-R101/seed0"].metrics["num_params"]
    assert 22e6 < r50_params < 25e6 and 35e6 < r101_params < 39e6, (r50_params, r101_params)

    table = (project / "results" / "rehearsal.md").read_text()
    assert "| TSN " in table and "| GST-R101 " in table and "1/1" in table, table


WEIGHTS_STUDY = """\
name: weights
num_classes: 4
profiles:
  paper:
    backbone: {{arch: resnet50, pretrained: {weights}}}
    data: {{format: synth, root: {root}, frames: 8, size: 112}}
    recipe: {{epochs: 1, batch_size: 2, lr: 0.01}}
    resources: {{cpu: 1}}
rows:
  TSN: {{block: tsn}}
"""


@pytest.mark.parametrize("name, content, says", [
    ("resnet50-0676ba61.pth", b"half a download", "resnet50-0676ba61.pth is named as torchvision's file but its "
                                                  "SHA-256 begins"),
    ("r50.pth", "state", "r50.pth: not a torchvision resnet50 state_dict (265 keys missing or reshaped, e.g. conv1.weight); use resnet50-0676ba61.pth"),
])
def test_harness_run_refuses_imagenet_weights_that_cannot_be_right_before_any_trial(tmp_path, name, content, says):
    weights = tmp_path / name
    if content == "state":
        torch.save({"conv1.weight": torch.zeros(1)}, weights)
    else:
        weights.write_bytes(content)
    (tmp_path / "weights.yaml").write_text(WEIGHTS_STUDY.format(weights=weights, root=tmp_path / "synth"))
    r = harness(["run", "weights.yaml", "--profile", "paper"], tmp_path)
    assert r.returncode == 2, r.stdout[-2000:] + r.stderr[-3000:]
    [line] = [ln for ln in r.stderr.splitlines() if ln.startswith("error:")]
    assert line.startswith("error: weights.yaml:5: profiles.paper.backbone.pretrained: ") and says in line, line
    assert not (tmp_path / "work").exists() and not (tmp_path / "synth").exists(), "refused before anything ran"
