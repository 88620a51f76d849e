"""What the training-free dense-CLIP methods share: CLIP up to its last image block, then a method's own last block,
`ln_post` and the projection into the joint space, compared with label embeddings by cosine similarity.

A method changes only `last_block`. The windows of the slide protocol can be larger than CLIP's input size; the
position embeddings are then resized bicubically to the window's token grid, as the reference implementations do
(DINO's convention: `scale_factor` of (grid + 0.1) / native grid, so that rounding never loses a row).
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from open_clip.zero_shot_metadata import OPENAI_IMAGENET_TEMPLATES
from torch import nn

from synseg.errors import UserError
from synseg.models.backbone import ClipBackbone

# The 80 prompts of CLIP's ImageNet zero-shot evaluation, which SCLIP, ClearCLIP and NACLIP average over.
IMAGENET_TEMPLATES = tuple(template("{}") for template in OPENAI_IMAGENET_TEMPLATES)


@dataclass(frozen=True)
class Preset:
    """A method's own defaults. logit_scale None: CLIP's trained temperature (100 for the OpenAI weights);
    templates None: the Segmenter's default prompts."""

    logit_scale: float | None
    background_threshold: float
    templates: tuple[str, ...] | None = IMAGENET_TEMPLATES


class TrainingFreeCLIP(nn.Module):
    """Dense predictor (the Segmenter protocol) on a frozen ClipBackbone with a method's last block; no trained weights."""

    title = "training-free CLIP"

    def __init__(self, backbone: ClipBackbone, preset: Preset) -> None:
        super().__init__()
        visual = backbone.clip.visual
        blocks = getattr(getattr(visual, "transformer", None), "resblocks", None)
        plain = blocks and isinstance(blocks[-1].attn, nn.MultiheadAttention) and hasattr(visual, "_embeds")
        if not plain or getattr(visual, "attn_pool", None) is not None:
            raise UserError(f"{self.title} needs a plain open_clip ViT image tower; backbone '{backbone.config.name}' "
                            "is not one")
        self.backbone = backbone
        self.preset = preset
        self.background_threshold = preset.background_threshold
        self.templates = preset.templates

    def last_block(self, block: nn.Module, x: torch.Tensor, grid: tuple[int, int]) -> torch.Tensor:
        """[B, 1 + h*w, width] tokens entering the last block -> the tokens `ln_post` receives."""
        raise NotImplementedError

    @property
    def logit_scale(self) -> float:
        scale = self.preset.logit_scale
        return float(self.backbone.clip.logit_scale.exp()) if scale is None else scale

    def embed(self, pixels: torch.Tensor) -> torch.Tensor:
        """Patch, class and position embeddings and ln_pre, at any size that is a multiple of the patch size."""
        visual, patch = self.backbone.clip.visual, self.backbone.patch_size
        height, width = pixels.shape[-2:]
        if height % patch or width % patch:
            raise ValueError(f"input {width}x{height} is not a multiple of the patch size {patch}")
        grid = (height // patch, width // patch)
        if grid == self.backbone.grid:
            return visual._embeds(pixels)
        x = visual.conv1(pixels).flatten(2).transpose(1, 2)
        cls = visual.class_embedding.to(x.dtype).expand(x.shape[0], 1, -1)
        x = torch.cat([cls, x], dim=1) + resized_positions(visual.positional_embedding, grid).to(x.dtype)
        return visual.ln_pre(visual.patch_dropout(x))

    def penultimate(self, pixels: torch.Tensor) -> torch.Tensor:
        """Tokens after all blocks but the last, batch first; the backbone keeps the last result, so that methods
        asked about the same views one after another run CLIP's shared part once."""
        cached = self.backbone.__dict__.get("_penultimate")
        if cached is not None and cached[0] is pixels:
            return cached[1]
        x = self.embed(pixels)
        transformer = self.backbone.clip.visual.transformer
        if not transformer.batch_first:
            x = x.transpose(0, 1)
        for block in transformer.resblocks[:-1]:
            x = block(x)
        if not transformer.batch_first:
            x = x.transpose(0, 1)
        self.backbone.__dict__["_penultimate"] = (pixels, x)
        return x

    @torch.inference_mode()
    def dense_features(self, pixels: torch.Tensor) -> torch.Tensor:
        """[V, 3, H, W] normalised views -> L2-normalised patch features [V, embed_dim, H/p, W/p] in the joint space."""
        visual, patch = self.backbone.clip.visual, self.backbone.patch_size
        grid = (pixels.shape[-2] // patch, pixels.shape[-1] // patch)
        x = self.last_block(visual.transformer.resblocks[-1], self.penultimate(pixels), grid)
        tokens = visual.ln_post(x[:, 1:])
        if visual.proj is not None:
            tokens = tokens @ visual.proj
        return F.normalize(tokens.float(), dim=-1).transpose(1, 2).reshape(len(pixels), -1, *grid)

    @torch.inference_mode()
    def logits(self, pixels: torch.Tensor, text: torch.Tensor) -> torch.Tensor:
        """[V, K, H, W] cosine similarity of patch features and labels, upsampled bilinearly from the token grid."""
        cosine = torch.einsum("vchw,kc->vkhw", self.dense_features(pixels), F.normalize(text.float(), dim=-1))
        return F.interpolate(cosine, size=pixels.shape[-2:], mode="bilinear", align_corners=False)

    def activate(self, logits: torch.Tensor) -> torch.Tensor:
        """Class probabilities: softmax over the labels (dim 1) of the cosine times the method's logit scale."""
        return torch.softmax(logits * self.logit_scale, dim=1)

    @torch.inference_mode()
    def activation_maps(self, pixels: torch.Tensor, text: torch.Tensor) -> torch.Tensor:
        """[V, K, H, W] class probabilities for V normalised views and K label embeddings."""
        return self.activate(self.logits(pixels, text))


def resized_positions(positions: torch.Tensor, grid: tuple[int, int]) -> torch.Tensor:
    """[1 + n*n, width] class + square-grid position embeddings -> [1 + h*w, width] for an h x w token grid."""
    side = math.isqrt(positions.shape[0] - 1)
    patches = positions[1:].reshape(1, side, side, -1).permute(0, 3, 1, 2)
    scale = ((grid[0] + 0.1) / side, (grid[1] + 0.1) / side)
    patches = F.interpolate(patches, scale_factor=scale, mode="bicubic", align_corners=False, recompute_scale_factor=False)
    return torch.cat([positions[:1], patches.flatten(2).transpose(1, 2)[0]])


def heads(block: nn.Module, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Query, key and value of the block's attention on ln_1(x), each [B, heads, tokens, head_dim]."""
    attention = block.attn
    batch, tokens, width = x.shape
    qkv = F.linear(block.ln_1(x), attention.in_proj_weight, attention.in_proj_bias)
    q, k, v = qkv.view(batch, tokens, 3, attention.num_heads, width // attention.num_heads).permute(2, 0, 3, 1, 4)
    return q, k, v


def attend(block: nn.Module, weights: torch.Tensor, value: torch.Tensor) -> torch.Tensor:
    """The attention branch's output for [B, heads, N, N] weights: heads merged, out_proj, layer scale."""
    batch, _, tokens, _ = value.shape
    mixed = (weights @ value).transpose(1, 2).reshape(batch, tokens, -1)
    return block.ls_1(block.attn.out_proj(mixed))


def affinity(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Scaled dot products a b^T / sqrt(head_dim), [B, heads, N, N]."""
    return (a @ b.transpose(-1, -2)) * a.shape[-1] ** -0.5
