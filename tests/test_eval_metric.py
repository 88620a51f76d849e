"""The confusion-matrix mIoU: exact on hand-computed cases, mmsegmentation's conventions, independent of order and batching."""
from __future__ import annotations

import math

import numpy as np
import pytest

from synseg.eval.metric import ConfusionMatrix

IGNORE = 255


def reference_iou(predictions: list[np.ndarray], truths: list[np.ndarray], num_classes: int) -> np.ndarray:
    """Straightforward per-class sums of intersection and union over scored pixels (NaN where the union is empty)."""
    inter, union = np.zeros(num_classes), np.zeros(num_classes)
    for pred, gt in zip(predictions, truths):
        scored = gt != IGNORE
        for c in range(num_classes):
            p, g = (pred == c) & scored, gt == c
            inter[c] += np.sum(p & g)
            union[c] += np.sum(p | g)
    return np.array([i / u if u else np.nan for i, u in zip(inter, union)])


def test_perfect_prediction_scores_one_and_absent_classes_are_nan():
    gt = np.array([[0, 0, 1], [1, 2, IGNORE]])
    cm = ConfusionMatrix(5)
    cm.update(gt.copy(), gt)
    iou = cm.iou()
    assert iou[:3].tolist() == [1.0, 1.0, 1.0]
    assert np.isnan(iou[3]) and np.isnan(iou[4])
    assert cm.miou() == 1.0 and cm.pixel_accuracy() == 1.0


def test_hand_computed_example():
    gt = np.array([[0, 0, 0, 1],
                   [1, 1, 2, IGNORE]])
    pred = np.array([[0, 1, 0, 1],
                     [1, 2, 3, 0]])
    cm = ConfusionMatrix(4)
    cm.update(pred, gt)
    # class 0: TP 2, gt 3, pred 2 (the pixel under IGNORE is not scored) -> 2 / 3
    # class 1: TP 2, gt 3, pred 3 -> 2 / 4;  class 2: TP 0, gt 1, pred 1 -> 0 / 2;  class 3: TP 0, pred 1 -> 0 / 1
    assert cm.iou().tolist() == [2 / 3, 2 / 4, 0.0, 0.0]
    assert cm.miou() == pytest.approx((2 / 3 + 1 / 2) / 4, abs=1e-15)
    assert cm.pixel_accuracy() == 4 / 7


def test_no_prediction_is_a_miss_but_not_a_false_positive():
    gt = np.array([[0, 0, 1, 1]])
    pred = np.array([[0, IGNORE, 1, 1]])
    cm = ConfusionMatrix(2)
    cm.update(pred, gt)
    assert cm.iou().tolist() == [0.5, 1.0]
    assert cm.pixel_accuracy() == 3 / 4


def test_class_only_in_prediction_counts_as_zero():
    gt = np.zeros((2, 2), dtype=np.int64)
    pred = np.array([[0, 0], [0, 2]])
    cm = ConfusionMatrix(3)
    cm.update(pred, gt)
    iou = cm.iou()
    assert iou[0] == 3 / 4 and iou[2] == 0.0 and np.isnan(iou[1])
    assert cm.miou() == pytest.approx(3 / 8, abs=1e-15)


def test_matches_reference_and_is_independent_of_order_and_batching():
    rng = np.random.default_rng(0)
    num_classes = 21
    truths = [rng.integers(0, num_classes, size=(37, 53)) for _ in range(12)]
    for gt in truths:
        gt[rng.random(gt.shape) < 0.1] = IGNORE
    predictions = [np.where(rng.random(gt.shape) < 0.6, gt, rng.integers(0, num_classes, size=gt.shape)) for gt in truths]
    for pred in predictions:
        pred[pred == IGNORE] = 0

    one_by_one = ConfusionMatrix(num_classes)
    for pred, gt in zip(predictions, truths):
        one_by_one.update(pred, gt)
    shuffled = ConfusionMatrix(num_classes)
    for i in rng.permutation(len(truths)):
        shuffled.update(predictions[i], truths[i])
    batched = ConfusionMatrix(num_classes)
    batched.update(np.stack(predictions[:5]), np.stack(truths[:5]))
    rest = ConfusionMatrix(num_classes)
    rest.update(np.concatenate([p.ravel() for p in predictions[5:]]), np.concatenate([g.ravel() for g in truths[5:]]))
    batched += rest

    assert one_by_one.matrix.dtype == np.int64
    assert np.array_equal(one_by_one.matrix, shuffled.matrix) and np.array_equal(one_by_one.matrix, batched.matrix)
    assert one_by_one.miou() == shuffled.miou() == batched.miou()
    np.testing.assert_allclose(one_by_one.iou(), reference_iou(predictions, truths, num_classes), rtol=0, atol=1e-12)


def test_empty_matrix_has_nan_scores():
    cm = ConfusionMatrix(3)
    cm.update(np.zeros((2, 2)), np.full((2, 2), IGNORE))
    assert math.isnan(cm.miou()) and math.isnan(cm.pixel_accuracy())


@pytest.mark.parametrize("pred, gt, message", [
    (np.zeros((2, 3)), np.zeros((3, 2)), "prediction is 3x2 but the ground truth is 2x3"),
    (np.array([[0, 7]]), np.array([[0, 1]]), "prediction has values outside 0..2"),
    (np.array([[0, -1]]), np.array([[0, 1]]), "prediction has values outside 0..2"),
    (np.array([[0, 9]]), np.array([[0, IGNORE]]), "prediction has values outside 0..2"),
    (np.array([[0, 1]]), np.array([[0, 3]]), "ground truth has values outside 0..2"),
])
def test_bad_inputs_are_rejected(pred, gt, message):
    with pytest.raises(ValueError, match=message):
        ConfusionMatrix(3).update(pred, gt)
