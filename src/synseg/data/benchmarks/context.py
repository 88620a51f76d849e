"""Pascal Context val (59 classes): mmsegmentation's SegmentationClassContext labels, 0 = other (ignored)."""
from __future__ import annotations

import numpy as np

from synseg.data.benchmarks.base import ListedSplit, reduce_zero_label


class Context(ListedSplit):
    name = "context"
    title = "Context"
    anchor = ("VOCdevkit", "VOC2010")
    label_dir = "SegmentationClassContext"
    split_file = "ImageSets/SegmentationContext/val.txt"
    layout = "ROOT/VOCdevkit/VOC2010/{JPEGImages, SegmentationClassContext, ImageSets/SegmentationContext/val.txt}"

    def decode(self, raw: np.ndarray) -> np.ndarray:
        return reduce_zero_label(raw)
