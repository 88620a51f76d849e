"""ADE20K SceneParsing: the download already is the layout; check it and link the split's files into ROOT."""
from __future__ import annotations

from pathlib import Path

from synseg.data.prepare.base import Preparer, SplitReport, Task, find_dir, link, unpaired

FOLDERS = {"val": "validation", "train": "training"}


class ADE(Preparer):
    name = "ade"
    benchmark = "ade"
    downloads = "ADEChallengeData2016.zip (extracted: ADEChallengeData2016)"
    official = {"val": 2000, "train": 20210}

    def tasks(self, source: Path, out: Path, split: str) -> tuple[list[Task], SplitReport]:
        base = find_dir(source, "ADEChallengeData2016", "ADE20K", f"extract {self.downloads} there")
        folder = FOLDERS[split]
        images = {p.stem: p for p in (base / "images" / folder).glob("*.jpg")}
        labels = {p.stem: p for p in (base / "annotations" / folder).glob("*.png")}
        target = out / "ADEChallengeData2016"
        tasks: list[Task] = []
        for stem in sorted(images.keys() & labels.keys()):
            tasks.append((link, target / "images" / folder / f"{stem}.jpg", images[stem]))
            tasks.append((link, target / "annotations" / folder / f"{stem}.png", labels[stem]))
        missing = [f"{p}/" for p in (base / "images" / folder, base / "annotations" / folder) if not p.is_dir()]
        missing += (unpaired(images, set(labels), f"annotations/{folder}/{{}}.png")
                   + unpaired(labels, set(images), f"images/{folder}/{{}}.jpg"))
        return tasks, SplitReport(split, len(images.keys() & labels.keys()), self.official[split], missing)
