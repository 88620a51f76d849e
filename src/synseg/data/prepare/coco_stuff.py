"""COCO-Stuff 164k: `stuffthingmaps_trainval2017` (PNG value = COCO category id - 1, 255 unlabeled) ->
`*_labelTrainIds.png` with the 171 used categories as train ids 0..170 (80 things, then 91 stuff) and 255 ignored,
the table mmsegmentation's coco_stuff164k.py converter applies."""
from __future__ import annotations

from pathlib import Path

import numpy as np

from synseg.data.prepare.base import (Preparer, SplitReport, Task, find_dir, has_files, link, read_png, save_png,
                                      unpaired)

# COCO category ids that no annotation uses; the other 171 of 1..182 are the classes, in id order.
UNUSED_IDS = {12, 26, 29, 30, 45, 66, 68, 69, 71, 83, 91}
USED_IDS = [i for i in range(1, 183) if i not in UNUSED_IDS]
THING_IDS = USED_IDS[:80]  # 1..90: the things; 92..182 are stuff

STUFF_TABLE = np.full(256, 255, dtype=np.uint8)
STUFF_TABLE[[i - 1 for i in USED_IDS]] = np.arange(len(USED_IDS))
IMAGES_HINT = "extract val2017.zip (and train2017.zip for --split train) there"
MAPS_HINT = "extract stuffthingmaps_trainval2017.zip there"


def coco_images(source: Path, split: str) -> dict[str, Path]:
    folder = find_dir(source, f"{split}2017", f"COCO {split} images", IMAGES_HINT, has_files(".jpg"))
    return {p.stem: p for p in folder.glob("*.jpg")}


def stuff_maps(source: Path, split: str) -> dict[str, Path]:
    folder = find_dir(source, f"{split}2017", f"COCO-Stuff {split} maps", MAPS_HINT, has_files(".png", "TrainIds.png"))
    return {p.stem: p for p in folder.glob("*.png") if not p.stem.endswith("TrainIds")}


def apply_table(target: Path, table: np.ndarray, stuff_map: Path) -> None:
    save_png(target, table[read_png(stuff_map)])


class COCOStuff(Preparer):
    name = "coco-stuff"
    benchmark = "stuff"
    downloads = "val2017.zip and stuffthingmaps_trainval2017.zip"
    official = {"val": 5000, "train": 118287}
    suffix = "_labelTrainIds.png"
    table = STUFF_TABLE

    def tasks(self, source: Path, out: Path, split: str) -> tuple[list[Task], SplitReport]:
        return self.paired_tasks(source, out, split, stuff_maps(source, split), self.map_task)

    def map_task(self, target: Path, stem: str, maps: dict[str, Path]) -> Task:
        return (apply_table, target, self.table, maps[stem])

    def paired_tasks(self, source: Path, out: Path, split: str, labels: dict, make_task) -> tuple[list[Task], SplitReport]:
        """Link each image into ROOT/images/SPLIT2017 and write its label as `make_task` says."""
        images = coco_images(source, split)
        tasks: list[Task] = []
        for stem in sorted(images.keys() & labels.keys()):
            tasks.append((link, out / "images" / f"{split}2017" / f"{stem}.jpg", images[stem]))
            tasks.append(make_task(out / "annotations" / f"{split}2017" / f"{stem}{self.suffix}", stem, labels))
        missing = unpaired(images, set(labels), "the label of {}.jpg") + unpaired(labels, set(images), "{}.jpg")
        return tasks, SplitReport(split, len(images.keys() & labels.keys()), self.official[split], missing)
