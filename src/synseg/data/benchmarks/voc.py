"""PASCAL VOC 2012 val: 20 classes and background, palette PNG labels, 255 = boundary (ignored)."""
from __future__ import annotations

from synseg.data.benchmarks.base import ListedSplit


class VOC(ListedSplit):
    name = "voc"
    title = "VOC"
    has_background = True
    anchor = ("VOCdevkit", "VOC2012")
    label_dir = "SegmentationClass"
    split_file = "ImageSets/Segmentation/val.txt"
    layout = "ROOT/VOCdevkit/VOC2012/{JPEGImages, SegmentationClass, ImageSets/Segmentation/val.txt}"
