"""MaskCLIP (Zhou et al., ECCV 2022): the last block's attention is replaced by its value path, so each token keeps its
own content instead of a mixture pooled for the CLS token.

As in MaskCLIP's released code (its mmseg ViT with `skip_last_attn`), the residual connection and the MLP of that
block are kept: v = x + out_proj(W_v ln_1(x)); v = v + mlp(ln_2(v)).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from synseg.methods.base import Preset, TrainingFreeCLIP, training_free

# CLIP's own temperature, as MaskCLIP uses. MaskCLIP published no background rule; softmax probabilities of the best
# label below 0.5 become background (untuned: a starting point, overridden by --threshold). SynSeg's prompts.
PRESETS = {"default": Preset(logit_scale=None, background_threshold=0.5, templates=None)}


class MaskCLIP(TrainingFreeCLIP):
    title = "MaskCLIP"

    def __init__(self, backbone, preset: Preset = PRESETS["default"]) -> None:
        super().__init__(backbone, preset)

    def last_block(self, block: nn.Module, x: torch.Tensor, grid: tuple[int, int]) -> torch.Tensor:
        attention = block.attn
        width = attention.embed_dim
        bias = attention.in_proj_bias[2 * width:] if attention.in_proj_bias is not None else None
        value = F.linear(block.ln_1(x), attention.in_proj_weight[2 * width:], bias)
        x = x + block.ls_1(attention.out_proj(value))
        return x + block.ls_2(block.mlp(block.ln_2(x)))


METHOD = training_free("maskclip", MaskCLIP, PRESETS)
