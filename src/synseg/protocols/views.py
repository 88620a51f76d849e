"""`quadrants`, the SynSeg paper's protocol (METHOD.md 5): the whole image and its four quadrants, each at the
backbone's input size, probabilities stitched back and averaged; `whole` is its first view alone."""
from __future__ import annotations

import torch

from synseg.encoding import EncodedViews, ImageEncoding
from synseg.protocols.pamr import pamr
from synseg.protocols.base import Protocol, resize


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


class Views(Protocol):
    """5 views (`quadrants`) or 1 (`whole`) at the backbone's input size; with PAMR, each view's maps are refined first."""

    def __init__(self, views: int = 5, pamr: bool = False) -> None:
        if views not in (1, 5):
            raise ValueError(f"views must be 1 or 5, got {views}")
        self.views_per_image, self.pamr = views, pamr
        self.name = "quadrants" if views == 5 else "whole"

    def view_count(self, height: int, width: int) -> int:
        return 1 if min(height, width) < 2 else self.views_per_image

    def cut(self, image: torch.Tensor, backbone) -> EncodedViews:
        views = self.view_count(*image.shape[-2:])
        return EncodedViews(backbone.normalize(make_views(image, backbone.image_size, views).to(backbone.device)), backbone)

    @torch.inference_mode()
    def maps(self, predictor, encoding: ImageEncoding, text: torch.Tensor) -> torch.Tensor:
        views = self.views(encoding, predictor.backbone)
        maps = predictor.activation_maps(views, text).float()
        if self.pamr:
            maps = pamr(views.pixels, maps).clamp_(0, 1)
        return stitch_views(maps, encoding.size).clamp_(0, 1)
