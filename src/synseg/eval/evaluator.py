"""Score a method on a benchmark split: run a Segmenter, or read saved label maps of any method, into one confusion matrix."""
from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np
import torch
from tqdm import tqdm

from synseg.data.benchmarks import BENCHMARKS, Benchmark, Sample
from synseg.data.benchmarks.base import read_index_png
from synseg.distributed import current, sum_over_ranks
from synseg.errors import UserError
from synseg.eval.metric import ConfusionMatrix, check_indices
from synseg.encoding import ImageEncoding


class SampleInput:
    """One sample being scored: its label's (height, width) and its image, read and encoded once on first use and
    shared by every row that scores it (`encoding`)."""

    def __init__(self, sample: Sample, shape: tuple[int, int]) -> None:
        self.sample, self.shape = sample, tuple(shape)
        self._encodings: dict[torch.device, ImageEncoding] = {}

    def encoding(self, device: torch.device) -> ImageEncoding:
        """The image on `device`; UserError when its size is not its label's."""
        if device not in self._encodings:
            encoding = ImageEncoding(self.sample.image_path, device)
            if encoding.size != self.shape:
                raise UserError(
                    f"image {self.sample.image_path} is {encoding.size[1]}x{encoding.size[0]} but its label "
                    f"{self.sample.label_path} is {self.shape[1]}x{self.shape[0]}")
            self._encodings[device] = encoding
        return self._encodings[device]


Predict = Callable[[SampleInput], np.ndarray]


@dataclass(frozen=True)
class EvalResult:
    """One method on one benchmark. IoUs are fractions; NaN marks a class absent from ground truth and prediction."""

    method: str
    benchmark: str
    title: str
    class_names: tuple[str, ...]
    images: int
    iou: tuple[float, ...]
    miou: float
    pixel_accuracy: float
    protocol: str = ""

    def to_json(self) -> dict:
        """Percentages, with null for classes that were not scored."""
        return {
            "method": self.method,
            **({"protocol": self.protocol} if self.protocol else {}),
            "benchmark": self.benchmark,
            "images": self.images,
            "miou": _percent(self.miou),
            "pixel_accuracy": _percent(self.pixel_accuracy),
            "per_class_iou": {name: _percent(value) for name, value in zip(self.class_names, self.iou)},
        }


def _percent(value: float) -> float | None:
    return None if math.isnan(value) else 100.0 * value


def split(benchmark: Benchmark, limit: int | None = None) -> list[Sample]:
    """The samples to score: the whole split, or its first `limit` in the split's order."""
    samples = benchmark.samples
    return samples if limit is None else samples[:limit]


def evaluate(benchmark: Benchmark, predict: Predict, method: str, limit: int | None = None,
             progress: bool = True) -> EvalResult:
    """Stream the split through `predict` (SampleInput -> label map at the label's size) and score it."""
    return evaluate_many(benchmark, {(method, ""): predict}, limit, progress)[0]


def evaluate_many(benchmark: Benchmark, predicts: dict[tuple[str, str], Predict], limit: int | None = None,
                  progress: bool = True) -> list[EvalResult]:
    """Score several (method, protocol) rows in one pass: each label and each image is read once per sample for all
    of them (`SampleInput`).

    Under torchrun each process scores every world-th image and the integer confusion matrices are summed over the
    processes, so the result equals one process's exactly; the bar shows the first process's share.
    """
    samples = split(benchmark, limit)
    ranks = current()
    matrices = {row: ConfusionMatrix(benchmark.num_classes(), benchmark.ignore_index) for row in predicts}
    mine = samples[ranks.rank :: ranks.world]
    desc = f"{benchmark.title} [{', '.join(dict.fromkeys(method for method, _ in predicts))}]"
    # The bar is closed (its line ended) before any error message is printed below it.
    with tqdm(total=len(mine), desc=desc, unit="img", disable=not progress or not ranks.main) as bar:
        for sample in mine:
            truth = benchmark.read_label(sample.label_path)
            item = SampleInput(sample, truth.shape)
            for row, predict in predicts.items():
                prediction = predict(item)
                try:
                    matrices[row].update(prediction, truth)
                except ValueError as error:
                    raise UserError(f"{benchmark.name} image {sample.stem} ({sample.label_path}): {error}") from None
            bar.update()
    for matrix in matrices.values():
        matrix.matrix = sum_over_ranks(matrix.matrix)
    return [EvalResult(method, benchmark.name, benchmark.title, benchmark.class_names(), len(samples),
                       tuple(float(v) for v in matrix.iou()), matrix.miou(), matrix.pixel_accuracy(), protocol)
            for (method, protocol), matrix in matrices.items()]


class PredictionFolder:
    """Saved label maps of any method: DIR/<stem>.png, single-channel class indices in the benchmark's class order
    (background first where there is one), 255 for no prediction, at the label's resolution."""

    def __init__(self, folder: str | Path, samples: list[Sample], num_classes: int) -> None:
        self.folder = Path(folder)
        self.num_classes = num_classes
        if not self.folder.is_dir():
            raise UserError(f"predictions folder not found: {self.folder}")
        missing = [s.stem for s in samples if not self.path(s).is_file()]
        if missing:
            shown = ", ".join(f"{stem}.png" for stem in missing[:3]) + (", ..." if len(missing) > 3 else "")
            raise UserError(f"{len(missing)} of {len(samples)} predictions missing in {self.folder} ({shown})")

    def path(self, sample: Sample) -> Path:
        return self.folder / f"{sample.stem}.png"

    def __call__(self, item: SampleInput) -> np.ndarray:
        sample, shape = item.sample, item.shape
        path = self.path(sample)
        prediction = read_index_png(path, "prediction")
        if prediction.shape != tuple(shape):
            raise UserError(
                f"prediction {path} is {prediction.shape[1]}x{prediction.shape[0]} but its label {sample.label_path} "
                f"is {shape[1]}x{shape[0]}"
            )
        try:
            check_indices(prediction, self.num_classes, f"prediction {path}")
        except ValueError as error:
            raise UserError(str(error)) from None
        return prediction


def segmenter_predict(segmenter, benchmark: Benchmark, threshold: float | None = None, labels: list | None = None,
                      background_names: tuple[str, ...] = ()) -> Predict:
    """Label maps from a `synseg.predictor.Segmenter` asked about the benchmark's class names (or `labels`, one entry
    per prompt label, each a name or a tuple of names)."""
    labels = labels or benchmark.prompt_labels()

    def predict(item: SampleInput) -> np.ndarray:
        result = segmenter.segment(item.encoding(segmenter.device), labels, threshold=threshold,
                                   background=benchmark.has_background, background_names=background_names)
        return result.label_map

    return predict


def markdown_table(results: list[EvalResult]) -> str:
    """The paper's Table II layout: a row per method (and protocol, when there are several), mIoU (%) per benchmark in
    the paper's column order, then the mean."""
    order = list(BENCHMARKS)
    benchmarks = sorted({r.benchmark for r in results}, key=order.index)
    titles = {r.benchmark: r.title for r in results}
    rows = list(dict.fromkeys((r.method, r.protocol) for r in results))
    with_protocol = len({protocol for _, protocol in rows}) > 1
    score = {(r.method, r.protocol, r.benchmark): r.miou for r in results}
    head = ["Method", *(["Protocol"] if with_protocol else []), *(titles[b] for b in benchmarks), "Avg."]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for method, protocol in rows:
        values = [score.get((method, protocol, b), math.nan) for b in benchmarks]
        finite = [v for v in values if not math.isnan(v)]
        mean = sum(finite) / len(finite) if finite else math.nan
        cells = [method, *([protocol] if with_protocol else []), *(_cell(v) for v in [*values, mean])]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def _cell(value: float) -> str:
    return "n/a" if math.isnan(value) else f"{100.0 * value:.1f}"
