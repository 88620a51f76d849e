"""The per-token CLS readout of a frozen CLIP (docs/training-free.md): for each patch token i, CLIP's class token run
through every block attending only to itself and to patch token i, then `ln_post` and the projection. It is a
training-free method on its own (`methods/readout.py`) and SynSeg's optional prior (`SynSegConfig.prior`)."""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


def per_token_class_tokens(blocks: nn.ModuleList, inputs: list[torch.Tensor]) -> torch.Tensor:
    """[B, HW, width] class tokens after the last block, one per patch token, each having attended in every block to
    itself and to that patch token only. `inputs`: the tokens entering each block, [B, 1 + HW, width], CLIP's own
    (unmasked) pass, which the readout does not change."""
    first = inputs[0]
    cls = first[:, :1].expand(-1, first.shape[1] - 1, -1)
    for block, x in zip(blocks, inputs):
        attention = block.attn
        heads = attention.num_heads
        own = F.linear(block.ln_1(cls), attention.in_proj_weight, attention.in_proj_bias)
        query, own_key, own_value = own.unflatten(-1, (3, heads, -1)).unbind(2)  # each [B, HW, h, d]
        width = attention.embed_dim  # the patch tokens need keys and values only
        patch = F.linear(block.ln_1(x[:, 1:]), attention.in_proj_weight[width:], attention.in_proj_bias[width:])
        patch_key, patch_value = patch.unflatten(-1, (2, heads, -1)).unbind(2)
        scale = query.shape[-1] ** -0.5
        logits = torch.stack([(query * own_key).sum(-1), (query * patch_key).sum(-1)], dim=-1) * scale
        weights = torch.softmax(logits, dim=-1)  # [B, HW, h, 2]
        mixed = weights[..., :1] * own_value + weights[..., 1:] * patch_value
        cls = cls + block.ls_1(attention.out_proj(mixed.flatten(-2)))
        cls = cls + block.ls_2(block.mlp(block.ln_2(cls)))
    return cls


def readout_embeddings(visual: nn.Module, inputs: list[torch.Tensor]) -> torch.Tensor:
    """L2-normalised per-token embeddings [B, HW, embed_dim] in CLIP's joint space, in fp32."""
    tokens = visual.ln_post(per_token_class_tokens(visual.transformer.resblocks, inputs)) @ visual.proj
    return F.normalize(tokens.float(), dim=-1)


def per_image_max(values: torch.Tensor, image_index: torch.Tensor) -> torch.Tensor:
    """For pairs [N, ...] of images `image_index` [N]: each pair's image's maximum over its pairs, [N, ...]."""
    index = image_index.view(-1, *[1] * (values.dim() - 1)).expand_as(values)
    images = int(image_index.max()) + 1
    peak = values.new_full((images, *values.shape[1:]), float("-inf")).scatter_reduce(0, index, values, "amax")
    return peak[image_index]


class ReadoutGrouping(nn.Module):
    """Pools the readout over the tokens that CLIP's own features group together: E'_i = normalise(E_i + alpha
    sum_j a_ij E_j), a = softmax over j of learned query-key products of the tokens entering CLIP's last block.

    The mix is convex in the readout's embeddings, so it can only choose which tokens to pool, never add a direction to
    the joint space: what it learns on the phrases of training captions carries to phrases it never saw. alpha starts at
    0, so an untrained grouping is the plain readout."""

    def __init__(self, width: int, dim: int) -> None:
        super().__init__()
        self.norm = nn.LayerNorm(width)
        self.query = nn.Linear(width, dim)
        self.key = nn.Linear(width, dim)
        self.alpha = nn.Parameter(torch.zeros(()))

    def forward(self, readout: torch.Tensor, tokens: torch.Tensor) -> torch.Tensor:
        """readout [B, HW, E] unit vectors, tokens [B, HW, width] -> [B, HW, E] unit vectors."""
        x = self.norm(tokens.float())
        query, key = self.query(x), self.key(x)
        weights = torch.softmax(query @ key.transpose(1, 2) * query.shape[-1] ** -0.5, dim=-1)
        return F.normalize(readout + self.alpha * (weights @ readout), dim=-1)
