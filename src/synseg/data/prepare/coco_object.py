"""COCO-Object: the 80 things as 1..80 and everything else 0 (background), in `*_instanceTrainIds.png`.

From `stuffthingmaps_trainval2017` as GroupViT and TCL convert it (their numbers are on this; unlabeled pixels become
background too), or, when those maps are absent, from `annotations/instances_SPLIT2017.json` through pycocotools, every
instance drawn largest first so smaller ones stay on top (crowd regions included).
"""
from __future__ import annotations

import sys
from pathlib import Path

import numpy as np

from synseg.data.prepare.base import SplitReport, Task, find_dir, save_png
from synseg.data.prepare.coco_stuff import THING_IDS, COCOStuff, stuff_maps
from synseg.config import read_json
from synseg.errors import UserError

OBJECT_TABLE = np.zeros(256, dtype=np.uint8)
OBJECT_TABLE[[i - 1 for i in THING_IDS]] = np.arange(1, len(THING_IDS) + 1)


def draw_instances(target: Path, height: int, width: int, annotations: list[dict]) -> None:
    from pycocotools import mask as coco_mask

    label = np.zeros((height, width), dtype=np.uint8)
    for annotation in sorted(annotations, key=lambda a: -a["area"]):
        segmentation = annotation["segmentation"]
        if isinstance(segmentation, list):  # polygons
            rle = coco_mask.merge(coco_mask.frPyObjects(segmentation, height, width))
        elif isinstance(segmentation["counts"], list):  # uncompressed RLE
            rle = coco_mask.frPyObjects(segmentation, height, width)
        else:
            rle = segmentation
        label[coco_mask.decode(rle) > 0] = OBJECT_TABLE[annotation["category_id"] - 1]
    save_png(target, label)


class COCOObject(COCOStuff):
    name = "coco-object"
    benchmark = "object"
    downloads = "val2017.zip and stuffthingmaps_trainval2017.zip (or annotations_trainval2017.zip)"
    suffix = "_instanceTrainIds.png"
    table = OBJECT_TABLE

    def tasks(self, source: Path, out: Path, split: str) -> tuple[list[Task], SplitReport]:
        try:
            maps = stuff_maps(source, split)
        except UserError as no_maps:
            try:
                annotations = find_dir(source, f"annotations/instances_{split}2017.json", "COCO instances", "",
                                       Path.is_file)
            except UserError:
                raise UserError(f"{no_maps}; or extract annotations_trainval2017.zip there") from None
            return self.instance_tasks(source, out, split, annotations)
        return self.paired_tasks(source, out, split, maps, self.map_task)

    def instance_tasks(self, source: Path, out: Path, split: str, path: Path) -> tuple[list[Task], SplitReport]:
        try:
            from pycocotools import mask  # noqa: F401  # fail before the long work
        except ImportError:
            raise UserError("converting instances needs pycocotools: pip install 'synseg[prepare]'") from None
        data = read_json(path)
        by_image: dict[str, list[dict]] = {}
        shapes = {}
        for image in data["images"]:
            stem = Path(image["file_name"]).stem
            by_image[stem], shapes[image["id"]] = [], (stem, image["height"], image["width"])
        for annotation in data["annotations"]:
            by_image[shapes[annotation["image_id"]][0]].append(
                {key: annotation[key] for key in ("segmentation", "category_id", "area")})
        sizes = {stem: (height, width) for stem, height, width in shapes.values()}
        print(f"{self.name}: no stuffthingmaps found; drawing the instances of {path}", file=sys.stderr)
        return self.paired_tasks(source, out, split, by_image,
                                 lambda target, stem, anns: (draw_instances, target, *sizes[stem], anns[stem]))
