"""Affine coupling layers with checkerboard and channel masks (RealNVP, Dinh et al. 2017)."""

from __future__ import annotations

import torch
from torch import nn

from .unet import ShallowUNet


def checkerboard_mask(height: int, width: int, parity: int = 0, device=None) -> torch.Tensor:
    """(1, 1, H, W) float mask, 1 where ``(row + col) % 2 == parity`` (the conditioning pixels)."""
    rows = torch.arange(height, device=device)[:, None]
    cols = torch.arange(width, device=device)[None, :]
    return (((rows + cols) % 2) == parity).float()[None, None]


class AffineCoupling(nn.Module):
    """``y_B = x_B * exp(s(x_A)) + t(x_A)``, ``y_A = x_A``, with a bounded log-scale.

    Parameters
    ----------
    channels : int
        Channels of the input.
    mask : {"checkerboard", "channel"}
        Checkerboard: the conditioning half are the pixels of one colour of a checkerboard
        (the mask itself is fed to the net so it knows which pixels are which). Channel: the
        first (``parity=0``) or second half of the channels conditions the other half.
    parity : int
        0 or 1, which half conditions; alternate it between consecutive layers.
    hidden_channels : sequence of int
        Levels of the :class:`ShallowUNet` conditioner.
    context_channels : int
        Channels of an optional ``context`` tensor concatenated to the conditioner's input.
    net : nn.Module, optional
        A conditioner to use instead (input ``in_channels`` as described, output 2x the
        transformed channels: log-scale then shift).

    Notes
    -----
    The log-scale is ``scale * tanh(raw)`` with a learnable per-channel ``scale`` (initialised
    to 1), which keeps early training stable; the conditioner's output layer starts at zero so
    the layer starts as the identity.
    """

    def __init__(self, channels: int, mask: str = "checkerboard", parity: int = 0, hidden_channels=(16, 32),
                 context_channels: int = 0, net: nn.Module | None = None):
        super().__init__()
        if mask not in ("checkerboard", "channel"):
            raise ValueError(f"unknown coupling mask {mask!r}: use 'checkerboard' or 'channel'")
        if mask == "channel" and channels < 2:
            raise ValueError("a channel-masked coupling needs at least 2 channels; squeeze first")
        self.mask, self.parity, self.channels = mask, int(parity), int(channels)
        if mask == "checkerboard":
            net_in, transformed = channels + 1, channels
        else:
            # the conditioning part always has channels // 2 channels, whichever side it is on
            net_in, transformed = channels // 2, channels - channels // 2
        self.net = net if net is not None else ShallowUNet(net_in + context_channels, 2 * transformed,
                                                           hidden_channels, zero_init=True)
        self.scale = nn.Parameter(torch.ones(1, transformed, 1, 1))

    def _split(self, x):
        half = self.channels // 2
        if self.parity == 0:
            return x[:, :half], x[:, half:]
        return x[:, self.channels - half:], x[:, :self.channels - half]

    def _merge(self, conditioning, transformed):
        if self.parity == 0:
            return torch.cat([conditioning, transformed], dim=1)
        return torch.cat([transformed, conditioning], dim=1)

    def _scale_shift(self, conditioning, context):
        net_in = conditioning if context is None else torch.cat([conditioning, context], dim=1)
        raw_log_scale, shift = self.net(net_in).chunk(2, dim=1)
        return self.scale * torch.tanh(raw_log_scale), shift

    def forward(self, x, context=None):
        if self.mask == "checkerboard":
            mask = checkerboard_mask(*x.shape[-2:], self.parity, x.device).to(x.dtype)
            conditioning = torch.cat([x * mask, mask.expand(x.shape[0], 1, -1, -1)], dim=1)
            log_scale, shift = self._scale_shift(conditioning, context)
            log_scale, shift = log_scale * (1 - mask), shift * (1 - mask)
            y = x * torch.exp(log_scale) + shift
            return y, log_scale.flatten(1).sum(1)
        conditioning, transformed = self._split(x)
        log_scale, shift = self._scale_shift(conditioning, context)
        y = self._merge(conditioning, transformed * torch.exp(log_scale) + shift)
        return y, log_scale.flatten(1).sum(1)

    def inverse(self, y, context=None):
        if self.mask == "checkerboard":
            mask = checkerboard_mask(*y.shape[-2:], self.parity, y.device).to(y.dtype)
            conditioning = torch.cat([y * mask, mask.expand(y.shape[0], 1, -1, -1)], dim=1)
            log_scale, shift = self._scale_shift(conditioning, context)
            log_scale, shift = log_scale * (1 - mask), shift * (1 - mask)
            return (y - shift) * torch.exp(-log_scale)
        conditioning, transformed = self._split(y)
        log_scale, shift = self._scale_shift(conditioning, context)
        return self._merge(conditioning, (transformed - shift) * torch.exp(-log_scale))
