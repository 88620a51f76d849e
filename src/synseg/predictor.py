"""The high-level API: an image and any list of words in, a label map and per-word activation maps out."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from synseg.errors import UserError
from synseg.io import to_rgb
from synseg.models.backbone import ClipBackbone
from synseg.models.synseg import DEFAULT_TEMPLATES


class DensePredictor(Protocol):
    """What Segmenter needs from a method: SynSeg and the MaskCLIP baseline both provide it."""

    backbone: ClipBackbone
    background_threshold: float

    def activation_maps(self, pixels: torch.Tensor, text: torch.Tensor) -> torch.Tensor: ...


PRECISIONS = ("fp32", "bf16")  # bf16: autocast on the model's device; activation maps stay fp32


@dataclass
class Segmentation:
    label_map: np.ndarray  # [H, W] int64; with background, 0 = background and labels are 1..K
    maps: torch.Tensor  # [K, H, W] float32 in [0, 1], on the model's device
    labels: list[str]
    background: bool

    @property
    def activations(self) -> np.ndarray:
        """The maps on the host ([K, H, W] float32: 150 MiB at 150 classes and 512x512), copied only when asked for."""
        return self.maps.cpu().numpy()


def parse_labels(text: str | list[str]) -> list[str]:
    """Comma-separated or listed labels, stripped; empty and duplicate labels are user errors."""
    labels = [label.strip() for label in (text.split(",") if isinstance(text, str) else text)]
    if not labels or any(not label for label in labels):
        raise UserError("labels must be a non-empty, comma-separated list with no empty entries")
    duplicates = sorted({label for label in labels if labels.count(label) > 1})
    if duplicates:
        raise UserError(f"duplicate label(s): {', '.join(duplicates)}")
    return labels


def quadrant_boxes(height: int, width: int) -> list[tuple[int, int, int, int]]:
    """(top, bottom, left, right) of the four non-overlapping quadrants: TL, TR, BL, BR."""
    h, w = height // 2, width // 2
    return [(0, h, 0, w), (0, h, w, width), (h, height, 0, w), (h, height, w, width)]


def make_views(image: torch.Tensor, size: int, views: int) -> torch.Tensor:
    """[3, H, W] -> [V, 3, size, size]: the whole image, then (for 5 views) its four quadrants (METHOD.md 5)."""
    crops = [image] + ([image[:, t:b, l:r] for t, b, l, r in quadrant_boxes(*image.shape[-2:])] if views == 5 else [])
    return torch.cat([resize(crop[None], (size, size), "bicubic") for crop in crops]).clamp_(0, 1)


def stitch_views(maps: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """[V, K, s, s] -> [K, H, W]: quadrant maps put back in place and averaged with the whole-image map.

    The quadrants are added into the whole-image map in place: at 150 classes and 512x512 that spares two
    [K, H, W] temporaries.
    """
    whole = resize(maps[:1], size, "bilinear")[0]
    if maps.shape[0] == 1:
        return whole
    if whole.data_ptr() == maps.data_ptr():
        whole = whole.clone()  # the map already had the image's size: do not write into the caller's tensor
    for view, (t, b, l, r) in zip(maps[1:], quadrant_boxes(*size)):
        whole[:, t:b, l:r] += resize(view[None], (b - t, r - l), "bilinear")[0]
    return whole.mul_(0.5)


def resize(x: torch.Tensor, size: tuple[int, int], mode: str) -> torch.Tensor:
    """Antialiased when shrinking; when enlarging, antialiasing changes only rounding (~1e-6) but costs 1.5-3x the time."""
    if tuple(x.shape[-2:]) == tuple(size):
        return x
    shrinks = size[0] < x.shape[-2] or size[1] < x.shape[-1]
    return F.interpolate(x, size=size, mode=mode, align_corners=False, antialias=mode != "nearest" and shrinks)


def best_label(maps: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """[K, H, W] -> the highest activation per pixel and its class (the first on ties), as `maps.max(dim=0)`.

    A running maximum reads each class's map once, in order; `max(dim=0)` strides across the K maps for every pixel
    and takes 2.2x as long at 150 classes and 512x512 on CPU (docs/speed.md).
    """
    best, index = maps[0].clone(), torch.zeros(maps.shape[1:], dtype=torch.int64, device=maps.device)
    for k in range(1, len(maps)):
        index.masked_fill_(maps[k] > best, k)
        torch.maximum(best, maps[k], out=best)
    return best, index


class Segmenter:
    """Segment any image with any labels; label embeddings are cached, so a class list is embedded once."""

    def __init__(self, predictor: DensePredictor, templates: tuple[str, ...] | None = None, precision: str = "fp32") -> None:
        if precision not in PRECISIONS:
            raise UserError(f"precision must be one of {', '.join(PRECISIONS)}, got {precision}")
        self.predictor = predictor
        self.templates = tuple(templates or getattr(getattr(predictor, "config", None), "templates", DEFAULT_TEMPLATES))
        self.precision = precision

    @property
    def device(self) -> torch.device:
        return self.predictor.backbone.device

    @torch.inference_mode()
    def activations(self, image: Image.Image, labels: list[str], views: int = 5) -> torch.Tensor:
        """[K, H, W] activation maps at the image's own resolution."""
        if views not in (1, 5):
            raise UserError(f"views must be 1 or 5, got {views}")
        backbone = self.predictor.backbone
        # the 8-bit image goes to the device, where the views are cut and resized (4x fewer bytes than float)
        pixels = torch.from_numpy(np.array(to_rgb(image))).to(self.device).permute(2, 0, 1).float().div_(255)
        height, width = pixels.shape[-2:]
        if views == 5 and min(height, width) < 2:
            views = 1
        view_pixels = backbone.normalize(make_views(pixels, backbone.image_size, views))
        text = backbone.embed_labels(labels, self.templates)
        with torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=self.precision == "bf16"):
            maps = self.predictor.activation_maps(view_pixels, text)
        return stitch_views(maps.float(), (height, width)).clamp_(0, 1)

    def segment(
        self,
        image: Image.Image,
        labels: list[str],
        views: int = 5,
        threshold: float | None = None,
        background: bool = False,
    ) -> Segmentation:
        """Per pixel the best label; with `background`, pixels whose best activation is below threshold get 0."""
        labels = parse_labels(labels)
        maps = self.activations(image, labels, views)
        best, index = best_label(maps)
        if background:
            threshold = self.predictor.background_threshold if threshold is None else threshold
            index = torch.where(best < threshold, 0, index + 1)
        return Segmentation(index.cpu().numpy(), maps, labels, background)
