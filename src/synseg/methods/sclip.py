"""SCLIP (Wang et al., ECCV 2024): correlative self-attention in the last block.

As in SCLIP's released code (`custom_attn` with csa=True): weights = softmax(q q^T / sqrt(d)) + softmax(k k^T / sqrt(d)),
summed, not averaged (the paper's text writes one softmax of a sum); the block keeps its residual and its MLP, and
ln_post applies to every token.
"""
from __future__ import annotations

import torch
from torch import nn

from synseg.methods.base import Preset, TrainingFreeCLIP, affinity, attend, heads, training_free

# SCLIP's defaults (logit_scale=40; prob_thd=0.1 on its with-background configs), and its VOC21 and
# Context60/COCO-Object configs (logit scale 65 and 50). Its VOC21 area threshold is not reproduced.
PRESETS = {
    "default": Preset(logit_scale=40.0, background_threshold=0.1),
    "voc": Preset(logit_scale=65.0, background_threshold=0.1),
    "object": Preset(logit_scale=50.0, background_threshold=0.1),
}


class SCLIP(TrainingFreeCLIP):
    title = "SCLIP"

    def last_block(self, block: nn.Module, x: torch.Tensor, grid: tuple[int, int]) -> torch.Tensor:
        q, k, v = heads(block, x)
        weights = torch.softmax(affinity(q, q), dim=-1) + torch.softmax(affinity(k, k), dim=-1)
        x = x + attend(block, weights, v)
        return x + block.ls_2(block.mlp(block.ln_2(x)))


METHOD = training_free("sclip", SCLIP, PRESETS)
