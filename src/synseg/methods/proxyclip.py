"""ProxyCLIP (Lan et al., ECCV 2024): CLIP's last-block values mixed by the attention of a vision foundation model's
features, here DINO's through timm (a second backbone).

As in ProxyCLIP's released code (vfm_model 'dino', beta 1.2, gamma 3.0): the window, taken back from CLIP's
normalisation to ImageNet's, goes through DINO, whose last block's normalised patch tokens f (at DINO's own grid) give
weights softmax(gamma (cos(f_i, f_j) - beta mean cos)), -inf where negative, shared by every head; CLIP's last-block
values of its patch tokens are resized bilinearly to DINO's grid, mixed by those weights, and out_proj, ln_post and the
projection follow (no residual, no MLP). Patch features are therefore at DINO's grid (a 336 px window: 42 x 42 with
ViT-B/8). DINO's position embeddings are resized as DINO's own code does (`resized_positions`). DINO's weights follow
CLIP's: timm downloads DINO's published weights beside a published CLIP (an open_clip pretrained tag); beside a random
CLIP (`--pretrained none`) or one loaded from a file (such as the synthetic world's CLIP, which has no DINO) DINO's
weights are random, and a file-loaded CLIP says so on stderr.
"""
from __future__ import annotations

import sys
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from synseg.errors import UserError
from synseg.encoding import EncodedViews
from synseg.methods.base import Preset, TrainingFreeCLIP, attend, heads, training_free
from synseg.models.backbone import ClipBackbone, resized_positions


@dataclass(frozen=True, kw_only=True)
class ProxyPreset(Preset):
    """foundation: the timm name of the vision foundation model; beta and gamma shape its similarity into attention."""

    foundation: str
    beta: float = 1.2
    gamma: float = 3.0


DINO_B8, DINO_B16 = "vit_base_patch8_224.dino", "vit_base_patch16_224.dino"
# ProxyCLIP's defaults (DINO ViT-B/8, logit_scale 40) with its VOC21 prob_thd 0.2, and its COCO-Object and Context60
# configs (0.25, 0.15); `b16` is DINO ViT-B/16, which its code offers as an alternative.
PRESETS = {
    "default": ProxyPreset(logit_scale=40.0, background_threshold=0.2, foundation=DINO_B8),
    "object": ProxyPreset(logit_scale=40.0, background_threshold=0.25, foundation=DINO_B8),
    "context60": ProxyPreset(logit_scale=40.0, background_threshold=0.15, foundation=DINO_B8),
    "b16": ProxyPreset(logit_scale=40.0, background_threshold=0.2, foundation=DINO_B16),
}


def foundation_model(name: str, pretrained: bool) -> nn.Module:
    """A timm ViT without its head; a failed download is a one-line error."""
    import timm

    try:
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(0)  # random weights (no published ones to load) are the same in every run
            return timm.create_model(name, pretrained=pretrained, num_classes=0).eval()
    except Exception as error:  # timm raises whatever its hub client raises when offline
        raise UserError(f"could not load {name} weights through timm ({type(error).__name__}: {error})") from None


class ProxyCLIP(TrainingFreeCLIP):
    title = "ProxyCLIP"

    def __init__(self, backbone: ClipBackbone, preset: ProxyPreset) -> None:
        super().__init__(backbone, preset)
        weights = backbone.config.pretrained
        published = weights is not None and not Path(weights).exists()
        if weights is not None and not published:
            print(f"{self.title}: CLIP's weights are a file ({weights}); {preset.foundation} keeps random weights",
                  file=sys.stderr)
        self.foundation = foundation_model(preset.foundation, published)
        self.foundation.to(backbone.device)

    def proxy_features(self, pixels: torch.Tensor) -> torch.Tensor:
        """[V, 3, H, W] CLIP-normalised views -> DINO's normalised last-block patch tokens [V, D, H/p, W/p]."""
        dino = self.foundation
        mean, std = (torch.tensor(dino.pretrained_cfg[key], device=pixels.device).view(1, 3, 1, 1)
                     for key in ("mean", "std"))
        images = (pixels * self.backbone.std + self.backbone.mean - mean) / std
        x = dino.patch_embed.proj(images)
        grid = tuple(x.shape[-2:])
        x = x.flatten(2).transpose(1, 2)
        cls = dino.cls_token.expand(len(x), -1, -1)
        positions = dino.pos_embed[0]
        if x.shape[1] != positions.shape[0] - 1 or grid[0] != grid[1]:
            positions = resized_positions(positions, grid)
        x = dino.pos_drop(torch.cat([cls, x], dim=1) + positions)
        x = dino.norm(dino.blocks(dino.norm_pre(x)))
        return x[:, 1:].transpose(1, 2).reshape(len(x), -1, *grid)

    @torch.inference_mode()
    def dense_features(self, views: EncodedViews) -> torch.Tensor:
        grid = views.grid
        block = self.backbone.clip.visual.transformer.resblocks[-1]
        _, _, v = heads(block, views.hidden_states()[-1])
        proxy = self.proxy_features(views.pixels)
        proxy_grid = tuple(proxy.shape[-2:])
        unit = F.normalize(proxy.flatten(2), dim=1)
        similarity = unit.transpose(1, 2) @ unit
        similarity = (similarity - similarity.mean(dim=(1, 2), keepdim=True) * self.preset.beta) * self.preset.gamma
        weights = torch.softmax(similarity.masked_fill(similarity < 0, float("-inf")), dim=-1).unsqueeze(1)
        views, count, _, width = v.shape
        values = v[:, :, 1:].reshape(views * count, *grid, width).permute(0, 3, 1, 2)
        values = F.interpolate(values, size=proxy_grid, mode="bilinear", align_corners=False)
        values = values.permute(0, 2, 3, 1).reshape(views, count, -1, width)
        return self.patch_features(attend(block, weights, values), proxy_grid)


METHOD = training_free("proxyclip", ProxyCLIP, PRESETS)
