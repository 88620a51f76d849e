"""Region verification: CLIP's class token reads each label's whole region and keeps the label as far as it agrees.

Per-token readings confuse labels that differ in what one patch cannot show (in the synthetic world most wrong thing
pixels of the CLS readout go to an absent thing of the same colour: its pattern misread from one patch,
docs/world.md). CLIP itself reads a pattern from a whole region well. So a method's maps P_k are each pooled into
one embedding by CLIP's own class-token path with P_k as its soft attention mask (`masked_attention_pooling`, as
SynSeg's FSS pools in training; P_k = 1 everywhere gives CLIP's image embedding), and P_k is scaled by the
probability, among the K labels at CLIP's logit scale, that CLIP reads that region as label k. Training-free; it
wraps any method on a plain open_clip ViT (`--method NAME+verify`). docs/training-free.md gives what it measures.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from synseg.encoding import EncodedViews
from synseg.methods.spec import DensePredictor
from synseg.models.fss import masked_attention_pooling

SUFFIX = "+verify"


class RegionVerified(nn.Module):
    """A dense predictor whose maps are another's, each scaled by CLIP's agreement with its label over its region."""

    def __init__(self, inner: DensePredictor) -> None:
        super().__init__()
        clip = getattr(inner.backbone, "clip", None)
        visual = getattr(clip, "visual", None)
        if getattr(visual, "proj", None) is None or not hasattr(visual, "transformer"):
            raise ValueError("region verification needs an open_clip ViT with a projection")
        self.inner = inner
        self.backbone = inner.backbone
        self.background_threshold = inner.background_threshold
        self.templates = inner.templates
        self.logit_scale = float(clip.logit_scale.exp())

    @torch.inference_mode()
    def agreement(self, views: EncodedViews, maps: torch.Tensor, text: torch.Tensor) -> torch.Tensor:
        """[V, K]: for each view and label k, the probability that CLIP reads the region of map k [V, K, H, W] as k."""
        count, labels = maps.shape[:2]
        patch = self.backbone.patch_size
        masks = F.avg_pool2d(maps.float(), patch).flatten(2).reshape(count * labels, -1)  # token resolution
        visual = self.backbone.clip.visual
        image_index = torch.arange(count, device=maps.device).repeat_interleave(labels)
        cls = masked_attention_pooling(visual.transformer.resblocks, views.hidden_states(), masks, image_index)
        regions = F.normalize((visual.ln_post(cls) @ visual.proj).float(), dim=-1).view(count, labels, -1)
        reading = torch.softmax(self.logit_scale * regions @ F.normalize(text.float(), dim=-1).T, dim=-1)
        return reading.diagonal(dim1=1, dim2=2)

    def logits(self, views: EncodedViews, text: torch.Tensor) -> torch.Tensor:
        maps = self.inner.activation_maps(views, text)
        return maps * self.agreement(views, maps, text)[..., None, None]

    def activate(self, logits: torch.Tensor) -> torch.Tensor:
        """The verified maps are already scores in [0, 1]."""
        return logits

    def activation_maps(self, views: EncodedViews, text: torch.Tensor) -> torch.Tensor:
        return self.logits(views, text)
