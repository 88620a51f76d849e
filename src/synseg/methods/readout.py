"""The per-token CLS readout (`models/readout.py`) as a training-free dense method: what CLIP's own class token says
when, in every block, it may look only at itself and at one patch token.

The patch tokens are CLIP's own, from the ordinary forward pass. The readout is the mask-attention class-token
classifier of open-vocabulary mask methods (MaskCLIP of Ding et al. 2023, SAN's attention bias) with a one-token mask
per patch and no mask proposals; no training. Cost: CLIP's pass plus one class-token update per patch token and block
(projections and MLP as for one token; the attention has two keys), about a second CLIP pass.
"""
from __future__ import annotations

import torch

from synseg.encoding import EncodedViews
from synseg.methods.base import Preset, TrainingFreeCLIP, training_free
from synseg.models.readout import readout_embeddings

# CLIP's own temperature and SynSeg's 8 prompts; background below a best-label probability of 0.5 (untuned).
PRESETS = {"default": Preset(logit_scale=None, background_threshold=0.5, templates=None)}


class CLSReadout(TrainingFreeCLIP):
    title = "CLS readout"

    def __init__(self, backbone, preset: Preset = PRESETS["default"]) -> None:
        super().__init__(backbone, preset)
        if self.backbone.clip.visual.proj is None:
            raise ValueError(f"{self.title} needs an image tower with a projection")

    @torch.inference_mode()
    def dense_features(self, views: EncodedViews) -> torch.Tensor:
        embeddings = readout_embeddings(self.backbone.clip.visual, views.hidden_states())
        return embeddings.transpose(1, 2).reshape(len(embeddings), -1, *views.grid)


METHOD = training_free("readout", CLSReadout, PRESETS)
