"""ClearCLIP (Lan et al., ECCV 2024): q-q self-attention in the last block, without the residual and the MLP.

As in ClearCLIP's released code (`custom_attn` with model_type 'ClearCLIP', ignore_residual=True): the block's output
is out_proj(softmax(q q^T / sqrt(d)) v) alone; ln_post and the projection follow. Its base config names
model_type 'vanilla' (the ablation's plain attention); the method the paper reports is 'ClearCLIP', used here.
"""
from __future__ import annotations

import torch
from torch import nn

from synseg.methods.base import Preset, TrainingFreeCLIP, affinity, attend, heads, training_free

# ClearCLIP's defaults: logit_scale=50; prob_thd 0.5 on VOC21 and 0.4 on COCO-Object.
PRESETS = {
    "default": Preset(logit_scale=50.0, background_threshold=0.5),
    "object": Preset(logit_scale=50.0, background_threshold=0.4),
}


class ClearCLIP(TrainingFreeCLIP):
    title = "ClearCLIP"

    def last_block(self, block: nn.Module, x: torch.Tensor, grid: tuple[int, int]) -> torch.Tensor:
        q, _, v = heads(block, x)
        return attend(block, torch.softmax(affinity(q, q), dim=-1), v)


METHOD = training_free("clearclip", ClearCLIP, PRESETS)
