"""What every converter shares: finding the downloads, restartable atomic writes over a process pool with a progress bar,
and the closing check of each split against its official size."""
from __future__ import annotations

import os
import shutil
import sys
from abc import ABC, abstractmethod
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, ClassVar, Iterable

import numpy as np
from PIL import Image
from tqdm import tqdm

from synseg.errors import UserError
from synseg.io import atomic_path

# A task writes one output file from its inputs: (function, output, *inputs). Functions are module-level so a process
# pool can pickle them.
Task = tuple


@dataclass
class SplitReport:
    """One split after conversion: how many samples it has against the official count, and which are missing."""

    split: str
    samples: int
    official: int
    missing: list[str] = field(default_factory=list)
    lists: list[Task] = field(default_factory=list)  # split lists: rewritten on every run, after the files

    def line(self, name: str) -> str:
        status = "complete" if self.samples == self.official and not self.missing else "INCOMPLETE"
        text = f"{name} {self.split}: {self.samples} of the official {self.official} images ({status})"
        if self.missing:
            shown = ", ".join(self.missing[:5]) + (f", ... ({len(self.missing)} in all)" if len(self.missing) > 5 else "")
            text += f"; missing: {shown}"
        return text

    @property
    def complete(self) -> bool:
        return self.samples == self.official and not self.missing


class Preparer(ABC):
    """Turns an official download into the layout one `synseg eval` benchmark reads."""

    name: ClassVar[str]
    benchmark: ClassVar[str]  # the `synseg eval --benchmark` name that reads the result
    downloads: ClassVar[str]  # what the user downloads, for help and error messages
    official: ClassVar[dict[str, int]]  # split -> official number of images

    @abstractmethod
    def tasks(self, source: Path, out: Path, split: str) -> tuple[list[Task], SplitReport]:
        """The files to write for one split, and its report (missing samples found while listing)."""


def find_dir(source: Path, relative: str, what: str, hint: str, accept: Callable[[Path], bool] = Path.is_dir) -> Path:
    """`source/relative`, or the same path up to two folders deeper (archives extract into a folder of their own)."""
    for pattern in (relative, f"*/{relative}", f"*/*/{relative}"):
        for path in sorted(source.glob(pattern)):
            if accept(path):
                return path
    raise UserError(f"cannot find {what} ({relative}) under {source}: {hint}")


def has_files(suffix: str, exclude: str | None = None) -> Callable[[Path], bool]:
    """A folder test for find_dir: holds (at any depth) a file ending in `suffix`, not in `exclude`."""
    def accept(path: Path) -> bool:
        return path.is_dir() and any(exclude is None or not f.name.endswith(exclude) for f in path.rglob(f"*{suffix}"))
    return accept


def link(target: Path, source: Path) -> None:
    """Hard-link (no extra space) `source` to `target`, copying when they are on different file systems."""
    with atomic_path(target) as tmp:
        tmp.unlink()
        try:
            os.link(source, tmp)
        except OSError:
            shutil.copyfile(source, tmp)


def write_lines(target: Path, lines: list[str]) -> None:
    with atomic_path(target) as tmp:
        tmp.write_text("".join(f"{line}\n" for line in lines))


def save_png(target: Path, array: np.ndarray) -> None:
    with atomic_path(target) as tmp:
        Image.fromarray(array.astype(np.uint8)).save(tmp, format="PNG")


def read_png(path: Path) -> np.ndarray:
    with Image.open(path) as image:
        return np.asarray(image)


def _run(task: Task) -> None:
    function, target, *inputs = task
    function(target, *inputs)


def run_tasks(tasks: list[Task], desc: str, workers: int) -> tuple[int, int]:
    """Write every task's output that does not exist yet; returns (written, skipped). Outputs are written atomically, so
    an existing one is complete and a killed run resumes where it stopped."""
    todo = [task for task in tasks if not Path(task[1]).exists()]
    skipped = len(tasks) - len(todo)
    bar = tqdm(total=len(tasks), initial=skipped, desc=desc, unit="file", file=sys.stderr)
    with bar:
        if workers > 1 and len(todo) > 1:
            with ProcessPoolExecutor(workers) as pool:
                for _ in pool.map(_run, todo, chunksize=max(1, min(64, len(todo) // (4 * workers)))):
                    bar.update()
        else:
            for task in todo:
                _run(task)
                bar.update()
    return len(todo), skipped


def unpaired(stems: Iterable[str], present: set[str], what: str) -> list[str]:
    """Names for the report: each stem absent from `present`, described as `what` with {} for the stem."""
    return [what.format(stem) for stem in sorted(set(stems) - present)]
