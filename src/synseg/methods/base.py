"""What the training-free dense-CLIP methods share: CLIP up to its last image block, then a method's own last block,
`ln_post` and the projection into the joint space, compared with label embeddings by cosine similarity.

A method changes `last_block`; one that needs more than that block's input (earlier blocks' tokens or attention, the
labels) replaces `dense_features` or `logits` instead, from `hidden_states`. The windows of the slide protocol can be
larger than CLIP's input size; the position embeddings are then resized bicubically to the window's token grid, as the
reference implementations do (DINO's convention: `scale_factor` of (grid + 0.1) / native grid, so that rounding never
loses a row).
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

    def hidden_states(self, pixels: torch.Tensor) -> list[torch.Tensor]:
        """Tokens entering each block, batch first: [0] after ln_pre, [i] after i blocks, [-1] entering the last one.
        The backbone keeps the last result, so that methods asked about the same views one after another run CLIP's
        shared part once."""
        cached = self.backbone.__dict__.get("_hidden_states")
        if cached is not None and cached[0] is pixels:
            return cached[1]
        x = self.embed(pixels)
        transformer = self.backbone.clip.visual.transformer
        states = [x]
        for block in transformer.resblocks[:-1]:
            x = block(x) if transformer.batch_first else block(x.transpose(0, 1)).transpose(0, 1)
            states.append(x)
        self.backbone.__dict__["_hidden_states"] = (pixels, states)
        return states

    def patch_features(self, x: torch.Tensor, grid: tuple[int, int]) -> torch.Tensor:
        """[V, tokens, width] last-block output (CLS first unless there are only h*w tokens) -> L2-normalised patch
        features [V, embed_dim, h, w] in the joint space."""
        visual = self.backbone.clip.visual
        tokens = visual.ln_post(x[:, x.shape[1] - grid[0] * grid[1]:])
        if visual.proj is not None:
            tokens = tokens @ visual.proj
        return F.normalize(tokens.float(), dim=-1).transpose(1, 2).reshape(len(x), -1, *grid)

    def grid(self, pixels: torch.Tensor) -> tuple[int, int]:
        patch = self.backbone.patch_size
        return pixels.shape[-2] // patch, pixels.shape[-1] // patch

    @torch.inference_mode()
    def dense_features(self, pixels: torch.Tensor) -> torch.Tensor:
        """[V, 3, H, W] normalised views -> L2-normalised patch features [V, embed_dim, H/p, W/p] in the joint space."""
        grid = self.grid(pixels)
        block = self.backbone.clip.visual.transformer.resblocks[-1]
        return self.patch_features(self.last_block(block, self.hidden_states(pixels)[-1], grid), grid)

    @torch.inference_mode()
    def logits(self, pixels: torch.Tensor, text: torch.Tensor) -> torch.Tensor:
        """[V, K, H, W] cosine similarity of patch features and labels, upsampled bilinearly from the token grid."""
        return upsampled_cosine(self.dense_features(pixels), text, pixels.shape[-2:])

    def activate(self, logits: torch.Tensor) -> torch.Tensor:
        """Class probabilities: softmax over the labels (dim 1) of the cosine times the method's logit scale."""
        return torch.softmax(logits * self.logit_scale, dim=1)

    @torch.inference_mode()
    def activation_maps(self, pixels: torch.Tensor, text: torch.Tensor) -> torch.Tensor:
        """[V, K, H, W] class probabilities for V normalised views and K label embeddings."""
        return self.activate(self.logits(pixels, text))


def upsampled_cosine(features: torch.Tensor, text: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """[V, C, h, w] normalised features and [K, C] label embeddings -> [V, K, H, W] cosine, bilinear to `size`."""
    cosine = torch.einsum("vchw,kc->vkhw", features, F.normalize(text.float(), dim=-1))
    return F.interpolate(cosine, size=tuple(size), mode="bilinear", align_corners=False)


def released_index(index: int, depth: int) -> int:
    """A block index that a method's released code fixes for ViT-B/16's 12 blocks, on a CLIP of `depth` blocks.

    From 12 blocks on it is kept as it is, as the released code keeps it on ViT-L/14's 24; on a shallower CLIP (where
    that code would fail) it keeps its place among the L-1 blocks before the last: index * (depth - 1) // 11."""
    return index if depth >= 12 else index * (depth - 1) // 11


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
