"""CLIPSeg-style decoder ("rd64"): per-layer reductions, FiLM on the deepest, post-norm blocks, a patch-sized deconvolution."""
from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from synseg.config import check, finite, positive_int

from synseg.models.fastpath import linear, post_norm_layer
from synseg.models.film import FiLM


@dataclass
class DecoderConfig:
    reduce_dim: int = 64
    heads: int = 4
    ffn_dim: int = 2048
    dropout: float = 0.1
    film_hidden: int = 256
    projector_hidden: int = 0

    def __post_init__(self) -> None:
        for name in ("reduce_dim", "heads", "ffn_dim", "film_hidden"):
            positive_int(name, getattr(self, name))
        positive_int("projector_hidden", self.projector_hidden, 0)
        check("reduce_dim", self.reduce_dim, self.reduce_dim % self.heads == 0, f"a multiple of heads ({self.heads})")
        finite("dropout", self.dropout, 0.0, 0.99)


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
        return [linear(tokens, reduce.weight, reduce.bias) for reduce, tokens in zip(self.reduces, layer_tokens)]

    def forward(self, reduced: list[torch.Tensor], image_index: torch.Tensor, text: torch.Tensor | None) -> torch.Tensor:
        """Tokens [N, T, D] for N pairs; deepest layer first; text None skips FiLM (unconditioned features). Each
        image's tokens reach its pairs by index_select, whose backward (index_add_) sums a repeated image's gradients
        in a fixed order; indexing's (index_put_ with accumulate) adds them by atomics across CPU threads, in
        whatever order the threads arrive, and made training differ run to run (docs/training.md)."""
        a = reduced[-1].index_select(0, image_index)
        if text is not None:
            a = self.film(a, text)
        for depth, block in enumerate(self.blocks):
            if depth:
                a = a + reduced[-1 - depth].index_select(0, image_index)
            a = post_norm_layer(block, a)
        return a

    def to_logits(self, tokens: torch.Tensor) -> torch.Tensor:
        """Drop CLS and deconvolve each patch token into a patch of logits: [N, 1, S, S].

        A transposed convolution whose stride equals its kernel is one matmul per token followed by a pixel shuffle;
        written so it gives ConvTranspose2d's result with the same weights, without its slow CPU kernel (docs/speed.md).
        """
        n, _, d = tokens.shape
        h, w = self.grid
        ph, pw = self.upsample.kernel_size
        weight, bias = self.upsample.weight.view(d, ph * pw).t(), self.upsample.bias.expand(ph * pw)
        with torch.autocast(tokens.device.type, enabled=False):  # logits in fp32 also under autocast (bf16 keeps 3 digits)
            patches = linear(tokens[:, 1:].reshape(n * h * w, d).float(), weight, bias)
        return patches.view(n, h, w, ph, pw).permute(0, 1, 3, 2, 4).reshape(n, 1, h * ph, w * pw)
