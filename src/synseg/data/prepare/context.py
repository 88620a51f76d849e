"""Pascal Context (59 classes): VOC2010 + `trainval_merged.json` -> `SegmentationClassContext/*.png` (0 = other,
1..59 the classes) and `ImageSets/SegmentationContext/{train,val}.txt`, as mmsegmentation's pascal_context.py maps
them.

mmsegmentation reads the JSON through the Detail API, which is not on PyPI (it is installed from its git repository);
the JSON is decoded here directly: each image's segments, in file order, painted with their category id (what
`Detail.getMask` does), then the 59 ids mapped to 1..59 in id order, 0 staying 0.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np

from synseg.data.prepare.base import Preparer, SplitReport, Task, find_dir, link, save_png, unpaired, write_lines
from synseg.config import read_json
from synseg.errors import UserError

# Pascal in Detail category ids of the 59 classes, in the classes' order (alphabetical, as the ids are).
CONTEXT_IDS = [2, 9, 18, 19, 22, 23, 25, 31, 33, 34, 44, 45, 46, 59, 65, 68, 72, 80, 85, 98, 104, 105, 113, 115, 144,
               158, 159, 162, 187, 189, 207, 220, 232, 258, 259, 260, 284, 295, 296, 308, 324, 326, 347, 349, 354, 355,
               360, 366, 368, 397, 415, 416, 420, 424, 427, 440, 445, 454, 458]
HINT = "extract VOCtrainval_03-May-2010.tar and put Pascal Context's trainval_merged.json there"


def draw_segments(target: Path, height: int, width: int, segments: list[tuple[int, dict]]) -> None:
    from pycocotools import mask as coco_mask

    table = {category: index for index, category in enumerate(CONTEXT_IDS, start=1)}
    label = np.zeros((height, width), dtype=np.uint8)
    for category, rle in segments:
        if category not in table:
            raise UserError(f"{target.stem}: category id {category} is not one of Pascal Context's 59; is the JSON "
                            "trainval_merged.json?")
        label[coco_mask.decode(rle) > 0] = table[category]
    save_png(target, label)


class Context(Preparer):
    name = "context"
    benchmark = "context"
    downloads = "VOCtrainval_03-May-2010.tar and trainval_merged.json"
    official = {"val": 5104, "train": 4998}

    def tasks(self, source: Path, out: Path, split: str) -> tuple[list[Task], SplitReport]:
        try:
            from pycocotools import mask  # noqa: F401  # fail before the long work
        except ImportError:
            raise UserError("decoding Pascal Context's masks needs pycocotools: pip install 'synseg[prepare]'") from None
        jpegs = find_dir(source, "VOCdevkit/VOC2010/JPEGImages", "VOC2010 images", HINT)
        data = read_json(find_dir(source, "trainval_merged.json", "Pascal Context annotations", HINT, Path.is_file))
        images = {image["image_id"]: image for image in data["images"] if image["phase"] == split}
        segments: dict[int, list] = {image_id: [] for image_id in images}
        for segment in data["annos_segmentation"]:
            if segment["image_id"] in segments:
                segments[segment["image_id"]].append((segment["category_id"], segment["segmentation"]))
        stems = {Path(image["file_name"]).stem: image for image in images.values()}
        present = {stem for stem in stems if (jpegs / f"{stem}.jpg").is_file()}
        target = out / "VOCdevkit" / "VOC2010"
        tasks: list[Task] = []
        for stem in sorted(present):
            image = stems[stem]
            tasks.append((link, target / "JPEGImages" / f"{stem}.jpg", jpegs / f"{stem}.jpg"))
            tasks.append((draw_segments, target / "SegmentationClassContext" / f"{stem}.png", image["height"],
                          image["width"], segments[image["image_id"]]))
        split_list = (write_lines, target / "ImageSets" / "SegmentationContext" / f"{split}.txt", sorted(present))
        return tasks, SplitReport(split, len(present), self.official[split], unpaired(stems, present, "JPEGImages/{}.jpg"),
                                  [split_list])
