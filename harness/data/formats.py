"""Annotation readers for the datasets of the paper, in their owners' formats.

Each reader turns one split of an official annotation set into :class:`Entry`
rows (a video file or a folder of frames, the frame count when the annotation
states it, the label index) plus the class list in the owners' order, so that
label ``i`` means the same class as in TSM / mmaction2 checkpoints:

* ``sthv1``: ``something-something-v1-labels.csv`` (classes, sorted as TSM does),
  ``-train.csv`` / ``-validation.csv`` (``id;label``), or ``labels.csv``,
  ``train.csv``, ``validation.csv``; frames ``<root>/<id>/%05d.jpg``, 1-based.
* ``sthv2``: ``labels.json`` (template -> index string), ``train.json`` /
  ``validation.json`` (``[{id, label, template, placeholders}]``), or the
  ``something-something-v2-*.json`` names; videos ``<root>/<id>.webm``.
* ``k400``: ``train.csv`` / ``validate.csv`` (or ``kinetics_{train,val}.csv``)
  with header ``label,youtube_id,time_start,time_end,split[,is_cc]``; clips
  ``<root>/<label>/<youtube_id>_<start:06d>_<end:06d>.mp4`` or the same files in
  one flat folder; classes are the sorted labels of the train CSV.
* ``diving48``: ``Diving48_V2_{train,test}.json`` (or V1 ``Diving48_{train,test}.json``)
  ``[{vid_name, label, start_frame, end_frame}]`` and ``Diving48_vocab.json``;
  split ``val`` is the test file; videos ``<root>/<vid_name>.mp4``.
* ``list``: TSM ``train_videofolder.txt`` / ``val_videofolder.txt``, mmaction2
  ``*_{train,val}_list_rawframes.txt``, or ``train.txt`` / ``val.txt``, a line
  ``path num_frames label`` (space or tab); optional ``category.txt`` with
  class names in index order; frame folders ``<root>/<path>/``.

Every path built from an annotation is checked to stay under the data root
(no absolute paths, no ``..``): a hostile or broken annotation file cannot make
the loader read elsewhere. Readers only read annotation files; whether a video
exists or decodes is the dataset's and ``harness data inspect``'s business.
"""
from __future__ import annotations

import csv
import json
import logging
import os
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath, PureWindowsPath
from typing import Any, Callable

log = logging.getLogger(__name__)

FORMATS = ("sthv1", "sthv2", "k400", "diving48", "list")
SPLITS = ("train", "val")


class DataError(Exception):
    """A user-facing data problem; the message says what to fix."""


class AnnotationError(DataError, ValueError):
    """An annotation file is missing, malformed or points outside the data root."""


@dataclass(frozen=True)
class Entry:
    """One sample of a split.

    Attributes:
        path: the video file, or the folder of frames when ``frames`` is true.
        label: class index into the split's class list.
        num_frames: frame count the annotation promises; ``None`` when only the
            file can tell (videos, Something-Something v1 folders).
        frames: a folder of images read with Pillow instead of a video read with decord.
        template: file name of frame ``i`` (1-based) in a frame folder, e.g. ``"{:05d}.jpg"``;
            ``None`` lets the loader detect it from the common TSM / mmaction2 names.
        where: ``file:line`` (or ``file#index`` for JSON) the entry came from, for messages.
        extra: keys the annotation carries beyond the format (synth ``size`` / ``speed``).
    """

    path: Path
    label: int
    num_frames: int | None = None
    frames: bool = False
    template: str | None = None
    where: str = ""
    extra: dict = field(default_factory=dict, compare=False, hash=False)


@dataclass(frozen=True)
class Split:
    """The entries of one split, the class names in index order, and the files read."""

    entries: list[Entry]
    classes: list[str]
    files: list[Path]


def read_split(fmt: str, root: str | Path, annotations: str | Path | None, split: str) -> Split:
    """Read one split of a dataset in format ``fmt``.

    Args:
        fmt: one of :data:`FORMATS` (``synth`` sets are read as ``sthv2``).
        root: folder of videos or frame folders.
        annotations: folder of annotation files; ``None`` means ``root``.
        split: ``"train"`` or ``"val"``.
    """
    if fmt == "synth":
        fmt = "sthv2"
    if fmt not in READERS:
        raise AnnotationError(f"unknown data format {fmt!r}; choose one of {', '.join(FORMATS)}")
    if split not in SPLITS:
        raise AnnotationError(f"unknown split {split!r}; choose 'train' or 'val'")
    root = Path(root)
    ann = Path(annotations) if annotations is not None else root
    if not ann.is_dir():
        raise AnnotationError(f"annotations folder {ann} does not exist; pass the folder holding the annotation files")
    if not root.is_dir():
        raise AnnotationError(f"data root {root} does not exist; pass the folder of videos or frame folders")
    result = READERS[fmt](root, ann, split)
    log.info("%s %s: %d entries, %d classes from %s", fmt, split, len(result.entries),
             len(result.classes), ", ".join(p.name for p in result.files))
    return result


# --------------------------------------------------------------------------- helpers


def inside(root: Path, rel: str, where: str) -> Path:
    """``root / rel``, refusing a path that could leave ``root`` (absolute, drive, ``..``, NUL)."""
    rel = rel.strip()
    bad = (
        not rel
        or "\x00" in rel
        or PurePosixPath(rel).is_absolute()
        or PureWindowsPath(rel).is_absolute()
        or PureWindowsPath(rel).drive
        or ".." in PurePosixPath(rel.replace("\\", "/")).parts
    )
    if bad:
        raise AnnotationError(
            f"{where}: path {rel!r} would leave the data root {root}; "
            "annotation paths must be relative and must not contain '..'"
        )
    return root / rel


def find_file(folder: Path, names: list[str], what: str) -> Path:
    """The first of ``names`` (exact names or globs) present in ``folder``."""
    for name in names:
        hits = sorted(folder.glob(name)) if any(c in name for c in "*?[") else [folder / name]
        hits = [h for h in hits if h.is_file()]
        if hits:
            if len(hits) > 1:
                log.warning("several %s files match %s in %s; using %s", what, name, folder, hits[0].name)
            return hits[0]
    raise AnnotationError(f"no {what} file in {folder}; expected one of: {', '.join(names)}")


def _read_text(path: Path) -> str:
    try:
        return path.read_text(encoding="utf-8-sig")
    except (OSError, UnicodeDecodeError) as e:
        raise AnnotationError(f"cannot read annotation file {path}: {e}") from e


def _read_json(path: Path) -> Any:
    try:
        return json.loads(_read_text(path))
    except json.JSONDecodeError as e:
        raise AnnotationError(f"{path}: not valid JSON ({e})") from e


def _json_list(path: Path) -> list:
    data = _read_json(path)
    if not isinstance(data, list):
        raise AnnotationError(f"{path}: expected a JSON list of entries, got {type(data).__name__}")
    return data


def _field(item: object, key: str, where: str) -> Any:
    if not isinstance(item, dict) or key not in item:
        raise AnnotationError(f"{where}: entry has no {key!r} field (is this a test split without labels?)")
    return item[key]


def _label_index(lookup: dict[str, int], name: str, where: str) -> int:
    try:
        return lookup[name]
    except KeyError:
        raise AnnotationError(f"{where}: label {name!r} is not in the class list") from None


def _extra(item: dict, known: set[str]) -> dict:
    return {k: v for k, v in item.items() if k not in known}


# --------------------------------------------------------------------------- Something-Something v1

_STHV1 = {
    "labels": ["something-something-v1-labels.csv", "labels.csv"],
    "train": ["something-something-v1-train.csv", "train.csv"],
    "val": ["something-something-v1-validation.csv", "validation.csv", "val.csv"],
}


def read_sthv1(root: Path, ann: Path, split: str) -> Split:
    """Something-Something v1: class names sorted (TSM ``gen_label_sthv1.py``), ``id;label`` lines."""
    labels_file = find_file(ann, _STHV1["labels"], "sthv1 labels")
    classes = sorted({ln.strip() for ln in _read_text(labels_file).splitlines() if ln.strip()})
    lookup = {c: i for i, c in enumerate(classes)}
    split_file = find_file(ann, _STHV1[split], f"sthv1 {split}")
    entries = []
    for n, line in enumerate(_read_text(split_file).splitlines(), 1):
        if not line.strip():
            continue
        where = f"{split_file.name}:{n}"
        vid, sep, label = line.strip().partition(";")
        if not sep:
            raise AnnotationError(f"{where}: expected 'id;label', got {line.strip()!r}")
        entries.append(Entry(inside(root, vid, where), _label_index(lookup, label.strip(), where),
                             frames=True, template="{:05d}.jpg", where=where))
    return Split(entries, classes, [labels_file, split_file])


# --------------------------------------------------------------------------- Something-Something v2

_STHV2 = {
    "labels": ["labels.json", "something-something-v2-labels.json"],
    "train": ["train.json", "something-something-v2-train.json"],
    "val": ["validation.json", "something-something-v2-validation.json", "val.json"],
}
_STHV2_KEYS = {"id", "label", "template", "placeholders"}


def sthv2_classes(labels_file: Path) -> list[str]:
    """Template -> index-string map, returned as names in index order (checked contiguous)."""
    data = _read_json(labels_file)
    if not isinstance(data, dict):
        raise AnnotationError(f"{labels_file}: expected a JSON object template -> index")
    try:
        by_index = {int(v): k for k, v in data.items()}
    except (TypeError, ValueError):
        raise AnnotationError(f"{labels_file}: values must be index strings such as \"0\"") from None
    if sorted(by_index) != list(range(len(data))):
        raise AnnotationError(f"{labels_file}: indices must be 0..{len(data) - 1} without gaps or repeats")
    return [by_index[i] for i in range(len(data))]


def read_sthv2(root: Path, ann: Path, split: str) -> Split:
    """Something-Something v2 (and the synth set): label = labels[template without brackets]."""
    labels_file = find_file(ann, _STHV2["labels"], "sthv2 labels")
    classes = sthv2_classes(labels_file)
    lookup = {c: i for i, c in enumerate(classes)}
    split_file = find_file(ann, _STHV2[split], f"sthv2 {split}")
    entries = []
    for n, item in enumerate(_json_list(split_file)):
        where = f"{split_file.name}#{n}"
        vid = str(_field(item, "id", where))
        template = str(_field(item, "template", where)).replace("[", "").replace("]", "")
        entries.append(Entry(inside(root, f"{vid}.webm", where), _label_index(lookup, template, where),
                             where=where, extra=_extra(item, _STHV2_KEYS)))
    return Split(entries, classes, [labels_file, split_file])


# --------------------------------------------------------------------------- Kinetics-400

_K400 = {
    "train": ["train.csv", "kinetics_train.csv", "kinetics400_train.csv"],
    "val": ["validate.csv", "val.csv", "kinetics_val.csv", "kinetics400_val.csv"],
}
_K400_COLUMNS = ("label", "youtube_id", "time_start", "time_end")
_VIDEO_EXT = (".mp4", ".webm", ".mkv", ".avi")


def _k400_rows(path: Path) -> list[tuple[int, dict]]:
    reader = csv.DictReader(_read_text(path).splitlines())
    missing = [c for c in _K400_COLUMNS if c not in (reader.fieldnames or [])]
    if missing:
        raise AnnotationError(
            f"{path}: missing column(s) {', '.join(missing)}; expected header "
            "label,youtube_id,time_start,time_end,split (is_cc optional)"
        )
    return [(n, row) for n, row in enumerate(reader, 2) if any((v or "").strip() for v in row.values())]


def _index_videos(root: Path) -> dict[str, Path]:
    """Map video file stem -> path for ``root`` and its immediate sub-folders (one scan, not a stat per clip)."""
    found: dict[str, Path] = {}
    with os.scandir(root) as top:
        for d in top:
            if d.is_dir():
                with os.scandir(d.path) as sub:
                    for f in sub:
                        stem, ext = os.path.splitext(f.name)
                        if ext.lower() in _VIDEO_EXT:
                            found.setdefault(stem, Path(f.path))
            else:
                stem, ext = os.path.splitext(d.name)
                if ext.lower() in _VIDEO_EXT:
                    found.setdefault(stem, Path(d.path))
    return found


def _k400_classes(ann: Path, split: str, split_file: Path, rows: list) -> tuple[list[str], list[Path]]:
    """Sorted labels of the train CSV, so train and val agree on indices (mmaction2's convention)."""
    if split == "train":
        return sorted({r["label"].strip() for _, r in rows}), []
    try:
        train_file = find_file(ann, _K400["train"], "k400 train")
    except AnnotationError:
        log.warning("no k400 train csv in %s: classes come from the %s split only", ann, split)
        return sorted({r["label"].strip() for _, r in rows}), []
    return sorted({r["label"].strip() for _, r in _k400_rows(train_file)}), [train_file]


def read_k400(root: Path, ann: Path, split: str) -> Split:
    """Kinetics-400: classes are the sorted labels of the train CSV (mmaction2), clips found by file name."""
    split_file = find_file(ann, _K400[split], f"k400 {split}")
    rows = _k400_rows(split_file)
    classes, class_files = _k400_classes(ann, split, split_file, rows)
    lookup = {c: i for i, c in enumerate(classes)}
    videos = _index_videos(root)
    entries = []
    for n, row in rows:
        where = f"{split_file.name}:{n}"
        label, ytid = row["label"].strip(), row["youtube_id"].strip()
        try:
            stem = f"{ytid}_{int(float(row['time_start'])):06d}_{int(float(row['time_end'])):06d}"
        except (TypeError, ValueError):
            raise AnnotationError(f"{where}: time_start/time_end must be numbers") from None
        # the canonical place; a clip that is not found keeps it, so the loader counts it as missing
        path = inside(root, f"{label.replace(' ', '_')}/{stem}.mp4", where)
        path = videos.get(stem) or videos.get(ytid) or path
        entries.append(Entry(path, _label_index(lookup, label, where), where=where))
    return Split(entries, classes, class_files + [split_file])


# --------------------------------------------------------------------------- Diving48

_DIVING48 = {
    "vocab": ["Diving48_vocab.json"],
    "train": ["Diving48_V2_train.json", "Diving48_train.json"],
    "val": ["Diving48_V2_test.json", "Diving48_test.json"],
}
_DIVING48_KEYS = {"vid_name", "label", "start_frame", "end_frame"}


def read_diving48(root: Path, ann: Path, split: str) -> Split:
    """Diving48: class ``i`` is vocab entry ``i`` joined with ``+`` (mmaction2 ``label_map.txt``)."""
    vocab_file = find_file(ann, _DIVING48["vocab"], "Diving48 vocab")
    vocab = _read_json(vocab_file)
    if not isinstance(vocab, list):
        raise AnnotationError(f"{vocab_file}: expected a list of [takeoff, somersault, twist, flight] lists")
    classes = ["+".join(map(str, v)) if isinstance(v, list) else str(v) for v in vocab]
    split_file = find_file(ann, _DIVING48[split], f"Diving48 {split}")
    entries = []
    for n, item in enumerate(_json_list(split_file)):
        where = f"{split_file.name}#{n}"
        name = str(_field(item, "vid_name", where))
        label = _field(item, "label", where)
        if not isinstance(label, int) or not 0 <= label < len(classes):
            raise AnnotationError(f"{where}: label {label!r} is not an index below {len(classes)}")
        extra = {k: item[k] for k in ("start_frame", "end_frame") if k in item}
        extra.update(_extra(item, _DIVING48_KEYS))
        entries.append(Entry(inside(root, f"{name}.mp4", where), label, where=where, extra=extra))
    return Split(entries, classes, [vocab_file, split_file])


# --------------------------------------------------------------------------- TSM / mmaction2 list files

_LIST = {
    "train": ["train_videofolder.txt", "*_train_list_rawframes.txt", "train_list.txt", "train.txt"],
    "val": ["val_videofolder.txt", "*_val_list_rawframes.txt", "val_list.txt", "val.txt"],
    "classes": ["category.txt", "classes.txt", "label_map.txt"],
}


def _list_rows(path: Path, root: Path) -> list[Entry]:
    rows = []
    for n, line in enumerate(_read_text(path).splitlines(), 1):
        if not line.strip():
            continue
        where = f"{path.name}:{n}"
        parts = line.strip().rsplit(None, 2)  # the path may contain spaces; the two numbers may not
        try:
            rel, num, label = parts
            num_frames, label_i = int(num), int(label)
        except ValueError:
            raise AnnotationError(f"{where}: expected 'path num_frames label', got {line.strip()!r}") from None
        if num_frames < 0 or label_i < 0:
            raise AnnotationError(f"{where}: num_frames and label must not be negative")
        rows.append(Entry(inside(root, rel, where), label_i, num_frames=num_frames, frames=True, where=where))
    return rows


def read_list(root: Path, ann: Path, split: str) -> Split:
    """TSM / mmaction2 rawframe lists; class names from ``category.txt`` if present, else the indices."""
    split_file = find_file(ann, _LIST[split], f"list {split}")
    entries = _list_rows(split_file, root)
    files = [split_file]
    try:
        classes_file = find_file(ann, _LIST["classes"], "class names")
        classes = [ln.strip() for ln in _read_text(classes_file).splitlines() if ln.strip()]
        files.insert(0, classes_file)
    except AnnotationError:
        top = max((e.label for e in entries), default=-1)
        other = "val" if split == "train" else "train"
        try:  # the other split may hold a higher label; both must agree on the class count
            top = max([top] + [e.label for e in _list_rows(find_file(ann, _LIST[other], "list"), root)])
        except AnnotationError:
            pass
        classes = [str(i) for i in range(top + 1)]
    for e in entries:
        if e.label >= len(classes):
            raise AnnotationError(f"{e.where}: label {e.label} but only {len(classes)} classes are named")
    return Split(entries, classes, files)


# The annotation files each format needs, by role, under every name it accepts (harness doctor checks them).
ANNOTATION_FILES: dict[str, dict[str, list[str]]] = {
    "sthv1": _STHV1, "sthv2": _STHV2, "k400": _K400, "diving48": _DIVING48,
    "list": {"train": _LIST["train"], "val": _LIST["val"]},  # its class-name file is optional
}

READERS: dict[str, Callable[[Path, Path, str], Split]] = {
    "sthv1": read_sthv1,
    "sthv2": read_sthv2,
    "k400": read_k400,
    "diving48": read_diving48,
    "list": read_list,
}


def clip_id(entry: Entry) -> str:
    """A clip's id: its video file's name without extension, or its frame folder's name."""
    return entry.path.name if entry.frames else entry.path.stem
