"""FiLM fusion (paper appendix D1): a small MLP on the text embedding gives per-channel scale and shift."""
from __future__ import annotations

import torch
from torch import nn


class FiLM(nn.Module):
    def __init__(self, text_dim: int, channels: int, hidden: int) -> None:
        super().__init__()
        self.mlp = nn.Sequential(nn.Linear(text_dim, hidden), nn.ReLU(inplace=True), nn.Linear(hidden, 2 * channels))

    def forward(self, tokens: torch.Tensor, text: torch.Tensor) -> torch.Tensor:
        """tokens [N, T, C], text [N, E] -> gamma * tokens + beta."""
        gamma, beta = self.mlp(text).unsqueeze(1).chunk(2, dim=-1)
        return gamma * tokens + beta
