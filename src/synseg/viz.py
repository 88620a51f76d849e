"""Figures people look at (matplotlib): the paper's Fig. 3 (an activation map and its masks at several thresholds),
overlays with legends, and comparison grids (image | ground truth | SynSeg | baseline).

Figures are built with matplotlib's object API (no pyplot, no global backend) at a fixed size in inches and DPI, so a
figure's pixel size is known before it is drawn.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

from synseg.errors import UserError
from synseg.io import atomic_path, load_image
from synseg.render import palette

DPI = 100
PANEL_INCHES = 2.6
LEGEND_INCHES = 1.9
LEGEND_ENTRIES = 10
IGNORE_INDEX = 255
IGNORE_COLOUR = (255, 255, 255)
# Well-separated colours (Kelly's, without white and the greys) for the classes of one grid row: neighbouring VOC
# palette indices can be near-identical, which a legend cannot tell apart.
DISTINCT_COLOURS = np.array([
    (230, 25, 75), (60, 180, 75), (255, 225, 25), (0, 130, 200), (245, 130, 48), (145, 30, 180), (70, 240, 240),
    (240, 50, 230), (128, 0, 0), (0, 128, 128), (170, 110, 40), (0, 0, 128),
], dtype=np.uint8)


def require_matplotlib() -> None:
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        raise UserError("figures need matplotlib: pip install 'synseg[viz]'") from None


def _figure(width: float, height: float):
    require_matplotlib()
    from matplotlib.figure import Figure

    return Figure(figsize=(width, height), dpi=DPI, layout="constrained")


def class_colours(background: bool) -> np.ndarray:
    """[256, 3] uint8: the VOC palette; with a background class it is black, without one no class is black (the
    palette is shifted by one); ignored pixels (255) are white."""
    colours = palette() if background else np.roll(palette(), -1, axis=0)
    colours[IGNORE_INDEX] = IGNORE_COLOUR
    return colours


OTHER_COLOUR = (128, 128, 128)


def distinct_colours(indices: list[int], background: bool) -> np.ndarray:
    """[256, 3] uint8: the given classes (at most len(DISTINCT_COLOURS)) in well-separated colours, background black,
    ignored pixels white, every other class grey ("other")."""
    colours = np.tile(np.asarray(OTHER_COLOUR, dtype=np.uint8), (256, 1))
    colours[IGNORE_INDEX] = IGNORE_COLOUR
    if background:
        colours[0] = 0
    for colour, index in zip(DISTINCT_COLOURS, [i for i in indices if not (background and i == 0)]):
        colours[index] = colour
    return colours


def row_classes(truth: np.ndarray, predictions: list[np.ndarray], min_share: float = 0.02) -> list[int]:
    """The classes a grid row names in its legend: every class of the ground truth, then the predicted classes that
    cover at least `min_share` of some prediction, largest first, up to len(DISTINCT_COLOURS)."""
    present = shown_classes([truth], limit=len(DISTINCT_COLOURS), min_share=0.0)
    predicted = shown_classes(predictions, limit=len(DISTINCT_COLOURS), min_share=min_share)
    return sorted((present + [c for c in predicted if c not in present])[:len(DISTINCT_COLOURS)])


def blend(image: Image.Image, label_map: np.ndarray, background: bool, alpha: float = 0.55,
          colours: np.ndarray | None = None) -> np.ndarray:
    """The photo with class colours laid over it; background keeps the photo, ignored pixels are white."""
    photo = np.asarray(image.convert("RGB"), dtype=np.float32)
    colours = class_colours(background) if colours is None else colours
    coloured = colours[np.clip(label_map, 0, IGNORE_INDEX)].astype(np.float32)
    mixed = (1 - alpha) * photo + alpha * coloured
    mixed[label_map == IGNORE_INDEX] = IGNORE_COLOUR
    if background:
        mixed[label_map == 0] = photo[label_map == 0]
    return mixed.clip(0, 255).astype(np.uint8)


def shown_classes(label_maps: list[np.ndarray], limit: int = LEGEND_ENTRIES, min_share: float = 0.005) -> list[int]:
    """The classes worth a legend entry: those covering at least `min_share` of some map, the `limit` largest."""
    share: dict[int, float] = {}
    for label_map in label_maps:
        values, counts = np.unique(label_map, return_counts=True)
        for value, count in zip(values.tolist(), (counts / label_map.size).tolist()):
            if value != IGNORE_INDEX and count >= min_share:
                share[value] = max(share.get(value, 0.0), count)
    return sorted(sorted(share, key=share.get, reverse=True)[:limit])


def legend_handles(names: list[str], indices: list[int], background: bool, colours: np.ndarray | None = None):
    """Legend patches for the given class indices."""
    from matplotlib.patches import Patch

    colours = class_colours(background) if colours is None else colours
    return [Patch(facecolor=colours[i] / 255, edgecolor="black", label=names[i]) for i in indices]


def _show(ax, picture: np.ndarray, title: str) -> None:
    ax.imshow(picture, interpolation="nearest")
    ax.set_title(title, fontsize=10)
    ax.set_axis_off()


def threshold_label_maps(activations: np.ndarray, thresholds: tuple[float, ...]) -> list[np.ndarray]:
    """[K, H, W] activations -> one label map per threshold: 0 where the best activation is below it, else 1 + argmax
    (what `Segmenter.segment(..., background=True)` gives, without running the model once per threshold)."""
    best, index = activations.max(axis=0), activations.argmax(axis=0)
    return [np.where(best < threshold, 0, index + 1) for threshold in thresholds]


def fig3_figure(image: Image.Image, activation: np.ndarray, label: str, label_maps: list[np.ndarray],
                thresholds: tuple[float, ...], names: list[str]):
    """Image, the activation map of one label, then the segmentation at each background threshold (paper Fig. 3).

    `label_maps[i]` holds 0 for background and 1..K for `names[1:]` at `thresholds[i]`.
    """
    columns = 2 + len(thresholds)
    height = PANEL_INCHES * image.height / image.width + 0.9
    fig = _figure(PANEL_INCHES * columns, height)
    axes = fig.subplots(1, columns)
    _show(axes[0], np.asarray(image.convert("RGB")), "image")
    shown = axes[1].imshow(activation, cmap="jet", vmin=0.0, vmax=1.0, interpolation="bilinear")
    axes[1].set_title(f"activation: {label}", fontsize=10)
    axes[1].set_axis_off()
    fig.colorbar(shown, ax=axes[1], fraction=0.046, pad=0.02)
    for ax, threshold, label_map in zip(axes[2:], thresholds, label_maps):
        _show(ax, blend(image, label_map, background=True), f"threshold {threshold:g}")
    shown = sorted(set(shown_classes(label_maps)) | {0})
    fig.legend(handles=legend_handles(names, shown, background=True), loc="outside lower center",
               ncols=len(shown), fontsize=9, frameon=False)
    return fig


def overlay_figure(image: Image.Image, label_map: np.ndarray, names: list[str], background: bool, title: str = ""):
    """One photo with its segmentation laid over it and a legend of the classes present."""
    width = PANEL_INCHES * 2
    fig = _figure(width + LEGEND_INCHES, width * image.height / image.width + 0.4)
    ax = fig.subplots()
    _show(ax, blend(image, label_map, background), title)
    ax.legend(handles=legend_handles(names, shown_classes([label_map]), background), loc="center left",
              bbox_to_anchor=(1.02, 0.5), fontsize=9, frameon=False)
    return fig


@dataclass
class GridRow:
    image: Image.Image
    truth: np.ndarray  # class indices in `names` order, 255 = not scored
    predictions: list[np.ndarray]  # one label map per method, same convention
    title: str = ""


def benchmark_grid_rows(benchmark, segmenters: list, samples, threshold: float | None = None) -> list[GridRow]:
    """One row per sample of a benchmark: its image, its ground truth and each segmenter's label map (the image is
    encoded once for all of them)."""
    from synseg.encoding import ImageEncoding

    labels = benchmark.prompt_labels()
    rows = []
    for sample in samples:
        image = load_image(sample.image_path)
        encoding = ImageEncoding(image, segmenters[0].device)
        predictions = [s.segment(encoding, labels, threshold=threshold, background=benchmark.has_background).label_map
                       for s in segmenters]
        rows.append(GridRow(image, benchmark.read_label(sample.label_path), predictions, sample.stem))
    return rows


def grid_figure(rows: list[GridRow], methods: list[str], names: list[str], background: bool, alpha: float = 0.55):
    """Rows of image | ground truth | each method, each row with a legend of its ground truth's classes and the
    predicted classes that cover a visible share, in colours chosen for that row to be told apart (others grey)."""
    if not rows:
        raise UserError("no images to draw")
    columns = 2 + len(methods)
    aspect = max(row.image.height / row.image.width for row in rows)
    fig = _figure(PANEL_INCHES * columns + LEGEND_INCHES, (PANEL_INCHES * aspect + 0.35) * len(rows))
    axes = np.asarray(fig.subplots(len(rows), columns)).reshape(len(rows), columns)
    for axes_row, row in zip(axes, rows):
        _show(axes_row[0], np.asarray(row.image.convert("RGB")), row.title or "image")
        maps = [row.truth, *row.predictions]
        shown = row_classes(row.truth, row.predictions)
        colours = distinct_colours(shown, background)
        for ax, title, label_map in zip(axes_row[1:], ["ground truth", *methods], maps):
            _show(ax, blend(row.image, label_map, background, alpha, colours), title)
        handles = legend_handles(names, shown, background, colours)
        if any(not np.isin(m, [*shown, IGNORE_INDEX]).all() for m in maps):
            from matplotlib.patches import Patch

            handles.append(Patch(facecolor=np.asarray(OTHER_COLOUR) / 255, edgecolor="black", label="other"))
        axes_row[-1].legend(handles=handles, loc="center left", bbox_to_anchor=(1.02, 0.5), fontsize=8, frameon=False)
    return fig


def save_figure(fig, path: str | Path) -> Path:
    """Write a PNG atomically at the figure's own size (no tight cropping, so the size is predictable)."""
    path = Path(path)
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=DPI)
    return path
