"""PASCAL VOC 2012: the download already is the layout; check it and link the split's files into ROOT."""
from __future__ import annotations

from pathlib import Path

from synseg.data.prepare.base import Preparer, SplitReport, Task, find_dir, link, unpaired, write_lines
from synseg.io import read_text


class VOC(Preparer):
    name = "voc"
    benchmark = "voc"
    downloads = "VOCtrainval_11-May-2012.tar (extracted: VOCdevkit/VOC2012)"
    official = {"val": 1449, "train": 1464}

    def tasks(self, source: Path, out: Path, split: str) -> tuple[list[Task], SplitReport]:
        devkit = find_dir(source, "VOCdevkit/VOC2012", "VOC 2012", f"extract {self.downloads} there")
        listed = devkit / "ImageSets" / "Segmentation" / f"{split}.txt"
        if not listed.is_file():
            return [], SplitReport(split, 0, self.official[split], [str(listed)])
        stems = [line.strip() for line in read_text(listed).splitlines() if line.strip()]
        images = {s for s in stems if (devkit / "JPEGImages" / f"{s}.jpg").is_file()}
        labels = {s for s in stems if (devkit / "SegmentationClass" / f"{s}.png").is_file()}
        target = out / "VOCdevkit" / "VOC2012"
        tasks: list[Task] = []
        for stem in sorted(images & labels):
            tasks.append((link, target / "JPEGImages" / f"{stem}.jpg", devkit / "JPEGImages" / f"{stem}.jpg"))
            tasks.append((link, target / "SegmentationClass" / f"{stem}.png", devkit / "SegmentationClass" / f"{stem}.png"))
        missing = unpaired(stems, images, "JPEGImages/{}.jpg") + unpaired(stems, labels, "SegmentationClass/{}.png")
        split_list = (write_lines, target / "ImageSets" / "Segmentation" / f"{split}.txt", sorted(images & labels))
        return tasks, SplitReport(split, len(images & labels), self.official[split], missing, [split_list])
