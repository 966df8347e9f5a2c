"""Order accuracy within reversal pairs, on hand-made logits."""
import numpy as np
import pytest

from harness.data.synth import CLASSES
from harness.metrics import order_accuracy, order_accuracy_of, reversal_pairs
from harness.predictions import Predictions


def test_the_synthetic_twins_are_2k_and_2k_plus_1():
    pairs = reversal_pairs()
    assert pairs == {i: i ^ 1 for i in range(len(CLASSES))}
    assert CLASSES[pairs[0]] == "Moving something from right to left"


def test_pairs_follow_names_not_positions():
    classes = ["Something falling down", "unrelated", "Something rising up"]
    assert reversal_pairs(classes) == {0: 2, 2: 0}


def test_right_wrong_and_tied_choices():
    pairs = {0: 1, 1: 0}
    logits = [[2.0, 1.0, 9.0],  # class 0 above its twin: right, although class 2 wins top-1
              [2.0, 1.0, 0.0],  # class 1 below its twin: wrong
              [1.0, 1.0, 0.0]]  # a tie: half
    assert order_accuracy(logits, [0, 1, 0], pairs) == pytest.approx(100 * 1.5 / 3)


def test_an_order_blind_model_scores_half_on_clips_and_their_reversals():
    rng = np.random.default_rng(0)
    per_clip = rng.normal(size=(6, 4))
    logits = np.repeat(per_clip, 2, axis=0)  # each clip and its reversal: the same logits
    labels = np.tile([0, 1], 6)  # ...with twin labels
    assert order_accuracy(logits, labels, reversal_pairs(CLASSES[:4])) == 50.0


def test_clips_without_a_twin_are_left_out():
    assert order_accuracy([[0.0, 1.0, 5.0], [5.0, 0.0, 0.0]], [1, 2], {0: 1, 1: 0}) == 100.0
    assert order_accuracy([[0.0, 1.0, 5.0]], [2], {0: 1, 1: 0}) is None


def test_shapes_must_agree():
    with pytest.raises(ValueError, match="one label per clip"):
        order_accuracy([[0.0, 1.0]], [0, 1], {0: 1, 1: 0})


def test_the_same_from_logged_predictions():
    logits = [[2.0, 1.0, 9.0], [2.0, 1.0, 0.0], [0.0, 3.0, 1.0]]
    labels = [0, 1, 2]  # right, wrong, and a clip without a twin
    predictions = Predictions.from_logits(logits, labels, ["a", "b", "c"])
    assert order_accuracy_of(predictions, {0: 1, 1: 0}) == order_accuracy(logits, labels, {0: 1, 1: 0}) == 50.0
    assert order_accuracy_of(Predictions.from_json(predictions.to_json()), {0: 1, 1: 0}) == 50.0
