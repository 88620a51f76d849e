"""Overlays: a small picture is enlarged by a whole factor with sharp pixels; a photo keeps its size."""
from __future__ import annotations

import numpy as np
from PIL import Image

from synseg.render import SHOWN, overlay, palette


def test_small_scene_is_enlarged_pixel_for_pixel_with_the_legend_beside_it():
    label_map = np.zeros((64, 64), dtype=np.int64)
    label_map[:, 32:] = 1
    label_map[0, 0] = 2  # one pixel becomes a 6x6 square
    shown = np.asarray(overlay(Image.new("RGB", (64, 64), "white"), label_map, ["sky", "grass", "cow"]))
    factor = SHOWN // 64
    assert shown.shape[0] >= 64 * factor and shown.shape[1] > 64 * factor  # the legend is right of the image
    blend = (255 + palette(3).astype(np.float32)) / 2
    for (row, column), index in {(0, 0): 2, (factor - 1, factor - 1): 2, (factor, factor): 0, (0, 32 * factor): 1,
                                 (64 * factor - 1, 64 * factor - 1): 1}.items():
        assert np.abs(shown[row, column] - blend[index]).max() <= 1, (row, column)


def test_photo_keeps_its_size():
    shown = overlay(Image.new("RGB", (500, 300), "white"), np.zeros((300, 500), dtype=np.int64), ["sky"])
    assert shown.height == 300 and shown.width > 500
    assert np.asarray(shown)[299, 499].tolist() == [127, 127, 127]  # white blended with black (class 0)
