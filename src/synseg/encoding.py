"""Encode once, decode many: an image, the views each protocol cuts from it, and the frozen CLIP's tokens of those
views, each computed on first use and kept for as long as the caller keeps the object.

`ImageEncoding` is to synseg what `SamPredictor.set_image` is to segment-anything: encode an image once, then ask any
number of methods (on the same CLIP) and label sets about it. Nothing is cached anywhere else.
"""
from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable

import torch
from PIL import Image

from synseg.io import image_tensor, load_image

if TYPE_CHECKING:
    from synseg.models.backbone import ClipBackbone


class EncodedViews:
    """A batch of normalised views [V, 3, h, w] of one image for one backbone, and that backbone's tokens of them.

    `layout` is what the protocol that cut the views needs to put their maps back (boxes, sizes). `hidden_states` and
    `layer_tokens` run CLIP at most once each per views object, whichever methods ask."""

    def __init__(self, pixels: torch.Tensor, backbone: ClipBackbone, layout: Any = None) -> None:
        self.pixels = pixels
        self.backbone = backbone
        self.layout = layout
        self._tokens: dict[Any, list[torch.Tensor]] = {}

    @property
    def grid(self) -> tuple[int, int]:
        """The views' token grid (height, width)."""
        patch = self.backbone.patch_size
        return self.pixels.shape[-2] // patch, self.pixels.shape[-1] // patch

    def hidden_states(self) -> list[torch.Tensor]:
        """`ClipBackbone.hidden_states` of the views: the tokens entering each image block, [V, 1 + hw, width]."""
        if "hidden" not in self._tokens:
            self._tokens["hidden"] = self.backbone.hidden_states(self.pixels)
        return self._tokens["hidden"]

    def layer_tokens(self, layers: tuple[int, ...]) -> list[torch.Tensor]:
        """`ClipBackbone.encode_image` of the views: the tokens after each of `layers` (-1: the embeddings)."""
        key = ("layers", tuple(layers))
        if key not in self._tokens:
            self._tokens[key] = self.backbone.encode_image(self.pixels, tuple(layers))
        return self._tokens[key]


class ImageEncoding:
    """One image [3, H, W] in [0, 1] on a device, and per (protocol, backbone) the views cut from it (`views`)."""

    def __init__(self, image: Image.Image | torch.Tensor | str | Path, device: torch.device | str = "cpu") -> None:
        if isinstance(image, (str, Path)):
            image = load_image(image)
        self.image = image_tensor(image, torch.device(device)) if isinstance(image, Image.Image) else image.to(device)
        if self.image.ndim != 3 or self.image.shape[0] != 3:
            raise ValueError(f"an image is [3, H, W], got shape {list(self.image.shape)}")
        self._views: dict[tuple[str, object], EncodedViews] = {}

    @property
    def size(self) -> tuple[int, int]:
        """(height, width)."""
        return tuple(self.image.shape[-2:])

    def views(self, key: str, backbone: ClipBackbone, make: Callable[[], EncodedViews]) -> EncodedViews:
        """The views a protocol (named by `key`) cuts for `backbone`, made by `make` the first time they are asked for."""
        index = (key, backbone)
        if index not in self._views:
            self._views[index] = make()
        return self._views[index]
