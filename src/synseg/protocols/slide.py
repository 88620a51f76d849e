"""The sliding-window protocol of mmsegmentation-based OVSS code (TCL, SCLIP, ClearCLIP, NACLIP).

The image is resized so that its short side is S (mmseg's Resize with scale (2048, S), keep_ratio), cut into windows
of W x W with stride T (the last row and column of windows flush with the border), and each window runs at its own
size. Each method's logits (cosine similarities; SynSeg's decoder logits) are averaged where windows overlap, resized
to the image, and only then turned into probabilities, as those repositories do. Windows whose side is not a multiple
of the patch size are zero-padded (in normalised pixels) and the padding cut off again, as ClearCLIP and TCL do.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from synseg.encoding import EncodedViews, ImageEncoding
from synseg.protocols.pamr import pamr
from synseg.protocols.base import Protocol

LONG_SIDE_LIMIT = 2048  # mmseg's (2048, S) scale: the long side never exceeds it


def resized_size(height: int, width: int, short: int) -> tuple[int, int]:
    """mmcv's rescale_size for scale (2048, short), keep_ratio: both sides scaled by one factor, rounded half up."""
    factor = min(short / min(height, width), LONG_SIDE_LIMIT / max(height, width))
    return int(height * factor + 0.5), int(width * factor + 0.5)


def window_boxes(height: int, width: int, window: int, stride: int) -> list[tuple[int, int, int, int]]:
    """(top, bottom, left, right) of each window, row by row; windows never leave the image (mmseg's slide_inference)."""
    rows = max(height - window + stride - 1, 0) // stride + 1
    cols = max(width - window + stride - 1, 0) // stride + 1
    boxes = []
    for row in range(rows):
        for col in range(cols):
            bottom, right = min(row * stride + window, height), min(col * stride + window, width)
            boxes.append((max(bottom - window, 0), bottom, max(right - window, 0), right))
    return boxes


class Slide(Protocol):
    def __init__(self, short: int, window: int, stride: int, pamr: bool = False, name: str = "slide") -> None:
        if min(short, window, stride) < 1:
            raise ValueError(f"short side, window and stride must be positive, got {short}, {window}, {stride}")
        self.short, self.window, self.stride, self.pamr, self.name = short, window, stride, pamr, name

    def describe(self) -> str:
        return f"{super().describe()} ({self.short}/{self.window}/{self.stride})"

    def view_count(self, height: int, width: int) -> int:
        return len(window_boxes(*resized_size(height, width, self.short), self.window, self.stride))

    def cut(self, image: torch.Tensor, backbone) -> EncodedViews:
        """Normalised windows [N, 3, w, w] (padded to the patch size); layout: their boxes and the resized image's size."""
        size = resized_size(*image.shape[-2:], self.short)
        image = image[None].to(backbone.device)
        if size != tuple(image.shape[-2:]):  # cv2's bilinear resize, as mmcv's: no antialiasing
            image = F.interpolate(image, size=size, mode="bilinear", align_corners=False)
        pixels = backbone.normalize(image)[0]
        boxes = window_boxes(*size, self.window, self.stride)
        crops = torch.stack([pixels[:, t:b, l:r] for t, b, l, r in boxes])
        patch = backbone.patch_size
        pad_h, pad_w = -crops.shape[-2] % patch, -crops.shape[-1] % patch
        crops = F.pad(crops, (pad_w // 2, pad_w - pad_w // 2, pad_h // 2, pad_h - pad_h // 2))
        return EncodedViews(crops, backbone, (boxes, size))

    @torch.inference_mode()
    def maps(self, predictor, encoding: ImageEncoding, text: torch.Tensor) -> torch.Tensor:
        windows = self.views(encoding, predictor.backbone)
        boxes, size = windows.layout
        logits = predictor.logits(windows, text).float()
        if self.pamr:
            logits = pamr(windows.pixels, logits)
        averaged = average_windows(logits, boxes, size)[None]
        full = F.interpolate(averaged, size=encoding.size, mode="bilinear", align_corners=False)
        return predictor.activate(full)[0]


def average_windows(windows: torch.Tensor, boxes: list[tuple[int, int, int, int]], size: tuple[int, int]) -> torch.Tensor:
    """[N, K, h, w] window maps (centred in any padding) -> [K, H, W]: each placed at its box, overlaps averaged."""
    top, bottom, left, right = boxes[0]
    pad_top, pad_left = (windows.shape[-2] - (bottom - top)) // 2, (windows.shape[-1] - (right - left)) // 2
    total = windows.new_zeros(windows.shape[1], *size)
    count = windows.new_zeros(1, *size)
    for window, (t, b, l, r) in zip(windows, boxes):
        total[:, t:b, l:r] += window[:, pad_top: pad_top + b - t, pad_left: pad_left + r - l]
        count[:, t:b, l:r] += 1
    return total.div_(count)
