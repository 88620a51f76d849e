"""PAMR, pixel-adaptive mask refinement (Araslanov & Roth, CVPR 2020), as TCL applies it to each window's masks.

Each iteration replaces a mask value by a weighted mean of its 8 neighbours at several dilations; the weights are a
softmax over neighbours of -|I(x) - I(n)| / (0.1 std), the colour difference scaled by the local standard deviation
(per channel, of the 3x3 neighbourhoods at all dilations together, each with its centre: LocalStDev of the original
code) and averaged over channels. Edges in the image therefore stop the mask from spreading across them. No maintained package ships PAMR; every OVSS repository carries a copy.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

TCL_ITERATIONS = 10
TCL_DILATIONS = (1, 2, 4, 8, 12, 24)
OFFSETS = [(dy, dx) for dy in (-1, 0, 1) for dx in (-1, 0, 1) if (dy, dx) != (0, 0)]


def _shifted(x: torch.Tensor, dilation: int) -> list[torch.Tensor]:
    """[B, C, H, W] -> 8 views [B, C, H, W]: each pixel's neighbours at `dilation`, borders replicated."""
    height, width = x.shape[-2:]
    padded = F.pad(x, [dilation] * 4, mode="replicate")
    return [padded[..., dilation + dy * dilation: dilation + dy * dilation + height,
                   dilation + dx * dilation: dilation + dx * dilation + width] for dy, dx in OFFSETS]


def affinities(image: torch.Tensor, dilations: tuple[int, ...] = TCL_DILATIONS) -> torch.Tensor:
    """[B, 3, H, W] image -> [B, 8 * len(dilations), H, W] neighbour weights summing to 1 at each pixel."""
    neighbours = torch.stack([view for dilation in dilations for view in _shifted(image, dilation)], dim=2)
    centres = image.unsqueeze(2).expand(-1, -1, len(dilations), -1, -1)  # the centre once per dilation, as LocalStDev
    spread = torch.cat([centres, neighbours], dim=2).std(dim=2, keepdim=True)
    return torch.softmax((-(neighbours - image.unsqueeze(2)).abs() / (1e-8 + 0.1 * spread)).mean(dim=1), dim=1)


def pamr(image: torch.Tensor, masks: torch.Tensor, iterations: int = TCL_ITERATIONS,
         dilations: tuple[int, ...] = TCL_DILATIONS) -> torch.Tensor:
    """Refine [B, K, h, w] masks (probabilities or logits) along the edges of a [B, 3, H, W] image, at the masks' size."""
    image = image.float()
    if image.shape[-2:] != masks.shape[-2:]:
        image = F.interpolate(image, size=masks.shape[-2:], mode="bilinear", align_corners=True)
    weights = affinities(image, dilations).unsqueeze(2)  # [B, P, 1, h, w]
    for _ in range(iterations):  # a running sum of shifted views: never the [B, K, P, h, w] stack
        refined = torch.zeros_like(masks)
        for i, dilation in enumerate(dilations):
            for j, view in enumerate(_shifted(masks, dilation)):
                refined.addcmul_(view, weights[:, 8 * i + j])
        masks = refined
    return masks
