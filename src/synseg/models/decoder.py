"""CLIPSeg-style decoder ("rd64"): per-layer reductions, FiLM on the deepest, post-norm blocks, a patch-sized deconvolution."""
from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from synseg.models.film import FiLM


@dataclass
class DecoderConfig:
    reduce_dim: int = 64
    heads: int = 4
    ffn_dim: int = 2048
    dropout: float = 0.1
    film_hidden: int = 256
    projector_hidden: int = 0


@dataclass
class DecoderOutput:
    logits: torch.Tensor  # [N, 1, S, S]: sigmoid gives the semantic-activation map
    features: torch.Tensor  # [N, HW, D]: the conditional visual features Z


class SegDecoder(nn.Module):
    """Decodes N (image, text) pairs; class-independent reductions run once per image, not once per pair."""

    def __init__(self, config: DecoderConfig, width: int, text_dim: int, num_layers: int, grid: tuple[int, int], patch_size: int) -> None:
        super().__init__()
        d = config.reduce_dim
        self.grid = grid
        self.reduces = nn.ModuleList(nn.Linear(width, d) for _ in range(num_layers))
        self.film = FiLM(text_dim, d, config.film_hidden)
        self.blocks = nn.ModuleList(
            nn.TransformerEncoderLayer(d, config.heads, config.ffn_dim, config.dropout, activation="relu", batch_first=True)
            for _ in range(num_layers)
        )
        self.upsample = nn.ConvTranspose2d(d, 1, kernel_size=patch_size, stride=patch_size)

    def reduce(self, layer_tokens: list[torch.Tensor]) -> list[torch.Tensor]:
        """Per-image reductions [B, T, D], shallow to deep."""
        return [reduce(tokens) for reduce, tokens in zip(self.reduces, layer_tokens)]

    def forward(self, reduced: list[torch.Tensor], image_index: torch.Tensor, text: torch.Tensor | None) -> torch.Tensor:
        """Tokens [N, T, D] for N pairs; deepest layer first; text None skips FiLM (unconditioned features)."""
        a = reduced[-1][image_index]
        if text is not None:
            a = self.film(a, text)
        for depth, block in enumerate(self.blocks):
            if depth:
                a = a + reduced[-1 - depth][image_index]
            a = block(a)
        return a

    def to_logits(self, tokens: torch.Tensor) -> torch.Tensor:
        """Drop CLS and deconvolve each patch token into a patch of logits: [N, 1, S, S]."""
        n, _, d = tokens.shape
        h, w = self.grid
        return self.upsample(tokens[:, 1:].transpose(1, 2).reshape(n, d, h, w))
