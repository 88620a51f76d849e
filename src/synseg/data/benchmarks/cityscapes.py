"""Cityscapes val: gtFine label ids mapped to the 19 train ids by the official table; every other id is ignored."""
from __future__ import annotations

import numpy as np

from synseg.data.benchmarks.base import IGNORE_INDEX, PairedFolders

# cityscapesScripts labels.py: label id -> train id for the 19 evaluated classes.
LABEL_TO_TRAIN_ID = {7: 0, 8: 1, 11: 2, 12: 3, 13: 4, 17: 5, 19: 6, 20: 7, 21: 8, 22: 9, 23: 10, 24: 11, 25: 12,
                     26: 13, 27: 14, 28: 15, 31: 16, 32: 17, 33: 18}


def _lookup_table() -> np.ndarray:
    """Indexed by label id: its train id, 255 for the ids not evaluated."""
    table = np.full(65536, IGNORE_INDEX, dtype=np.int64)
    for label_id, train_id in LABEL_TO_TRAIN_ID.items():
        table[label_id] = train_id
    return table


TRAIN_IDS = _lookup_table()


class Cityscapes(PairedFolders):
    name = "city"
    title = "City"
    anchor = ("cityscapes",)
    image_dir = "leftImg8bit/val"
    label_dir = "gtFine/val"
    image_suffix = "_leftImg8bit.png"
    label_suffix = "_gtFine_labelIds.png"
    layout = "ROOT/cityscapes/{leftImg8bit/val/<city>/*_leftImg8bit.png, gtFine/val/<city>/*_gtFine_labelIds.png}"

    def decode(self, raw: np.ndarray) -> np.ndarray:
        if raw.min() < 0 or raw.max() >= len(TRAIN_IDS):
            raise ValueError(f"label ids outside 0..{len(TRAIN_IDS) - 1}")
        return TRAIN_IDS[raw]
