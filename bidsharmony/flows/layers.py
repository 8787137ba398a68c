"""Flow-layer protocol helpers: 2x2 squeezing and sequential composition."""

from __future__ import annotations

import torch
from torch import nn


def squeeze2d(x: torch.Tensor) -> torch.Tensor:
    """(B, C, H, W) -> (B, 4C, H/2, W/2): every 2x2 patch becomes 4 channels."""
    b, c, h, w = x.shape
    if h % 2 or w % 2:
        raise ValueError(f"cannot squeeze an image of size {h}x{w}: both sides must be even")
    x = x.reshape(b, c, h // 2, 2, w // 2, 2).permute(0, 1, 3, 5, 2, 4)
    return x.reshape(b, c * 4, h // 2, w // 2)


def unsqueeze2d(x: torch.Tensor) -> torch.Tensor:
    """Inverse of :func:`squeeze2d`."""
    b, c, h, w = x.shape
    x = x.reshape(b, c // 4, 2, 2, h, w).permute(0, 1, 4, 2, 5, 3)
    return x.reshape(b, c // 4, h * 2, w * 2)


class SqueezeLayer(nn.Module):
    """Space-to-channel 2x2 squeeze as a flow layer (a permutation: log-det 0)."""

    def forward(self, x, context=None):
        return squeeze2d(x), x.new_zeros(x.shape[0])

    def inverse(self, y, context=None):
        return unsqueeze2d(y)


class UnsqueezeLayer(nn.Module):
    """Channel-to-space 2x2 unsqueeze as a flow layer (a permutation: log-det 0)."""

    def forward(self, x, context=None):
        return unsqueeze2d(x), x.new_zeros(x.shape[0])

    def inverse(self, y, context=None):
        return squeeze2d(y)


class SequentialFlow(nn.Module):
    """Chain of flow layers; log-determinants add up, the inverse runs backwards.

    Parameters
    ----------
    layers : iterable of nn.Module
        Layers following the flow-layer protocol (see :mod:`bidsharmony.flows`).
    """

    def __init__(self, layers):
        super().__init__()
        self.layers = nn.ModuleList(layers)

    def forward(self, x, context=None):
        logdet = x.new_zeros(x.shape[0])
        for layer in self.layers:
            x, step_logdet = layer(x, context=context)
            logdet = logdet + step_logdet
        return x, logdet

    def inverse(self, y, context=None):
        for layer in reversed(self.layers):
            y = layer.inverse(y, context=context)
        return y
