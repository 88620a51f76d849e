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


def masked_attention_pooling(
    blocks: nn.ModuleList, block_inputs: list[torch.Tensor], maps: torch.Tensor, image_index: torch.Tensor,
) -> torch.Tensor:
    """CLIP's own class-token path with the activation maps as its attention masks: maps [M, HW] of images
    `image_index` [M] -> [M, width] class tokens after the last block (before ln_post).

    In every block the class token of pair m attends to itself and to its image's patch tokens, each patch's logit
    shifted by log A_m (a soft mask: A = 0 hides a patch, A = 1 leaves CLIP's attention as it was, and then the result
    is CLIP's image embedding); the patch tokens are CLIP's own (`block_inputs`: [B, 1 + HW, width] entering each
    block), computed once per image. So fg_k is what CLIP says of the region A_k covers, and the gradient reaches A
    through the attention. The M queries are laid out per image ([B, Q] slots), so no image's keys are copied per pair.
    """
    images = block_inputs[0].shape[0]
    order = torch.argsort(image_index, stable=True)
    counts = torch.bincount(image_index, minlength=images)
    starts = counts.cumsum(0) - counts
    slot = torch.empty_like(image_index)
    slot[order] = torch.arange(len(image_index), device=image_index.device) - starts[image_index[order]]
    slots = int(counts.max())

    def per_image(rows: torch.Tensor) -> torch.Tensor:
        """[M, ...] -> [B, Q, ...]: each pair's row in its image's slot (unused slots 0)."""
        return rows.new_zeros(images, slots, *rows.shape[1:]).index_put((image_index, slot), rows)

    bias = per_image(torch.log(maps.clamp_min(1e-6)))
    cls = block_inputs[0][image_index, 0]
    for block, x in zip(blocks, block_inputs):
        attention = block.attn
        heads = attention.num_heads
        w_q, w_k, w_v = attention.in_proj_weight.chunk(3)
        b_q, b_k, b_v = attention.in_proj_bias.chunk(3)
        patches = block.ln_1(x[:, 1:])
        keys = F.linear(patches, w_k, b_k).unflatten(-1, (heads, -1)).transpose(1, 2)  # [B, h, HW, d]
        values = F.linear(patches, w_v, b_v).unflatten(-1, (heads, -1)).transpose(1, 2)
        own = block.ln_1(cls)
        query, own_key, own_value = (F.linear(own, w, b).unflatten(-1, (heads, -1)) for w, b in
                                     ((w_q, b_q), (w_k, b_k), (w_v, b_v)))  # [M, h, d]
        scale = query.shape[-1] ** -0.5
        patch_logits = torch.einsum("bqhd,bhtd->bqht", per_image(query), keys) * scale  # [B, Q, h, HW]
        patch_logits = patch_logits + bias[:, :, None]
        logits = torch.cat([(query * own_key).sum(-1, keepdim=True) * scale, patch_logits[image_index, slot]], dim=-1)
        weights = torch.softmax(logits, dim=-1)  # [M, h, 1 + HW]
        patch_mix = torch.einsum("bqht,bhtd->bqhd", per_image(weights[..., 1:]), values)[image_index, slot]
        mixed = weights[..., :1] * own_value + patch_mix  # [M, h, d]
        cls = cls + block.ls_1(attention.out_proj(mixed.flatten(1)))
        cls = cls + block.ls_2(block.mlp(block.ln_2(cls)))
    return cls


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
