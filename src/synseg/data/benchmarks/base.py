"""What every benchmark reader shares: where the layout lives, pairing images with labels, and one-message layout errors."""
from __future__ import annotations

import functools
from abc import ABC, abstractmethod
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import ClassVar

import numpy as np
from PIL import Image, UnidentifiedImageError

from synseg.errors import UserError
from synseg.io import read_text

IGNORE_INDEX = 255
INDEX_MODES = ("L", "P", "I", "I;16", "I;16L", "I;16B")


@dataclass(frozen=True)
class Sample:
    image_path: Path
    label_path: Path
    stem: str


def read_index_png(path: Path, what: str = "label") -> np.ndarray:
    """A single-channel PNG of class indices as int64 (palette PNGs give their indices, not their colours)."""
    try:
        with Image.open(path) as image:
            if image.mode not in INDEX_MODES:
                raise UserError(f"{what} {path} is a {image.mode} image; expected a single-channel PNG of class indices")
            return np.asarray(image).astype(np.int64)
    except FileNotFoundError:
        raise UserError(f"{what} not found: {path}") from None
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as error:
        raise UserError(f"not a readable {what}: {path} ({error.__class__.__name__})") from None


def reduce_zero_label(raw: np.ndarray) -> np.ndarray:
    """mmsegmentation's convention for Context and ADE: 0 ('other') is ignored and k becomes k - 1."""
    return np.where((raw == 0) | (raw == IGNORE_INDEX), IGNORE_INDEX, raw - 1)


class LayoutProblems:
    """Collects everything wrong with a layout so the user learns it all in one message instead of one per run."""

    def __init__(self) -> None:
        self.items: list[str] = []

    def missing(self, path: Path) -> bool:
        """Record `path` as missing if it does not exist; True when it was missing."""
        if path.exists():
            return False
        self.items.append(f"missing {path}")
        return True

    def unpaired(self, what: str, names: list[str]) -> None:
        if names:
            shown = ", ".join(sorted(names)[:3]) + (", ..." if len(names) > 3 else "")
            self.items.append(f"{len(names)} {what} ({shown})")

    def raise_if_any(self, benchmark: str, root: Path, expected: str) -> None:
        if self.items:
            raise UserError(f"{benchmark} layout under {root} is broken: {'; '.join(self.items)} (expected {expected})")


def files_by_stem(folder: Path, suffix: str) -> dict[str, Path]:
    """Files named STEM + suffix anywhere below `folder` (Cityscapes nests them per city)."""
    return {path.name[: -len(suffix)]: path for path in folder.rglob(f"*{suffix}") if path.is_file()}


def pair_by_stem(images: dict[str, Path], labels: dict[str, Path], problems: LayoutProblems) -> list[Sample]:
    problems.unpaired("images without a label", sorted(images.keys() - labels.keys()))
    problems.unpaired("labels without an image", sorted(labels.keys() - images.keys()))
    return [Sample(images[stem], labels[stem], stem) for stem in sorted(images.keys() & labels.keys())]


def pair_from_list(split: Path, image_dir: Path, image_suffix: str, label_dir: Path, label_suffix: str,
                   problems: LayoutProblems) -> list[Sample]:
    """VOC-style splits: one stem per line of a list file, each needing an image and a label."""
    stems = [line.strip() for line in read_text(split).splitlines() if line.strip()]
    samples = [Sample(image_dir / f"{s}{image_suffix}", label_dir / f"{s}{label_suffix}", s) for s in stems]
    problems.unpaired(f"images listed in {split.name} but missing", [s.stem for s in samples if not s.image_path.is_file()])
    problems.unpaired(f"labels listed in {split.name} but missing", [s.stem for s in samples if not s.label_path.is_file()])
    return [s for s in samples if s.image_path.is_file() and s.label_path.is_file()]


def locate(root: Path, anchor: tuple[str, ...]) -> Path:
    """The folder the layout starts in: ROOT/anchor, or the rest of it when ROOT already is (part of) the anchor."""
    parts = root.resolve().parts
    for depth in range(len(anchor), 0, -1):
        if parts[-depth:] == anchor[:depth]:
            return root.joinpath(*anchor[depth:])
    return root if anchor and parts[-1:] == anchor[-1:] else root.joinpath(*anchor)


@functools.cache
def load_class_names(name: str) -> tuple[str, ...]:
    text = resources.files("synseg.data.benchmarks").joinpath("classes", f"{name}.txt").read_text(encoding="utf-8")
    return tuple(line.strip() for line in text.splitlines() if line.strip())


class Benchmark(ABC):
    """A benchmark's validation split: its samples, class names and label convention.

    Labels decode to int64 class indices in the order of `class_names` (background first where there is one),
    with 255 for pixels that are not scored.
    """

    name: ClassVar[str]
    title: ClassVar[str]
    # With a background class, a pixel is background when its best activation is below the method's threshold.
    has_background: ClassVar[bool] = False
    anchor: ClassVar[tuple[str, ...]] = ()
    layout: ClassVar[str]
    ignore_index: ClassVar[int] = IGNORE_INDEX

    def __init__(self, root: str | Path) -> None:
        self.root = Path(root)
        if not self.root.is_dir():
            raise UserError(f"{self.name}: --root {self.root} is not a folder")
        self.base = locate(self.root, self.anchor)
        problems = LayoutProblems()
        self._samples = self._find_samples(problems)
        if not problems.items and not self._samples:
            problems.items.append("no image/label pairs")
        problems.raise_if_any(self.name, self.root, self.layout)

    @abstractmethod
    def _find_samples(self, problems: LayoutProblems) -> list[Sample]:
        """The split's image/label pairs; anything missing or unpaired goes into `problems`."""

    @property
    def samples(self) -> list[Sample]:
        return list(self._samples)

    @classmethod
    def class_names(cls) -> tuple[str, ...]:
        return load_class_names(cls.name)

    @classmethod
    def num_classes(cls) -> int:
        return len(cls.class_names())

    @classmethod
    def prompt_labels(cls) -> list[str]:
        """The names a model is asked about: every class except background, which is decided by a threshold."""
        names = cls.class_names()
        return list(names[1:] if cls.has_background else names)

    def decode(self, raw: np.ndarray) -> np.ndarray:
        """Map the file's values to class indices; the default is the identity."""
        return raw

    def read_label(self, path: Path) -> np.ndarray:
        try:
            return self.decode(read_index_png(path))
        except ValueError as error:
            raise UserError(f"label {path}: {error}") from None

    def __len__(self) -> int:
        return len(self._samples)


class ListedSplit(Benchmark):
    """VOC-style layout: a split file names the stems; each needs an image and a label."""

    image_dir: ClassVar[str] = "JPEGImages"
    label_dir: ClassVar[str]
    split_file: ClassVar[str]

    def _find_samples(self, problems: LayoutProblems) -> list[Sample]:
        images, labels, split = self.base / self.image_dir, self.base / self.label_dir, self.base / self.split_file
        if any([problems.missing(images), problems.missing(labels), problems.missing(split)]):
            return []
        return pair_from_list(split, images, ".jpg", labels, ".png", problems)


class PairedFolders(Benchmark):
    """Image and label folders paired by file stem (the files may be nested, as Cityscapes nests them per city)."""

    image_dir: ClassVar[str]
    label_dir: ClassVar[str]
    image_suffix: ClassVar[str] = ".jpg"
    label_suffix: ClassVar[str] = ".png"

    def _find_samples(self, problems: LayoutProblems) -> list[Sample]:
        images, labels = self.base / self.image_dir, self.base / self.label_dir
        if any([problems.missing(images), problems.missing(labels)]):
            return []
        return pair_by_stem(files_by_stem(images, self.image_suffix), files_by_stem(labels, self.label_suffix), problems)
