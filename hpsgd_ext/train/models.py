"""Small models for 64-feature inputs (8x8 digits or 64-d synthetic vectors)."""

from __future__ import annotations

import torch
from torch import nn


def mlp(features: int, classes: int, hidden: int = 256) -> nn.Module:
    return nn.Sequential(nn.Linear(features, hidden), nn.ReLU(), nn.Linear(hidden, hidden), nn.ReLU(),
                         nn.Linear(hidden, classes))


class SmallCNN(nn.Module):
    def __init__(self, features: int, classes: int, width: int = 32):
        super().__init__()
        side = int(features**0.5)
        assert side * side == features, "the CNN needs square inputs (64 = 8x8)"
        self.side = side
        self.body = nn.Sequential(
            nn.Conv2d(1, width, 3, padding=1), nn.BatchNorm2d(width), nn.ReLU(),
            nn.Conv2d(width, width, 3, padding=1), nn.BatchNorm2d(width), nn.ReLU(),
            nn.AdaptiveAvgPool2d(2), nn.Flatten(), nn.Linear(4 * width, classes))

    def forward(self, x):
        return self.body(x.view(-1, 1, self.side, self.side))


class SmallTransformer(nn.Module):
    """Rows of the input as tokens (8 tokens of 8 features for 64 inputs)."""

    def __init__(self, features: int, classes: int, d_model: int = 64, layers: int = 2, tokens: int = 8):
        super().__init__()
        assert features % tokens == 0
        self.tokens = tokens
        self.embed = nn.Linear(features // tokens, d_model)
        self.pos = nn.Parameter(torch.zeros(tokens, d_model))
        layer = nn.TransformerEncoderLayer(d_model, nhead=4, dim_feedforward=2 * d_model,
                                           batch_first=True, dropout=0.0)
        self.encoder = nn.TransformerEncoder(layer, layers, enable_nested_tensor=False)
        self.head = nn.Linear(d_model, classes)

    def forward(self, x):
        h = self.embed(x.view(x.shape[0], self.tokens, -1)) + self.pos
        return self.head(self.encoder(h).mean(1))


MODELS = {"mlp": mlp, "cnn": SmallCNN, "transformer": SmallTransformer}
