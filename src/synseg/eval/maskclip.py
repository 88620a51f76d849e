"""MaskCLIP (Zhou et al., ECCV 2022), the training-free baseline: CLIP's dense features compared with label embeddings.

In the last image block the attention is replaced by its value path, so each token keeps its own content instead of
a mixture pooled for the CLS token; the result goes through `ln_post` and the visual projection into the joint space.
As in MaskCLIP's released code (its mmseg ViT with `skip_last_attn`), the residual connection and the MLP of that
block are kept: v = x + out_proj(W_v ln_1(x)); v = v + mlp(ln_2(v)).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from synseg.errors import UserError
from synseg.models.backbone import BackboneConfig, ClipBackbone

# MaskCLIP published no background rule; softmax probabilities of the best label below this become background.
# Untuned: a starting point, overridden by --threshold.
DEFAULT_BACKGROUND_THRESHOLD = 0.5


class MaskCLIP(nn.Module):
    """Dense predictor (the Segmenter protocol) built on a frozen ClipBackbone, with no trained parameters."""

    def __init__(self, backbone: ClipBackbone, background_threshold: float = DEFAULT_BACKGROUND_THRESHOLD) -> None:
        super().__init__()
        visual = backbone.clip.visual
        blocks = getattr(getattr(visual, "transformer", None), "resblocks", None)
        plain = blocks and isinstance(blocks[-1].attn, nn.MultiheadAttention) and hasattr(visual, "_embeds")
        if not plain or getattr(visual, "attn_pool", None) is not None:
            raise UserError(f"MaskCLIP needs a plain open_clip ViT image tower; backbone '{backbone.config.name}' is not one")
        self.backbone = backbone
        self.background_threshold = background_threshold

    @torch.inference_mode()
    def dense_features(self, pixels: torch.Tensor) -> torch.Tensor:
        """[V, 3, S, S] normalised views -> L2-normalised patch features [V, embed_dim, h, w] in CLIP's joint space."""
        backbone = self.backbone
        visual = backbone.clip.visual
        size = backbone.image_size
        if pixels.shape[-2:] != (size, size):
            pixels = F.interpolate(pixels, size=(size, size), mode="bilinear", align_corners=False)
        x = visual._embeds(pixels)  # open_clip's patch + class + position embedding and ln_pre
        transformer = visual.transformer
        if not transformer.batch_first:
            x = x.transpose(0, 1)
        for block in transformer.resblocks[:-1]:
            x = block(x)
        if not transformer.batch_first:
            x = x.transpose(0, 1)
        last = transformer.resblocks[-1]
        attention = last.attn
        width = attention.embed_dim
        bias = attention.in_proj_bias[2 * width:] if attention.in_proj_bias is not None else None
        value = F.linear(last.ln_1(x), attention.in_proj_weight[2 * width:], bias)
        x = x + last.ls_1(attention.out_proj(value))
        x = x + last.ls_2(last.mlp(last.ln_2(x)))
        tokens = visual.ln_post(x[:, 1:])
        if visual.proj is not None:
            tokens = tokens @ visual.proj
        h, w = backbone.grid
        return F.normalize(tokens.float(), dim=-1).transpose(1, 2).reshape(len(pixels), -1, h, w)

    @torch.inference_mode()
    def activation_maps(self, pixels: torch.Tensor, text: torch.Tensor) -> torch.Tensor:
        """[V, K, S, S] class probabilities: softmax over the K labels of cosine similarity times CLIP's logit scale.

        The logit scale is the temperature CLIP was trained with (100 for the OpenAI weights), as MaskCLIP uses.
        Cosine maps are upsampled bilinearly from the token grid before the softmax.
        """
        cosine = torch.einsum("vchw,kc->vkhw", self.dense_features(pixels), F.normalize(text.float(), dim=-1))
        cosine = F.interpolate(cosine, size=pixels.shape[-2:], mode="bilinear", align_corners=False)
        scale = self.backbone.clip.logit_scale.exp().float()
        return torch.softmax(cosine * scale, dim=1)


def build_maskclip(config: BackboneConfig, background_threshold: float = DEFAULT_BACKGROUND_THRESHOLD) -> MaskCLIP:
    """MaskCLIP on a freshly loaded backbone (use `MaskCLIP(model.backbone)` to share an already loaded one)."""
    return MaskCLIP(ClipBackbone(config), background_threshold)
