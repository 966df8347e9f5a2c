"""Action-scale probe: val top-1 per object size and motion speed bucket (issue 12).

Two ways to give each val clip a bucket, both in the ``data`` section::

    data: {format: synth, ..., buckets: {size: [0.1867, 0.2533], speed: [0.03, 0.045]}}
    data: {format: sthv2, ..., bucket_csv: work/sthv2-scale-buckets.csv}

With ``buckets``, a clip's bucket comes from its annotation's ``size`` and
``speed`` keys (written by ``harness data synth``): ``size_small/speed_fast``.
With ``bucket_csv``, from a user's file ``clip_id,bucket`` (the id is the video
file name without extension, or the frame folder's name); a bucket is any name
made of ``/``-separated parts, e.g. ``size_small/speed_fast`` or ``occluded``.

Computed from a trial's per-clip predictions (:mod:`harness.predictions`, the
last epoch's, logged with every trial) by the probe's report, not in the
training loop: ``val_top1/<bucket>`` and ``val_count/<bucket>`` for each full
bucket and, for multi-part buckets, each part alone (the marginals
``val_top1/size_small``, ``val_top1/speed_fast``). Parts are joined with ``_``,
not ``=``, so the names stay valid MLflow metric names. A bucket with no val
clip has no value (absent, not 0).

What it gives up: the synth ``speed`` is the realised one, and rotation and
approach cap their rate, so small objects of those families are never "fast"
and the cells do not hold the same mix of motion families (see
``harness/data/synth.py``); compare a block's cells with another block's same
cell, not cells with each other. Bucket edges are fixed in the study file, not
fitted to the data, so they must be chosen before results are seen.
"""
from __future__ import annotations

import csv
import logging
import re
from collections import defaultdict
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from harness.config import Buckets, Data
from harness.data.formats import DataError
from harness.predictions import Predictions

log = logging.getLogger(__name__)

SIZE_NAMES = ("small", "medium", "large")
SPEED_NAMES = ("slow", "medium", "fast")
# What MLflow accepts in a metric name (no "=", no ":" on Windows), parts separated by "/".
BUCKET_NAME = re.compile(r"^[A-Za-z0-9_.\- ]+(/[A-Za-z0-9_.\- ]+)*$")


def level(value: float, edges: Sequence[float], names: Sequence[str]) -> str:
    """``names[0]`` below ``edges[0]``, ``names[1]`` below ``edges[1]``, else ``names[2]``."""
    return names[int(np.searchsorted(np.asarray(edges, dtype=float), value, side="right"))]


def scale_bucket(size: float, speed: float, buckets: Buckets) -> str:
    """The bucket of a clip from its size and speed, e.g. ``size_small/speed_fast``."""
    return f"size_{level(size, buckets.size, SIZE_NAMES)}/speed_{level(speed, buckets.speed, SPEED_NAMES)}"


def read_bucket_csv(path: str | Path) -> dict[str, str]:
    """``clip_id -> bucket`` from a CSV with header ``clip_id,bucket``; errors name the file, line and fix."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"data.bucket_csv: no file at {path}; write a CSV with header clip_id,bucket")
    out: dict[str, str] = {}
    with open(path, newline="", encoding="utf-8") as f:
        reader = csv.DictReader(f)
        if reader.fieldnames is None or not {"clip_id", "bucket"} <= {h.strip() for h in reader.fieldnames}:
            raise DataError(f"{path}: the header must be clip_id,bucket, got {reader.fieldnames}")
        for n, row in enumerate(reader, 2):
            row = {k.strip(): (v or "").strip() for k, v in row.items() if k is not None}
            cid, bucket = row["clip_id"], row["bucket"]
            if not BUCKET_NAME.match(bucket):
                raise DataError(f"{path}:{n}: bucket {bucket!r} must be letters, digits, '_', '-', '.' or spaces, "
                                "in parts joined by '/' (MLflow metric names allow nothing else)")
            if out.get(cid, bucket) != bucket:
                raise DataError(f"{path}:{n}: clip {cid!r} is in bucket {out[cid]!r} already, now {bucket!r}; "
                                "give each clip one bucket")
            out[cid] = bucket
    if not out:
        raise DataError(f"{path}: no rows; give one clip_id,bucket line per val clip")
    return out


def _from_csv(path: str, ids: Sequence[str]) -> list[str | None]:
    mapping = read_bucket_csv(path)
    found = [mapping.get(i) for i in ids]
    missing = sum(b is None for b in found)
    if missing == len(ids):
        raise DataError(f"{path}: none of its clip ids is in the val split (e.g. the split has {list(ids)[:3]}, "
                        f"the CSV {list(mapping)[:3]}); the id is the video file name without extension")
    if missing:
        log.warning("%s: %d of %d val clips have no bucket (e.g. %s); they count in val_top1 only",
                    path, missing, len(ids), next(i for i, b in zip(ids, found) if b is None))
    return found


def _from_scale(buckets: Buckets, extra: dict[str, list[float]], n: int) -> list[str | None]:
    if not {"size", "speed"} <= set(extra):
        raise DataError(f"data.buckets needs each val annotation's size and speed keys; the {n} val clips "
                        "lack them. Regenerate the synth set, or give data.bucket_csv for a dataset without them")
    return [scale_bucket(size, speed, buckets) for size, speed in zip(extra["size"], extra["speed"])]


def clip_buckets(data: Data, predictions: Predictions) -> list[str | None] | None:
    """The bucket of each clip of ``predictions`` (``None``: in none), or ``None`` when ``data`` asks for none."""
    if data.bucket_csv is not None:
        return _from_csv(data.bucket_csv, predictions.ids)
    if data.buckets is not None:
        return _from_scale(data.buckets, predictions.extra, len(predictions))
    return None


def _keys(bucket: str) -> list[str]:
    """The metrics a clip of ``bucket`` counts in: the bucket and, when it has several parts, each part."""
    parts = bucket.split("/")
    return [bucket] + (parts if len(parts) > 1 else [])


def stratified_top1(correct: Any, buckets: Sequence[str | None]) -> dict[str, float]:
    """``val_top1/<key>`` (percent) and ``val_count/<key>`` for every bucket and marginal present.

    Args:
        correct: ``(N,)`` booleans, whether each clip's top-1 class is its label.
        buckets: ``N`` bucket names, ``None`` for a clip in no bucket.
    """
    correct = np.asarray(correct, dtype=bool)
    if not (correct.ndim == 1 and len(correct) == len(buckets)):
        raise ValueError(f"need N correct flags and N buckets; got {correct.shape} and {len(buckets)}")
    hits: dict[str, list[bool]] = defaultdict(list)
    for ok, bucket in zip(correct, buckets):
        for key in _keys(bucket) if bucket is not None else ():
            hits[key].append(bool(ok))
    out: dict[str, float] = {}
    for key in sorted(hits):
        out[f"val_top1/{key}"] = 100.0 * float(np.mean(hits[key]))
        out[f"val_count/{key}"] = len(hits[key])
    return out
