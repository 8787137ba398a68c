"""Shallow U-Net with concat-ELU activations (Harmonizing Flows' conditioner and harmonizer)."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


class ConcatELU(nn.Module):
    """``concat(ELU(x), ELU(-x))`` along channels: keeps both signs' information (doubles channels)."""

    def forward(self, x):
        return torch.cat([F.elu(x), F.elu(-x)], dim=1)


def _block(in_channels: int, out_channels: int, layers: int = 1, normalization: bool = True) -> nn.Sequential:
    """``layers`` times: concat-ELU, 3x3 convolution, group norm (the paper's 'normalizing layer')."""
    modules = []
    for i in range(layers):
        modules += [ConcatELU(), nn.Conv2d(2 * (in_channels if i == 0 else out_channels), out_channels, 3, padding=1)]
        if normalization:
            modules.append(nn.GroupNorm(1, out_channels))
    return nn.Sequential(*modules)


class ShallowUNet(nn.Module):
    """A U-Net of ``len(channels)`` levels (factor-2 average pooling, nearest upsampling, skip concat).

    Parameters
    ----------
    in_channels, out_channels : int
        Input and output channels.
    channels : sequence of int
        Feature channels per level, finest first (paper: coupling nets 4 levels; harmonizer
        ``(16, 32, 48, 64, 64)``). Image sides must be divisible by ``2 ** (len(channels) - 1)``.
    layers_per_level : int
        Concat-ELU/convolution layers per level (paper harmonizer: 2).
    zero_init : bool
        Zero the output convolution, so a coupling layer starts as the identity.
    normalization : bool
        Group-normalise after each convolution. Switch it off when the net must see absolute
        intensities (the harmonizer: a per-image normalisation would hide the brightness and
        contrast it has to correct).

    Notes
    -----
    ``forward_with_bottleneck`` also returns the coarsest feature map, from which the
    harmonizer reads its scalar gain.
    """

    def __init__(self, in_channels: int, out_channels: int, channels=(16, 32), layers_per_level: int = 1,
                 zero_init: bool = False, normalization: bool = True):
        super().__init__()
        channels = list(channels)
        self.inlet = nn.Conv2d(in_channels, channels[0], 3, padding=1)
        self.down = nn.ModuleList()
        previous = channels[0]
        for width in channels:
            self.down.append(_block(previous, width, layers_per_level, normalization))
            previous = width
        self.up = nn.ModuleList()
        for width, skip in zip(channels[-2::-1], channels[-2::-1]):
            self.up.append(_block(previous + skip, width, layers_per_level, normalization))
            previous = width
        self.outlet = nn.Sequential(ConcatELU(), nn.Conv2d(2 * previous, out_channels, 3, padding=1))
        self.bottleneck_channels = channels[-1]
        if zero_init:
            nn.init.zeros_(self.outlet[1].weight)
            nn.init.zeros_(self.outlet[1].bias)

    def forward_with_bottleneck(self, x):
        h = self.inlet(x)
        skips = []
        for level, block in enumerate(self.down):
            if level:
                h = F.avg_pool2d(h, 2)
            h = block(h)
            skips.append(h)
        bottleneck = h
        for block, skip in zip(self.up, skips[-2::-1]):
            h = F.interpolate(h, size=skip.shape[-2:], mode="nearest")
            h = block(torch.cat([h, skip], dim=1))
        return self.outlet(h), bottleneck

    def forward(self, x):
        return self.forward_with_bottleneck(x)[0]
