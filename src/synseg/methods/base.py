"""What the training-free dense-CLIP methods share: CLIP up to its last image block, then a method's own last block,
`ln_post` and the projection into the joint space, compared with label embeddings by cosine similarity.

A method changes `last_block`; one that needs more than that block's input (earlier blocks' tokens or attention, the
labels) replaces `dense_features` or `logits` instead, from the views' `hidden_states`. The windows of the slide
protocol can be larger than CLIP's input size; the position embeddings are then resized (`ClipBackbone.embed`).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from synseg.encoding import EncodedViews
from synseg.errors import UserError
from synseg.methods.spec import MethodSpec, Preset, Sources
from synseg.models.backbone import ClipBackbone
from synseg.models.synseg import DEFAULT_TEMPLATES


class TrainingFreeCLIP(nn.Module):
    """Dense predictor on a frozen ClipBackbone with a method's last block; no trained weights."""

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
        self.templates = preset.templates or DEFAULT_TEMPLATES

    def last_block(self, block: nn.Module, x: torch.Tensor, grid: tuple[int, int]) -> torch.Tensor:
        """[B, 1 + h*w, width] tokens entering the last block -> the tokens `ln_post` receives."""
        raise NotImplementedError

    @property
    def logit_scale(self) -> float:
        scale = self.preset.logit_scale
        return float(self.backbone.clip.logit_scale.exp()) if scale is None else scale

    def patch_features(self, x: torch.Tensor, grid: tuple[int, int]) -> torch.Tensor:
        """[V, tokens, width] last-block output (CLS first unless there are only h*w tokens) -> L2-normalised patch
        features [V, embed_dim, h, w] in the joint space."""
        visual = self.backbone.clip.visual
        tokens = visual.ln_post(x[:, x.shape[1] - grid[0] * grid[1]:])
        if visual.proj is not None:
            tokens = tokens @ visual.proj
        return F.normalize(tokens.float(), dim=-1).transpose(1, 2).reshape(len(x), -1, *grid)

    @torch.inference_mode()
    def dense_features(self, views: EncodedViews) -> torch.Tensor:
        """Views [V, 3, H, W] -> L2-normalised patch features [V, embed_dim, H/p, W/p] in the joint space."""
        block = self.backbone.clip.visual.transformer.resblocks[-1]
        return self.patch_features(self.last_block(block, views.hidden_states()[-1], views.grid), views.grid)

    @torch.inference_mode()
    def logits(self, views: EncodedViews, text: torch.Tensor) -> torch.Tensor:
        """[V, K, H, W] cosine similarity of patch features and labels, upsampled bilinearly from the token grid."""
        return upsampled_cosine(self.dense_features(views), text, views.pixels.shape[-2:])

    def activate(self, logits: torch.Tensor) -> torch.Tensor:
        """Class probabilities: softmax over the labels (dim 1) of the cosine times the method's logit scale."""
        return torch.softmax(logits * self.logit_scale, dim=1)

    @torch.inference_mode()
    def activation_maps(self, views: EncodedViews, text: torch.Tensor) -> torch.Tensor:
        """[V, K, H, W] class probabilities for a batch of views and K label embeddings."""
        return self.activate(self.logits(views, text))


def training_free(name: str, method: type[TrainingFreeCLIP], presets: dict[str, Preset]) -> MethodSpec:
    """The registry entry of a training-free method: built on the sources' CLIP, which every such method shares."""

    def build(sources: Sources, preset: Preset) -> TrainingFreeCLIP:
        return method(sources.clip, preset).eval()

    return MethodSpec(name, method.title, "training-free", presets, build)


def upsampled_cosine(features: torch.Tensor, text: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """[V, C, h, w] normalised features and [K, C] label embeddings -> [V, K, H, W] cosine, bilinear to `size`."""
    cosine = torch.einsum("vchw,kc->vkhw", features, F.normalize(text.float(), dim=-1))
    return F.interpolate(cosine, size=tuple(size), mode="bilinear", align_corners=False)


def released_index(index: int, depth: int) -> int:
    """A block index that a method's released code fixes for ViT-B/16's 12 blocks, on a CLIP of `depth` blocks.

    From 12 blocks on it is kept as it is, as the released code keeps it on ViT-L/14's 24; on a shallower CLIP (where
    that code would fail) it keeps its place among the L-1 blocks before the last: index * (depth - 1) // 11."""
    return index if depth >= 12 else index * (depth - 1) // 11


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
