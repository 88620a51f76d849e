"""ADE20K (SceneParsing, 150 classes) validation: 0 = other (ignored), 1..150 the classes."""
from __future__ import annotations

import numpy as np

from synseg.data.benchmarks.base import PairedFolders, reduce_zero_label


class ADE(PairedFolders):
    name = "ade"
    title = "ADE"
    anchor = ("ADEChallengeData2016",)
    image_dir = "images/validation"
    label_dir = "annotations/validation"
    layout = "ROOT/ADEChallengeData2016/{images, annotations}/validation/*.{jpg, png}"

    def decode(self, raw: np.ndarray) -> np.ndarray:
        return reduce_zero_label(raw)
