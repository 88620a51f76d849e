"""mIoU as mmsegmentation computes it: one integer confusion matrix over the whole split, at full label resolution."""
from __future__ import annotations

import numpy as np

from synseg.data.benchmarks.base import IGNORE_INDEX


class ConfusionMatrix:
    """Counts of (ground-truth class, predicted class) pixels.

    Integer counts make the result independent of batch size and order. Pixels whose ground truth is
    `ignore_index` are not scored; a prediction of `ignore_index` ("no prediction") is scored as a miss of the
    true class without being a false positive of any class, hence the extra last column.
    """

    def __init__(self, num_classes: int, ignore_index: int = IGNORE_INDEX) -> None:
        if not 0 < num_classes < ignore_index:
            raise ValueError(f"num_classes must be in 1..{ignore_index - 1}, got {num_classes}")
        self.num_classes = num_classes
        self.ignore_index = ignore_index
        self.matrix = np.zeros((num_classes, num_classes + 1), dtype=np.int64)

    def update(self, prediction: np.ndarray, ground_truth: np.ndarray) -> None:
        """Add one label map; values must be class indices or `ignore_index`."""
        prediction, ground_truth = np.asarray(prediction), np.asarray(ground_truth)
        if prediction.shape != ground_truth.shape:
            raise ValueError(f"prediction is {_size(prediction)} but the ground truth is {_size(ground_truth)}")
        check_indices(prediction, self.num_classes, "prediction", self.ignore_index)
        scored = ground_truth != self.ignore_index
        truth = ground_truth[scored].astype(np.int64)
        predicted = prediction[scored].astype(np.int64)
        check_indices(truth, self.num_classes, "ground truth", self.ignore_index, allow_ignore=False)
        predicted[predicted == self.ignore_index] = self.num_classes
        width = self.num_classes + 1
        self.matrix += np.bincount(truth * width + predicted, minlength=self.num_classes * width).reshape(-1, width)

    def __iadd__(self, other: ConfusionMatrix) -> ConfusionMatrix:
        if other.matrix.shape != self.matrix.shape:
            raise ValueError("confusion matrices of different sizes")
        self.matrix += other.matrix
        return self

    @property
    def intersection(self) -> np.ndarray:
        return np.diagonal(self.matrix).copy()

    @property
    def union(self) -> np.ndarray:
        """Ground-truth pixels of each class plus pixels predicted as it (where the ground truth is scored), minus the overlap."""
        return self.matrix.sum(axis=1) + self.matrix[:, : self.num_classes].sum(axis=0) - self.intersection

    def iou(self) -> np.ndarray:
        """Per-class IoU; NaN for classes absent from both ground truth and prediction."""
        union = self.union
        return np.where(union > 0, self.intersection / np.maximum(union, 1), np.nan)

    def miou(self) -> float:
        """Mean IoU over the classes that occur in the ground truth or the prediction (NaN when none does)."""
        iou = self.iou()
        return float(np.nanmean(iou)) if np.isfinite(iou).any() else float("nan")

    def pixel_accuracy(self) -> float:
        total = self.matrix.sum()
        return float(self.intersection.sum() / total) if total else float("nan")


def check_indices(values: np.ndarray, num_classes: int, what: str, ignore_index: int = IGNORE_INDEX,
                  allow_ignore: bool = True) -> None:
    """Raise ValueError naming the offending values unless all are class indices (or `ignore_index`)."""
    bad = (values < 0) | (values >= num_classes)
    if allow_ignore:
        bad &= values != ignore_index
    if bad.any():
        shown = ", ".join(str(v) for v in np.unique(values[bad])[:5])
        raise ValueError(f"{what} has values outside 0..{num_classes - 1} (and {ignore_index}): {shown}")


def _size(array: np.ndarray) -> str:
    return "x".join(str(n) for n in array.shape[::-1]) if array.ndim == 2 else str(array.shape)
