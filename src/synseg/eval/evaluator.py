"""Score a method on a benchmark split: run a Segmenter, or read saved label maps of any method, into one confusion matrix."""
from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np
from tqdm import tqdm

from synseg.data.benchmarks import BENCHMARKS, Benchmark, Sample
from synseg.data.benchmarks.base import read_index_png
from synseg.distributed import current, sum_over_ranks
from synseg.errors import UserError
from synseg.eval.metric import ConfusionMatrix, check_indices
from synseg.io import load_image

Predict = Callable[[Sample, tuple[int, int]], np.ndarray]


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

    def to_json(self) -> dict:
        """Percentages, with null for classes that were not scored."""
        return {
            "method": self.method,
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
    """Stream the split through `predict` (sample, label height/width -> label map) and score it.

    Under torchrun each process scores every world-th image and the integer confusion matrices are summed over the
    processes, so the result equals one process's exactly; the bar shows the first process's share.
    """
    samples = split(benchmark, limit)
    ranks = current()
    matrix = ConfusionMatrix(benchmark.num_classes(), benchmark.ignore_index)
    mine = samples[ranks.rank :: ranks.world]
    # The bar is closed (its line ended) before any error message is printed below it.
    with tqdm(total=len(mine), desc=f"{benchmark.title} [{method}]", unit="img", disable=not progress or not ranks.main) as bar:
        for sample in mine:
            truth = benchmark.read_label(sample.label_path)
            prediction = predict(sample, truth.shape)
            try:
                matrix.update(prediction, truth)
            except ValueError as error:
                raise UserError(f"{benchmark.name} image {sample.stem} ({sample.label_path}): {error}") from None
            bar.update()
    matrix.matrix = sum_over_ranks(matrix.matrix)
    iou = matrix.iou()
    return EvalResult(method, benchmark.name, benchmark.title, benchmark.class_names(), len(samples),
                      tuple(float(v) for v in iou), matrix.miou(), matrix.pixel_accuracy())


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

    def __call__(self, sample: Sample, shape: tuple[int, int]) -> np.ndarray:
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


def segmenter_predict(segmenter, benchmark: Benchmark, views: int = 5, threshold: float | None = None) -> Predict:
    """Label maps from a `synseg.predictor.Segmenter` asked about the benchmark's class names."""
    labels = benchmark.prompt_labels()

    def predict(sample: Sample, shape: tuple[int, int]) -> np.ndarray:
        image = load_image(sample.image_path)
        if (image.height, image.width) != tuple(shape):
            raise UserError(
                f"image {sample.image_path} is {image.width}x{image.height} but its label {sample.label_path} "
                f"is {shape[1]}x{shape[0]}"
            )
        result = segmenter.segment(image, labels, views=views, threshold=threshold, background=benchmark.has_background)
        return result.label_map

    return predict


def markdown_table(results: list[EvalResult]) -> str:
    """The paper's Table II layout: a row per method, mIoU (%) per benchmark in the paper's column order, then the mean."""
    order = list(BENCHMARKS)
    benchmarks = sorted({r.benchmark for r in results}, key=order.index)
    titles = {r.benchmark: r.title for r in results}
    methods = list(dict.fromkeys(r.method for r in results))
    score = {(r.method, r.benchmark): r.miou for r in results}
    lines = [
        "| " + " | ".join(["Method", *(titles[b] for b in benchmarks), "Avg."]) + " |",
        "|" + "---|" * (len(benchmarks) + 2),
    ]
    for method in methods:
        values = [score.get((method, b), math.nan) for b in benchmarks]
        finite = [v for v in values if not math.isnan(v)]
        mean = sum(finite) / len(finite) if finite else math.nan
        lines.append("| " + " | ".join([method, *(_cell(v) for v in [*values, mean])]) + " |")
    return "\n".join(lines)


def _cell(value: float) -> str:
    return "n/a" if math.isnan(value) else f"{100.0 * value:.1f}"
