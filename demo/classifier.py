"""A small CNN that tells the five object kinds apart; its penultimate layer is the feature space
of the demo's Fréchet distance.

32 x 32 -> (conv 32, conv 32 /2) -> 16 x 16 -> (conv 64, conv 64 /2) -> 8 x 8 -> conv 128 ->
global average -> 64 features (SiLU) -> 5 logits.  Trained on clean pictures with light
Gaussian noise added, so that slightly noisy samples are still read correctly.
"""
from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

from .data import N_CLASSES

__all__ = ["Classifier", "CLASSIFIER_CONFIG"]

CLASSIFIER_CONFIG = dict(widths=(32, 64, 128), n_features=64, n_classes=N_CLASSES)


def _block(cin, cout, stride):
    return nn.Sequential(nn.Conv2d(cin, cout, 3, stride=stride, padding=1), nn.GroupNorm(8, cout), nn.SiLU())


class Classifier(nn.Module):
    def __init__(self, widths=(32, 64, 128), n_features: int = 64, n_classes: int = N_CLASSES):
        super().__init__()
        a, b, c = widths
        self.body = nn.Sequential(_block(3, a, 1), _block(a, a, 2), _block(a, b, 1), _block(b, b, 2), _block(b, c, 1),
                                  _block(c, c, 1))
        self.fc = nn.Linear(c, n_features)
        self.head = nn.Linear(n_features, n_classes)

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """Penultimate features [B, n_features] of images [B, 3, H, W] in [-1, 1]."""
        h = self.body(x).mean(dim=(-2, -1))
        return F.silu(self.fc(h))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x))
