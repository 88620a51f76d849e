"""The high-level API: an image and any list of words in, a label map and per-word activation maps out."""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from synseg.encoding import ImageEncoding
from synseg.errors import UserError
from synseg.methods.spec import DensePredictor
from synseg.protocols import DEFAULT_PROTOCOL, Protocol, build_protocol


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


Label = str | tuple[str, ...]  # a class's name, or its several names (its score is the best of theirs)


def parse_labels(text: str | list[Label]) -> list[Label]:
    """Comma-separated or listed labels, stripped; empty and duplicate labels are user errors."""
    labels = [_strip(label) for label in (text.split(",") if isinstance(text, str) else text)]
    if not labels or any(not label or not all(label) for label in labels):
        raise UserError("labels must be a non-empty, comma-separated list with no empty entries")
    duplicates = sorted({label for label in labels if labels.count(label) > 1})
    if duplicates:
        raise UserError(f"duplicate label(s): {', '.join(duplicates)}")
    return labels


def _strip(label: Label) -> Label:
    return label.strip() if isinstance(label, str) else tuple(name.strip() for name in label)


def label_names(label: Label) -> tuple[str, ...]:
    return (label,) if isinstance(label, str) else tuple(label)


def best_label(maps: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """[K, H, W] -> the highest activation per pixel and its class (the first on ties), as `maps.max(dim=0)`.

    A running maximum reads each class's map once, in order; `max(dim=0)` strides across the K maps for every pixel
    and is slower on CPU (docs/speed.md).
    """
    best, index = maps[0].clone(), torch.zeros(maps.shape[1:], dtype=torch.int64, device=maps.device)
    for k in range(1, len(maps)):
        index.masked_fill_(maps[k] > best, k)
        torch.maximum(best, maps[k], out=best)
    return best, index


class Segmenter:
    """Segment images with any labels: one method (a DensePredictor, e.g. from `synseg.build_predictor`) under one
    protocol (default `quadrants`, the paper's 5 views; a name or a Protocol). Label embeddings are cached, so a class
    list is embedded once. Give several Segmenters one `ImageEncoding` to encode an image once for all of them."""

    def __init__(self, predictor: DensePredictor, protocol: str | Protocol = DEFAULT_PROTOCOL,
                 templates: tuple[str, ...] | None = None, precision: str = "fp32") -> None:
        if precision not in PRECISIONS:
            raise UserError(f"precision must be one of {', '.join(PRECISIONS)}, got {precision}")
        self.predictor = predictor
        self.protocol = build_protocol(protocol) if isinstance(protocol, str) else protocol
        self.templates = tuple(templates or predictor.templates)
        self.precision = precision

    @property
    def device(self) -> torch.device:
        return self.predictor.backbone.device

    def encode(self, image: Image.Image | torch.Tensor | str | Path | ImageEncoding) -> ImageEncoding:
        """The image ([3, H, W] in [0, 1], a PIL image or a path) as an ImageEncoding on this method's device."""
        return image if isinstance(image, ImageEncoding) else ImageEncoding(image, self.device)

    @torch.inference_mode()
    def activations(self, image: Image.Image | torch.Tensor | str | Path | ImageEncoding,
                    labels: list[Label]) -> torch.Tensor:
        """[K, H, W] activation maps at the image's own resolution, on the model's device; a label with several names
        gets their maximum."""
        encoding = self.encode(image)
        names = [label_names(label) for label in labels]
        flat = [name for group in names for name in group]
        text = self.predictor.backbone.embed_labels(flat, self.templates)
        with torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=self.precision == "bf16"):
            maps = self.protocol.maps(self.predictor, encoding, text)
        maps = maps.float()
        if len(flat) == len(labels):
            return maps.clamp_(0, 1)
        ends = np.cumsum([len(group) for group in names]).tolist()
        return torch.stack([maps[end - len(group): end].amax(dim=0) for end, group in zip(ends, names)]).clamp_(0, 1)

    def segment(
        self,
        image: Image.Image | torch.Tensor | str | Path | ImageEncoding,
        labels: list[Label],
        threshold: float | None = None,
        background: bool = False,
        background_names: tuple[str, ...] = (),
    ) -> Segmentation:
        """Per pixel the best label; with `background`, pixels whose best activation is below threshold (default: the
        method's own) get 0, and so do those where `background_names` (a class of its own, as in SCLIP's class files)
        score best. Raises UserError for empty or duplicate labels."""
        labels = parse_labels(labels)
        if background_names and not background:
            raise UserError("background names need background=True")
        asked = [tuple(background_names)] + labels if background_names else labels
        maps = self.activations(image, asked)
        best, index = best_label(maps)
        if background:
            threshold = self.predictor.background_threshold if threshold is None else threshold
            index = torch.where(best < threshold, 0, index if background_names else index + 1)
        if background_names:
            maps = maps[1:]
        names = [label_names(label)[0] for label in labels]
        return Segmentation(index.cpu().numpy(), maps, names, background)
