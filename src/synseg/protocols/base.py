"""What an evaluation protocol is: how one image becomes views for a method, and how the views' maps are combined."""
from __future__ import annotations

from abc import ABC, abstractmethod

import torch
import torch.nn.functional as F

from synseg.encoding import EncodedViews, ImageEncoding


class Protocol(ABC):
    """Image -> per-label probabilities [K, H, W] at the image's resolution, for any dense predictor (SynSeg or a
    training-free method). The views are cut once per image and backbone and kept in the `ImageEncoding`, so methods
    on one backbone asked about one encoding share them and CLIP's pass over them."""

    name: str = ""
    pamr: bool = False

    def views(self, encoding: ImageEncoding, backbone) -> EncodedViews:
        """The views of `encoding` for `backbone`, cut on first use (`cut`)."""
        return encoding.views(self.name, backbone, lambda: self.cut(encoding.image, backbone))

    @abstractmethod
    def cut(self, image: torch.Tensor, backbone) -> EncodedViews:
        """[3, H, W] image in [0, 1] -> its normalised views on the backbone's device, with their layout."""

    @abstractmethod
    def maps(self, predictor, encoding: ImageEncoding, text: torch.Tensor) -> torch.Tensor:
        """[K, H, W] probabilities of the K embedded labels at the image's own resolution."""

    @abstractmethod
    def view_count(self, height: int, width: int) -> int:
        """How many views (or windows) the method runs on for an image of this size."""

    def describe(self) -> str:
        return self.name + (" + PAMR" if self.pamr else "")


def resize(x: torch.Tensor, size: tuple[int, int], mode: str) -> torch.Tensor:
    """[..., h, w] -> [..., size]: antialiased when shrinking; not when enlarging, where antialiasing changes only
    rounding but costs time (docs/speed.md)."""
    if tuple(x.shape[-2:]) == tuple(size):
        return x
    shrinks = size[0] < x.shape[-2] or size[1] < x.shape[-1]
    return F.interpolate(x, size=size, mode=mode, align_corners=False, antialias=mode != "nearest" and shrinks)
