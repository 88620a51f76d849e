"""Cityscapes: gtFine label ids -> `*_gtFine_labelTrainIds.png` (19 train ids, 255 ignored) beside the linked label ids
and images. `synseg eval` maps label ids itself; the train ids are for other tools that read them."""
from __future__ import annotations

from pathlib import Path

from synseg.data.benchmarks.cityscapes import TRAIN_IDS
from synseg.data.prepare.base import Preparer, SplitReport, Task, find_dir, link, read_png, save_png, unpaired

IMAGE, LABEL, TRAIN = "_leftImg8bit.png", "_gtFine_labelIds.png", "_gtFine_labelTrainIds.png"
HINT = "extract leftImg8bit_trainvaltest.zip and gtFine_trainvaltest.zip there"


def train_ids(target: Path, label_ids: Path) -> None:
    save_png(target, TRAIN_IDS[read_png(label_ids).astype("int64")])


class CityscapesPreparer(Preparer):
    name = "cityscapes"
    benchmark = "city"
    downloads = "leftImg8bit_trainvaltest.zip and gtFine_trainvaltest.zip"
    official = {"val": 500, "train": 2975}

    def tasks(self, source: Path, out: Path, split: str) -> tuple[list[Task], SplitReport]:
        image_dir = find_dir(source, f"leftImg8bit/{split}", "Cityscapes images", HINT)
        label_dir = find_dir(source, f"gtFine/{split}", "Cityscapes fine labels", HINT)
        images = {p.name[: -len(IMAGE)]: p for p in image_dir.rglob(f"*{IMAGE}")}
        labels = {p.name[: -len(LABEL)]: p for p in label_dir.rglob(f"*{LABEL}")}
        target = out / "cityscapes"
        tasks: list[Task] = []
        for stem in sorted(images.keys() & labels.keys()):
            city = images[stem].parent.name
            tasks.append((link, target / "leftImg8bit" / split / city / f"{stem}{IMAGE}", images[stem]))
            tasks.append((link, target / "gtFine" / split / city / f"{stem}{LABEL}", labels[stem]))
            tasks.append((train_ids, target / "gtFine" / split / city / f"{stem}{TRAIN}", labels[stem]))
        missing = unpaired(images, set(labels), f"{{}}{LABEL}") + unpaired(labels, set(images), f"{{}}{IMAGE}")
        return tasks, SplitReport(split, len(images.keys() & labels.keys()), self.official[split], missing)
