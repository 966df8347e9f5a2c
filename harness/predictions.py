"""Per-clip validation predictions: what a trial saw on each val clip at its last epoch.

The trainer keeps them (:meth:`Predictions.from_logits`), the trial logs them
as the child run's ``predictions.json``, and the tables compute from them what
one top-1 number cannot say: accuracy per clip bucket (the scale probe), how
much of a row's spread is validation-set sampling rather than the seed
(:mod:`harness.stats`), the order accuracy within reversal pairs.

Compact on purpose: per clip its id, label and the classes ranked by score,
the whole ranking for small label sets (up to :data:`FULL_RANKING` classes,
the laptop's synthetic set) and the top 5 otherwise (Something-Something's
174 classes x 24,777 val clips is about 1 MB of JSON). Annotation numbers a
clip carries beyond its label (the synthetic set's object ``size`` and
``speed``) ride along, so a bucket can be assigned later without the data.
"""
from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

FULL_RANKING = 20  # up to this many classes every clip keeps its whole ranking
TOP = 5


@dataclass(frozen=True)
class Predictions:
    """Per val clip: ``ids``, ``labels`` (N,), ``ranking`` (N, k) class indices best first, ``extra`` numbers."""

    ids: list[str]
    labels: np.ndarray
    ranking: np.ndarray
    extra: dict[str, list[float]] = field(default_factory=dict)

    @classmethod
    def from_logits(cls, logits: Any, labels: Any, ids: Sequence[str],
                    extra: Mapping[str, Sequence[float]] | None = None) -> "Predictions":
        """From ``(N, C)`` scores (a tensor or an array) and ``N`` labels and ids."""
        scores = np.asarray(logits, dtype=np.float64)
        if scores.ndim != 2 or len(scores) != len(ids) or len(np.asarray(labels)) != len(ids):
            raise ValueError(f"need (N, C) logits, N labels and N ids; got {scores.shape}, "
                             f"{np.shape(labels)}, {len(ids)}")
        k = scores.shape[1] if scores.shape[1] <= FULL_RANKING else TOP
        # stable sort of the negated scores: ties rank by class index, as torch's argmax picks the first
        ranking = np.argsort(-scores, axis=1, kind="stable")[:, :k]
        return cls(list(ids), np.asarray(labels, dtype=np.int64), ranking.astype(np.int64),
                   {key: [float(v) for v in values] for key, values in (extra or {}).items()})

    def __len__(self) -> int:
        return len(self.ids)

    def correct(self, k: int = 1) -> np.ndarray:
        """Whether each clip's label is among its top ``k`` classes (booleans, length N)."""
        if k > self.ranking.shape[1]:
            raise ValueError(f"top-{k} needs {k} ranked classes; these predictions keep {self.ranking.shape[1]}")
        return (self.ranking[:, :k] == self.labels[:, None]).any(axis=1)

    def top1(self) -> float:
        return 100.0 * float(self.correct(1).mean())

    def rank_of(self, classes: np.ndarray) -> np.ndarray:
        """Each clip's rank (0 = best) of ``classes[i]``; ``k`` (past the end) when it is not ranked."""
        hits = self.ranking == np.asarray(classes)[:, None]
        return np.where(hits.any(axis=1), hits.argmax(axis=1), self.ranking.shape[1])

    def to_json(self) -> dict[str, Any]:
        return {"ids": self.ids, "labels": self.labels.tolist(), "ranking": self.ranking.tolist(),
                "extra": self.extra}

    @classmethod
    def from_json(cls, obj: Mapping[str, Any]) -> "Predictions":
        ranking = np.asarray(obj["ranking"], dtype=np.int64).reshape(len(obj["ids"]), -1)
        return cls(list(obj["ids"]), np.asarray(obj["labels"], dtype=np.int64), ranking,
                   {k: list(v) for k, v in obj.get("extra", {}).items()})

    def dumps(self) -> str:
        return json.dumps(self.to_json(), separators=(",", ":"))
