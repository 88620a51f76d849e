"""SC-CLIP (Bai et al., 2024, "Self-Calibrated CLIP"): outlier-token repair, self-adjusting attention and multi-level
fusion.

As in SC-CLIP's released code (clip/model.py, commit 0417ba9, its base config's indices 8, 3, 3-9 and res_cls 0.3),
per view; the code takes one image at a time, here every view and window of a batch is its own:
- Repair: the local outlier factor of the patch tokens entering the last block (squared Euclidean distance, 30
  neighbours, the code's reach distance max(d(p, o), k-distance(p))) marks the tokens above its 95th percentile;
  each is replaced by the mean of its non-outlier 3x3 neighbours (kept where it has none). The same tokens are
  repaired in block 9's output.
- Self-adjustment: the cosine similarity of block 9's repaired patch tokens, zeroed below 0.4 and row-normalised,
  averages the repaired tokens; the last block's attention, on patch tokens only, is the mean of
  softmax(3 (sim - mean sim)) (-inf where negative) and softmax(k k^T / sqrt(d)); out_proj of it, no residual, no
  MLP, plus 0.3 times the CLS token entering the last block. Block 4's similarity (zeroed below 0.4, row-normalised)
  then averages the result.
- Multi-level fusion: the sum of blocks 4-10's outputs goes through the same attention (plus 0.3 times its own CLS
  sum) and block 4's averaging, and is added.
The block indices are `released_index`'s. Where the code's outlier positions divide by the grid's row count (right
only on square grids; it fails on others), the position here is the token's own.
A grid of fewer than 31 tokens uses all the others as neighbours. The code's outlier search builds every pairwise
difference (quadratic in tokens times width, docs/training-free.md); here the exact differences
are taken only for the nearest candidates by the Gram-matrix distance (`nearest`): the same neighbours unless the
two roundings put a token's 31st nearest beyond its 39th.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from synseg.encoding import EncodedViews
from synseg.methods.base import Preset, TrainingFreeCLIP, affinity, attend, heads, released_index, training_free

NEIGHBOURS, CONTAMINATION = 30, 0.05  # lof_pytorch's defaults
SIMILARITY_FLOOR, CLS_WEIGHT = 0.4, 0.3  # beta, res_cls
ADJUST_BLOCK, FUSE_BLOCK, FUSED_BLOCKS = 8, 3, range(3, 10)  # pre_adjust_idx, post_adjust_idx, multi_start/end_idx
CANDIDATE_MARGIN = 8  # outlier search: neighbour candidates beyond k + 1, by the fast distance

# SC-CLIP's defaults (logit_scale 40) and its VOC21 and COCO-Object configs (logit scale 50 and 55, prob_thd 0.15
# and 0.35); 0.15 is also its Context60 threshold. Its VOC21 area threshold is not reproduced.
PRESETS = {
    "default": Preset(logit_scale=40.0, background_threshold=0.15),
    "voc": Preset(logit_scale=50.0, background_threshold=0.15),
    "object": Preset(logit_scale=55.0, background_threshold=0.35),
}


def nearest(tokens: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor]:
    """[n, C] -> squared distances and indices of each token's k nearest others, as the code finds them: ranked by
    |x_i - x_j|^2 from the differences themselves. Only the k + 1 + CANDIDATE_MARGIN nearest by the Gram-matrix
    distance (fast, but rounded differently) are ranked, not all n."""
    count = min(len(tokens), k + 1 + CANDIDATE_MARGIN)
    candidates = torch.cdist(tokens, tokens).topk(count, largest=False).indices
    neighbours = tokens.index_select(0, candidates.flatten()).view(*candidates.shape, -1)
    distances = torch.norm(tokens[:, None] - neighbours, dim=2, p=2) ** 2
    values, order = torch.topk(distances, k=k + 1, largest=False)
    return values[:, 1:], torch.gather(candidates, 1, order)[:, 1:]


def outliers(tokens: torch.Tensor) -> torch.Tensor:
    """[V, n, C] -> [V, n] bool: tokens whose local outlier factor is above the 1 - contamination quantile."""
    k = min(NEIGHBOURS, tokens.shape[1] - 1)
    found = [nearest(view, k) for view in tokens]
    distances, indices = torch.stack([d for d, _ in found]), torch.stack([i for _, i in found])
    reach = torch.max(distances, distances[..., -1:].expand_as(distances))
    density = k / reach.mean(dim=-1)
    factor = (torch.gather(density[:, None].expand(-1, density.shape[1], -1), 2, indices) / density[..., None]).mean(-1)
    return factor > torch.quantile(factor, 1 - CONTAMINATION, dim=1, keepdim=True)


def repaired(tokens: torch.Tensor, marked: torch.Tensor, grid: tuple[int, int]) -> torch.Tensor:
    """[V, n, C] patch tokens with each marked one replaced by the mean of its unmarked 3x3 neighbours."""
    views, _, width = tokens.shape
    features = tokens.transpose(1, 2).reshape(views, width, *grid)
    keep = (~marked).to(tokens.dtype).view(views, 1, *grid)
    kernel = torch.ones(width, 1, 3, 3, dtype=tokens.dtype, device=tokens.device)
    kernel[:, 0, 1, 1] = 0
    total = F.conv2d(F.pad(features * keep, (1, 1, 1, 1)), kernel, groups=width)
    count = F.conv2d(F.pad(keep, (1, 1, 1, 1)), kernel[:1])
    mean = total / torch.where(count == 0, torch.ones_like(count), count)
    update = (1 - keep) * (count > 0).to(tokens.dtype)
    return (features * (1 - update) + mean * update).flatten(2).transpose(1, 2)


def similarity(tokens: torch.Tensor) -> torch.Tensor:
    tokens = tokens / tokens.norm(dim=2, keepdim=True)
    return tokens @ tokens.transpose(1, 2)


def floored(similarities: torch.Tensor) -> torch.Tensor:
    """Similarities below the floor zeroed, rows normalised: the weights of the code's adaptively_aggregate."""
    weights = similarities.masked_fill(similarities < SIMILARITY_FLOOR, 0.0)
    return weights / (weights.sum(dim=-1, keepdim=True) + 1e-6)


class SCCLIP(TrainingFreeCLIP):
    title = "SC-CLIP"

    def attention(self, block: nn.Module, x: torch.Tensor, adjusted: torch.Tensor) -> torch.Tensor:
        """Mean of the similarity softmax (shared by the heads) and k-k attention, on patch tokens only."""
        _, k, v = heads(block, x)
        weights = (torch.softmax(adjusted, dim=-1).unsqueeze(1) + torch.softmax(affinity(k, k), dim=-1)) / 2
        return attend(block, weights, v)

    @torch.inference_mode()
    def dense_features(self, views: EncodedViews) -> torch.Tensor:
        grid = views.grid
        states = views.hidden_states()  # states[i + 1] is the code's feats_list[i]
        depth = len(states)
        block = self.backbone.clip.visual.transformer.resblocks[-1]
        cls, patches = states[-1][:, :1], states[-1][:, 1:]
        marked = outliers(patches)
        x = repaired(patches, marked, grid)
        adjust = similarity(repaired(states[released_index(ADJUST_BLOCK, depth) + 1][:, 1:], marked, grid))
        shifted = (adjust - adjust.mean(dim=(1, 2), keepdim=True)) * 3.0
        shifted = shifted.masked_fill(shifted < 0, float("-inf"))
        x = floored(adjust) @ x
        x = self.attention(block, x, shifted) + CLS_WEIGHT * cls
        fuse = floored(similarity(states[released_index(FUSE_BLOCK, depth) + 1][:, 1:]))
        x = fuse @ x
        summed = sum(states[i + 1] for i in sorted({released_index(i, depth) for i in FUSED_BLOCKS}))
        fused = self.attention(block, summed[:, 1:], shifted) + CLS_WEIGHT * summed[:, :1]
        return self.patch_features(x + fuse @ fused, grid)


METHOD = training_free("scclip", SCCLIP, PRESETS)
