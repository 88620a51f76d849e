"""What an evaluation protocol is: how one image becomes views for a method, and how the views' maps are combined."""
from __future__ import annotations

from abc import ABC, abstractmethod

import torch
import torch.nn.functional as F


class Protocol(ABC):
    """Image [3, H, W] in [0, 1] -> per-label probabilities [K, H, W], for any dense predictor (SynSeg or a
    training-free method). The views of the last image are kept, so that several methods on one backbone asked about
    the same image tensor get the same view tensor (and share CLIP's forward where they can)."""

    name: str = ""
    pamr: bool = False

    def __init__(self) -> None:
        self._last: tuple | None = None

    def prepared(self, image: torch.Tensor, backbone, make) -> torch.Tensor:
        if self._last is None or self._last[0] is not image or self._last[1] is not backbone:
            self._last = (image, backbone, make())
        return self._last[2]

    @abstractmethod
    def maps(self, predictor, image: torch.Tensor, text: torch.Tensor) -> torch.Tensor:
        """[K, H, W] probabilities of the K embedded labels at the image's own resolution."""

    @abstractmethod
    def view_count(self, height: int, width: int) -> int:
        """How many views (or windows) the method runs on for an image of this size."""

    def describe(self) -> str:
        return self.name + (" + PAMR" if self.pamr else "")


def resize(x: torch.Tensor, size: tuple[int, int], mode: str) -> torch.Tensor:
    """Antialiased when shrinking; when enlarging, antialiasing changes only rounding (~1e-6) but costs 1.5-3x the time."""
    if tuple(x.shape[-2:]) == tuple(size):
        return x
    shrinks = size[0] < x.shape[-2] or size[1] < x.shape[-1]
    return F.interpolate(x, size=size, mode=mode, align_corners=False, antialias=mode != "nearest" and shrinks)
