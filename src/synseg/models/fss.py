"""Feature Synergy Structure (paper III-A, METHOD.md 2): activation-weighted fg/bg pooling, projected into CLIP space."""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn


def token_activations(logits: torch.Tensor, patch_size: int) -> torch.Tensor:
    """Semantic-activation map at token resolution [N, HW]: the mean activation inside each patch, in fp32 also under
    autocast (in bf16 a mean activation of 1 - 2^-9 rounds to 1, and background pooling then divides by 0)."""
    with torch.autocast(logits.device.type, enabled=False):
        return F.avg_pool2d(torch.sigmoid(logits.float()), patch_size).flatten(1)


def token_log_inactivity(logits: torch.Tensor, patch_size: int) -> torch.Tensor:
    """log(1 - A) per token [N, HW], from the logits as log mean(sigmoid(-x)) over the patch: exact where 1 - A
    itself underflows (a logit of 17 already makes sigmoid 1 in fp32, and cross-entropy towards 0 infinite)."""
    n, _, height, width = logits.shape
    p = patch_size
    with torch.autocast(logits.device.type, enabled=False):
        tokens = (height // p) * (width // p)  # named, not -1: N is 0 in a batch without absent pairs
        x = logits.float().view(n, height // p, p, width // p, p).permute(0, 1, 3, 2, 4).reshape(n, tokens, p * p)
        return torch.logsumexp(F.logsigmoid(-x), dim=-1) - math.log(p * p)


POOL_DIVISORS = ("activation", "tokens")


def synergy_vectors(
    activations: torch.Tensor, features: torch.Tensor, divisor: str = "activation", eps: float = 1e-6
) -> tuple[torch.Tensor, torch.Tensor]:
    """fg = A^T Z / sum A and bg = (1 - A)^T Z / sum (1 - A); activations [N, HW], features [N, HW, D] -> [N, D] each.

    divisor "tokens" divides by HW instead (CCAM): the vectors then shrink with the map, so behind a projector with a
    bias a map cannot fade towards zero everywhere while still pooling the same direction.
    """
    with torch.autocast(features.device.type, enabled=False):  # fp32: sums over HW tokens
        activations = activations.float()
        maps = torch.stack([activations, 1.0 - activations], dim=1)  # the map and its complement: [N, 2, HW]
        total = maps.sum(dim=-1, keepdim=True) + eps if divisor == "activation" else activations.shape[-1]
        pooled = torch.bmm(maps, features.float()) / total
    return pooled[:, 0], pooled[:, 1]


class Projector(nn.Module):
    """Maps decoder-space synergy vectors into CLIP's joint space so they can meet the text embeddings."""

    def __init__(self, dim: int, embed_dim: int, hidden: int = 0) -> None:
        super().__init__()
        if hidden:
            self.net = nn.Sequential(nn.Linear(dim, hidden), nn.GELU(), nn.Linear(hidden, embed_dim))
        else:
            self.net = nn.Linear(dim, embed_dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)
