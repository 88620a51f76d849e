"""The high-level API: an image and any list of words in, a label map and per-word activation maps out."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

import numpy as np
import torch
from PIL import Image

from synseg.errors import UserError
from synseg.protocols import Protocol as EvalProtocol
from synseg.protocols.views import Views
from synseg.io import image_tensor
from synseg.models.backbone import ClipBackbone
from synseg.models.synseg import DEFAULT_TEMPLATES


class DensePredictor(Protocol):
    """What Segmenter needs from a method: SynSeg and the training-free methods (synseg.methods) provide it.

    `logits` are the scores a protocol may average across windows, `activate` turns them into probabilities, and
    `activation_maps` is the two in one."""

    backbone: ClipBackbone
    background_threshold: float

    def logits(self, pixels: torch.Tensor, text: torch.Tensor) -> torch.Tensor: ...

    def activate(self, logits: torch.Tensor) -> torch.Tensor: ...

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
    and takes 2.2x as long at 150 classes and 512x512 on CPU (docs/speed.md).
    """
    best, index = maps[0].clone(), torch.zeros(maps.shape[1:], dtype=torch.int64, device=maps.device)
    for k in range(1, len(maps)):
        index.masked_fill_(maps[k] > best, k)
        torch.maximum(best, maps[k], out=best)
    return best, index


class Segmenter:
    """Segment any image with any labels under any protocol; label embeddings are cached, so a class list is embedded
    once. The default protocol is the paper's 5 views (`views=1`: the whole image alone)."""

    def __init__(self, predictor: DensePredictor, templates: tuple[str, ...] | None = None, precision: str = "fp32") -> None:
        if precision not in PRECISIONS:
            raise UserError(f"precision must be one of {', '.join(PRECISIONS)}, got {precision}")
        self.predictor = predictor
        self.templates = tuple(templates or getattr(predictor, "templates", None)
                               or getattr(getattr(predictor, "config", None), "templates", DEFAULT_TEMPLATES))
        self.precision = precision

    @property
    def device(self) -> torch.device:
        return self.predictor.backbone.device

    @torch.inference_mode()
    def activations(self, image: Image.Image | torch.Tensor, labels: list[Label], views: int = 5,
                    protocol: EvalProtocol | None = None) -> torch.Tensor:
        """[K, H, W] activation maps at the image's own resolution, on the model's device; a label with several names
        gets their maximum. The 8-bit image goes to the device, where the protocol cuts and resizes its views."""
        if protocol is None:
            if views not in (1, 5):
                raise UserError(f"views must be 1 or 5, got {views}")
            protocol = Views(views)
        pixels = image if isinstance(image, torch.Tensor) else image_tensor(image, self.device)
        names = [label_names(label) for label in labels]
        flat = [name for group in names for name in group]
        text = self.predictor.backbone.embed_labels(flat, self.templates)
        with torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=self.precision == "bf16"):
            maps = protocol.maps(self.predictor, pixels, text)
        maps = maps.float()
        if len(flat) == len(labels):
            return maps.clamp_(0, 1)
        ends = np.cumsum([len(group) for group in names]).tolist()
        return torch.stack([maps[end - len(group): end].amax(dim=0) for end, group in zip(ends, names)]).clamp_(0, 1)

    def segment(
        self,
        image: Image.Image | torch.Tensor,
        labels: list[Label],
        views: int = 5,
        threshold: float | None = None,
        background: bool = False,
        protocol: EvalProtocol | None = None,
        background_names: tuple[str, ...] = (),
    ) -> Segmentation:
        """Per pixel the best label; with `background`, pixels whose best activation is below threshold get 0, and so
        do those where `background_names` (a class of its own, as in SCLIP's class files) score best."""
        labels = parse_labels(labels)
        if background_names and not background:
            raise UserError("background names need background=True")
        asked = [tuple(background_names)] + labels if background_names else labels
        maps = self.activations(image, asked, views, protocol)
        best, index = best_label(maps)
        if background:
            threshold = self.predictor.background_threshold if threshold is None else threshold
            index = torch.where(best < threshold, 0, index if background_names else index + 1)
        if background_names:
            maps = maps[1:]
        names = [label_names(label)[0] for label in labels]
        return Segmentation(index.cpu().numpy(), maps, names, background)
