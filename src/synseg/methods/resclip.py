"""ResCLIP (Yang et al., CVPR 2025) on NACLIP: residual cross-correlation self-attention (RCS) and semantic feedback
refinement (SFR).

As in ResCLIP's released code (arch 'wo_resi', attn_strategy 'resclip', gaussian_std 5, use_rcs and use_sfr):
- RCS: the q-k attention of blocks 6-9 (indices 5-8), averaged over those blocks, is blended into NACLIP's last-block
  attention after its softmax: tau_r ((1 - lambda_r) softmax(k k^T / sqrt(d) + omega) + lambda_r A_rcs).
- SFR: a first pass with RCS alone gives logits against the labels; they are upsampled to the input, refined by PAMR
  (10 iterations, dilations 8 and 16), turned into probabilities (logit scale), and each pixel takes its best label,
  label 0 where that probability is below the preset's threshold; each patch takes the most frequent label among its
  pixels. S[i, j] = 1 for patches of one label, decayed by exp(-steps / max steps) where the straight path between
  them (Chebyshev steps, rounded coordinates) leaves that label; each row is smoothed by a 1-D Gaussian (std 5, width
  31) along the row-major patch order, clipped at 0, normalised to sum 1, and the whole matrix divided by its maximum
  and rounded to float16 as the code does. The second pass replaces the k-k logits by
  tau_s ((1 - lambda_s) k k^T / sqrt(d) + lambda_s S) before omega, the softmax and RCS. No residual, no MLP.
The labels are the query embeddings themselves (every name of every class, as the code's query_features), so the
second pass depends on them: this method replaces `logits`. The RCS block indices are `released_index`'s.
"""
from __future__ import annotations

import functools
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from synseg.encoding import EncodedViews
from synseg.methods.base import (Preset, TrainingFreeCLIP, affinity, attend, heads, released_index, training_free,
                                 upsampled_cosine)
from synseg.methods.naclip import GAUSSIAN_STD, neighbourhood
from synseg.protocols.pamr import pamr

RCS_BLOCKS = (5, 6, 7, 8)  # attention maps of blocks 6-9 of ViT-B/16's 12
FEEDBACK_PAMR = (10, (8, 16))  # iterations, dilations of the first pass's PAMR


@dataclass(frozen=True, kw_only=True)
class ResCLIPPreset(Preset):
    """feedback_threshold: the code's temp_thd; rcs and sfr: (tau, lambda) of attn_rcs_weights and attn_sfr_weights."""

    feedback_threshold: float
    rcs: tuple[float, float]
    sfr: tuple[float, float]


def _preset(background: float, feedback: float, rcs: tuple[float, float], sfr: tuple[float, float]) -> ResCLIPPreset:
    return ResCLIPPreset(logit_scale=40.0, background_threshold=background, feedback_threshold=feedback, rcs=rcs,
                         sfr=sfr)


# ResCLIP's configs/cfg_*.py (logit_scale 40 throughout; prob_thd 0.1 on its with-background configs). The default is
# its COCO-Object config, whose weights it also uses on COCO-Stuff and Context59.
PRESETS = {
    "default": _preset(0.1, 0.11, (2.0, 0.4), (1.8, 0.7)),
    "voc": _preset(0.1, 0.50, (2.0, 0.3), (2.2, 0.7)),
    "voc20": _preset(0.0, 0.10, (2.0, 0.6), (2.1, 0.6)),
    "context60": _preset(0.1, 0.30, (2.0, 0.3), (1.8, 0.7)),
    "context59": _preset(0.0, 0.25, (2.0, 0.4), (1.8, 0.7)),
    "object": _preset(0.1, 0.11, (2.0, 0.4), (1.8, 0.7)),
    "stuff": _preset(0.0, 0.11, (2.0, 0.4), (1.8, 0.7)),
    "city": _preset(0.0, 0.10, (2.0, 0.2), (2.1, 0.6)),
    "ade": _preset(0.0, 0.25, (2.0, 0.3), (2.1, 0.7)),
}


@functools.cache
def straight_paths(grid: tuple[int, int], device: torch.device) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """For every (start, end) patch pair, row-major: the patches on the rounded straight line between them [n*n, S]
    (S = longest Chebyshev distance + 1), which of its S steps lie on the path, and the pair's distance in steps."""
    rows, cols = torch.meshgrid(*(torch.arange(side, device=device) for side in grid), indexing="ij")
    coords = torch.stack([rows.flatten(), cols.flatten()], dim=1)
    start = coords[:, None].expand(-1, len(coords), -1).reshape(-1, 2)
    end = coords[None].expand(len(coords), -1, -1).reshape(-1, 2)
    steps = (end - start).abs().max(dim=1).values
    longest = int(steps.max())
    t = torch.linspace(0, 1, steps=longest + 1, device=device).unsqueeze(1).unsqueeze(0)
    current = (start.unsqueeze(1) * (1 - t) + end.unsqueeze(1) * t).round().long()
    on_path = torch.arange(longest + 1, device=device).unsqueeze(0) <= steps.unsqueeze(1)
    return current[..., 0] * grid[1] + current[..., 1], on_path, steps


class ResCLIP(TrainingFreeCLIP):
    title = "ResCLIP"

    def cross_correlation(self, states: list[torch.Tensor]) -> torch.Tensor:
        """RCS: [V, heads, N, N] mean q-k attention of the released intermediate blocks."""
        blocks = self.backbone.clip.visual.transformer.resblocks
        indices = sorted({released_index(i, len(blocks)) for i in RCS_BLOCKS})
        maps = []
        for index in indices:
            q, k, _ = heads(blocks[index], states[index])
            maps.append(torch.softmax(affinity(q, k), dim=-1))
        return torch.stack(maps).mean(dim=0)

    def attention(self, block: nn.Module, x: torch.Tensor, grid: tuple[int, int], rcs: torch.Tensor,
                  feedback: torch.Tensor | None) -> torch.Tensor:
        """The last block's output: NACLIP's k-k attention with SFR's affinity (when given) and RCS blended in."""
        _, k, v = heads(block, x)
        logits = affinity(k, k)
        if feedback is not None:
            tau, weight = self.preset.sfr
            logits = tau * ((1 - weight) * logits + weight * feedback)
        weights = torch.softmax(logits + neighbourhood(grid, GAUSSIAN_STD).to(x.device, x.dtype), dim=-1)
        tau, weight = self.preset.rcs
        return attend(block, tau * ((1 - weight) * weights + weight * rcs), v)

    def feedback(self, pixels: torch.Tensor, logits: torch.Tensor, grid: tuple[int, int]) -> torch.Tensor:
        """SFR: [V, 1, 1 + n, 1 + n] same-label affinity from the first pass's [V, K, H, W] logits, in float16 (the
        code's cast: its weighting then runs in float16 too)."""
        iterations, dilations = FEEDBACK_PAMR
        probabilities = torch.softmax(pamr(pixels, logits, iterations, dilations) * self.logit_scale, dim=1)
        labels = probabilities.argmax(dim=1)
        labels[probabilities.amax(dim=1) < self.preset.feedback_threshold] = 0
        patch = self.backbone.patch_size
        views, n = len(labels), grid[0] * grid[1]
        per_patch = labels.reshape(views, grid[0], patch, grid[1], patch).permute(0, 1, 3, 2, 4).reshape(views, n, -1)
        labels = torch.mode(per_patch, dim=-1).values
        path, on_path, steps = straight_paths(grid, labels.device)
        decay = torch.exp(-steps / steps.max()).view(n, n)
        same = (labels[:, :, None] == labels[:, None, :]).float()
        kept = [((label[path] == label.repeat_interleave(n)[:, None]) | ~on_path).all(dim=1).view(n, n)
                for label in labels]
        same = torch.where(torch.stack(kept), same, same * decay)
        size = min(n, int(6 * GAUSSIAN_STD + 1))
        size += 1 - size % 2
        offsets = torch.arange(size, device=labels.device) - size // 2
        kernel = torch.exp(-(offsets**2) / (2 * GAUSSIAN_STD**2))
        kernel = (kernel / kernel.sum()).view(1, 1, -1)
        smoothed = F.relu(F.conv1d(same.reshape(views * n, 1, n), kernel, padding=size // 2)).view(views, n, n)
        smoothed = smoothed / (smoothed.sum(dim=-1, keepdim=True) + 1e-8)
        matrix = F.pad(smoothed, (1, 0, 1, 0))
        return (matrix / matrix.amax(dim=(1, 2), keepdim=True)).half().unsqueeze(1)

    @torch.inference_mode()
    def logits(self, views: EncodedViews, text: torch.Tensor) -> torch.Tensor:
        pixels, grid = views.pixels, views.grid
        states = views.hidden_states()
        rcs = self.cross_correlation(states)
        block = self.backbone.clip.visual.transformer.resblocks[-1]
        first = upsampled_cosine(self.patch_features(self.attention(block, states[-1], grid, rcs, None), grid), text,
                                 pixels.shape[-2:])
        feedback = self.feedback(pixels, first, grid)
        features = self.patch_features(self.attention(block, states[-1], grid, rcs, feedback), grid)
        return upsampled_cosine(features, text, pixels.shape[-2:])


METHOD = training_free("resclip", ResCLIP, PRESETS)
