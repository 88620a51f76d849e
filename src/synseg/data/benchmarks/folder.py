"""Your own data in VOC's layout, with its class list beside it: ROOT/{JPEGImages, SegmentationClass, ImageSets/Segmentation/val.txt, classes.txt}.

The split list is `val.txt`, or the only list in `ImageSets/Segmentation` when there is just one (e.g. `test.txt`).

`classes.txt` holds one class name per line in label-index order; a first class named "background" makes it a
benchmark with a background class (decided by the method's threshold). Images may be .jpg or .png.
"""
from __future__ import annotations

from synseg.data.benchmarks.base import IGNORE_INDEX, LayoutProblems, ListedSplit, Sample, pair_from_list
from synseg.io import read_text


class Folder(ListedSplit):
    name = "folder"
    title = "Folder"
    label_dir = "SegmentationClass"
    split_file = "ImageSets/Segmentation/val.txt"
    layout = "ROOT/{JPEGImages, SegmentationClass, ImageSets/Segmentation/val.txt, classes.txt}"

    def _find_samples(self, problems: LayoutProblems) -> list[Sample]:
        classes = self.base / "classes.txt"
        if problems.missing(classes):
            return []
        self.names = tuple(line.strip() for line in read_text(classes).splitlines() if line.strip())
        duplicates = sorted({name for name in self.names if self.names.count(name) > 1})
        if not self.names or len(self.names) >= IGNORE_INDEX or duplicates:
            problems.items.append(f"{classes} lists {len(self.names)} classes{f', {duplicates[0]} twice' if duplicates else ''}"
                                  f" (at most {IGNORE_INDEX - 1} classes, each once: {IGNORE_INDEX} marks unscored pixels)")
            return []
        self.has_background = self.names[0] == "background"
        images, labels, split = self.base / self.image_dir, self.base / self.label_dir, self.base / self.split_file
        lists = sorted(split.parent.glob("*.txt"))
        if not split.exists() and len(lists) == 1:
            split = lists[0]
        if any([problems.missing(images), problems.missing(labels), problems.missing(split)]):
            return []
        suffix = ".png" if any(images.glob("*.png")) and not any(images.glob("*.jpg")) else ".jpg"
        return pair_from_list(split, images, suffix, labels, ".png", problems)

    def class_names(self) -> tuple[str, ...]:  # type: ignore[override]  # per folder, not per class
        return self.names

    def num_classes(self) -> int:  # type: ignore[override]
        return len(self.names)

    def prompt_labels(self) -> list[str]:  # type: ignore[override]
        return list(self.names[1:] if self.has_background else self.names)
