"""Order accuracy within reversal pairs: does a model tell a motion from the same motion played backwards?

On the synthetic set (:mod:`harness.data.synth`) every class has a twin that is
the same clip reversed in time ("left to right" / "right to left"). Given the
pair, a model must only choose the direction: the order accuracy is the share
of clips whose true class scores above its twin (a tie counts half). A model
blind to frame order (TSN averages per-frame logits) gives a clip and its
reversal the same logits, so on a set holding every clip with its exact
reversal it scores 50%, whatever its top-1; top-1 mixes this choice with
telling the families (translate, fall, rotate...) apart.

    from harness.metrics import order_accuracy, order_accuracy_of, reversal_pairs
    order_accuracy(logits, labels, reversal_pairs())   # %, or None when no clip has a twin
    order_accuracy_of(predictions, reversal_pairs())   # the same from a child run's predictions.json
"""
from __future__ import annotations

from typing import TYPE_CHECKING, Sequence

import numpy as np

if TYPE_CHECKING:
    from harness.predictions import Predictions


def reversal_pairs(classes: Sequence[str] | None = None) -> dict[int, int]:
    """Class index -> index of its reversed twin, both ways, by name (``harness.data.synth.PAIRS``).

    ``classes``: the dataset's class names in label order (default: the synthetic set's). A class
    whose twin is not among them has no entry.
    """
    from harness.data.synth import CLASSES, PAIRS

    names = list(CLASSES if classes is None else classes)
    index = {n: i for i, n in enumerate(names)}
    out: dict[int, int] = {}
    for _, forward, backward in PAIRS:
        fwd, rev = (t.replace("[", "").replace("]", "") for t in (forward, backward))
        if fwd in index and rev in index:
            out[index[fwd]], out[index[rev]] = index[rev], index[fwd]
    return out


def order_accuracy(logits: np.ndarray | Sequence[Sequence[float]], labels: np.ndarray | Sequence[int],
                   pairs: dict[int, int]) -> float | None:
    """% of clips whose class has a twin in ``pairs`` and scores above it (ties count half).

    ``logits``: (clips, classes) scores, any monotonic scale (logits or probabilities);
    ``labels``: (clips,) true classes. None when no clip's class has a twin.
    """
    scores = np.asarray(logits, dtype=np.float64)
    labels = np.asarray(labels, dtype=np.int64)
    if scores.ndim != 2 or len(scores) != len(labels):
        raise ValueError(f"logits must be (clips, classes) with one label per clip, got {scores.shape} "
                         f"and {labels.shape}")
    keep = np.array([int(y) in pairs for y in labels], dtype=bool)
    if not keep.any():
        return None
    rows, true = np.nonzero(keep)[0], labels[keep]
    twin = np.array([pairs[int(y)] for y in true])
    mine, theirs = scores[rows, true], scores[rows, twin]
    return float(100.0 * np.mean((mine > theirs) + 0.5 * (mine == theirs)))


def order_accuracy_of(predictions: Predictions, pairs: dict[int, int]) -> float | None:
    """:func:`order_accuracy` from per-clip rankings (:class:`harness.predictions.Predictions`): a clip is right
    when its class ranks above its twin; both past the kept ranking (top 5 of many classes) is a tie."""
    labels = predictions.labels
    keep = np.array([int(y) in pairs for y in labels], dtype=bool)
    if not keep.any():
        return None
    twins = np.array([pairs.get(int(y), int(y)) for y in labels])
    mine, theirs = predictions.rank_of(labels)[keep], predictions.rank_of(twins)[keep]  # 0 = best
    return float(100.0 * np.mean((mine < theirs) + 0.5 * (mine == theirs)))
