"""COCO val2017 as converted by GroupViT (COCO-Object, 80 things + background) and mmsegmentation (COCO-Stuff, 171)."""
from __future__ import annotations

from synseg.data.benchmarks.base import PairedFolders


class COCOObject(PairedFolders):
    """Labels: 0 = background, 1..80 the things, 255 ignored."""

    name = "object"
    title = "Object"
    has_background = True
    image_dir = "images/val2017"
    label_dir = "annotations/val2017"
    label_suffix = "_instanceTrainIds.png"
    layout = "ROOT/{images/val2017/*.jpg, annotations/val2017/*_instanceTrainIds.png}"


class COCOStuff(PairedFolders):
    """Labels: 0..170 (things then stuff), 255 ignored."""

    name = "stuff"
    title = "Stuff"
    image_dir = "images/val2017"
    label_dir = "annotations/val2017"
    label_suffix = "_labelTrainIds.png"
    layout = "ROOT/{images/val2017/*.jpg, annotations/val2017/*_labelTrainIds.png}"
