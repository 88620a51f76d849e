"""NACLIP (Hajimiri et al., WACV 2025): k-k attention plus a Gaussian neighbourhood bias on the patch grid, without the
residual and the MLP.

As in NACLIP's released code (arch 'reduced', attn_strategy 'naclip'): weights = softmax(k k^T / sqrt(d) + omega), with
omega[i, j] = exp(-|p_i - p_j|^2 / (2 std^2)) between patch positions p (an unnormalised Gaussian, 1 on the diagonal)
and 0 wherever the CLS token is involved; the output is out_proj(weights v) alone.
"""
from __future__ import annotations

import functools

import torch
from torch import nn

from synseg.methods.base import Preset, TrainingFreeCLIP, affinity, attend, heads, training_free

GAUSSIAN_STD = 5.0  # NACLIP's default, in patches

# NACLIP's defaults: logit_scale=40; prob_thd=0.1 on its with-background configs.
PRESETS = {"default": Preset(logit_scale=40.0, background_threshold=0.1)}


@functools.cache
def neighbourhood(grid: tuple[int, int], std: float = GAUSSIAN_STD) -> torch.Tensor:
    """[1 + h*w, 1 + h*w] Gaussian of the distance between patch positions (row-major), zero row and column for CLS."""
    rows, cols = torch.meshgrid(torch.arange(grid[0]), torch.arange(grid[1]), indexing="ij")
    positions = torch.stack([rows.flatten(), cols.flatten()], dim=1).double()
    distance = (positions[:, None] - positions[None]).square().sum(dim=-1)
    gaussian = torch.exp(-distance / (2 * std**2))
    return torch.nn.functional.pad(gaussian, (1, 0, 1, 0)).float()


class NACLIP(TrainingFreeCLIP):
    title = "NACLIP"

    def last_block(self, block: nn.Module, x: torch.Tensor, grid: tuple[int, int]) -> torch.Tensor:
        _, k, v = heads(block, x)
        omega = neighbourhood(grid).to(device=x.device, dtype=x.dtype)
        return attend(block, torch.softmax(affinity(k, k) + omega, dim=-1), v)


METHOD = training_free("naclip", NACLIP, PRESETS)
