"""Glow-like flow steps with rational-quadratic spline couplings (NSF-Glow).

BlindHarmony (Jeong et al., ICCV 2023) models the reference site's slices with a Glow-like
multi-scale flow whose steps are: actnorm, invertible 1×1 convolution, rational-quadratic
(RQ) spline coupling and another 1×1 convolution (the paper uses 4 levels × 7 steps and three
residual blocks with batch normalisation in each spline conditioner). Every layer follows the
flow-layer protocol of :mod:`bidsharmony.flows`::

    y, logdet = layer(x)            # logdet: one value per sample, log|det dy/dx|
    x = layer.inverse(y)

The spline itself is nflows' ``unconstrained_rational_quadratic_spline`` with linear tails,
so inputs outside ``[-tail_bound, tail_bound]`` pass through unchanged instead of raising
``InputOutsideDomain``.
"""

from __future__ import annotations

import math

import torch
from torch import nn
from nflows.transforms.splines.rational_quadratic import unconstrained_rational_quadratic_spline

from .layers import SequentialFlow, squeeze2d, unsqueeze2d

__all__ = ["ActNorm", "GlowStep", "InvertibleConv1x1", "NSFGlow", "RQSplineCoupling", "ResidualBlock",
           "build_nsf_glow", "squeeze2d", "unsqueeze2d"]


class ActNorm(nn.Module):
    """Per-channel affine normalisation, initialised from the first batch it sees.

    The data-dependent initialisation gives zero mean and unit variance per channel on that
    batch, which keeps the splines' inputs inside their tail bound from the first step on.
    """

    def __init__(self, channels: int):
        super().__init__()
        self.bias = nn.Parameter(torch.zeros(1, channels, 1, 1))
        self.log_scale = nn.Parameter(torch.zeros(1, channels, 1, 1))
        self.register_buffer("initialized", torch.tensor(0, dtype=torch.uint8))

    @torch.no_grad()
    def _initialize(self, x):
        mean = x.mean(dim=(0, 2, 3), keepdim=True)
        std = x.std(dim=(0, 2, 3), keepdim=True).clamp_min(1e-6)
        self.bias.data.copy_(-mean / std)
        self.log_scale.data.copy_(-torch.log(std))
        self.initialized.fill_(1)

    def forward(self, x, context=None):
        if not self.initialized:
            self._initialize(x)
        y = x * torch.exp(self.log_scale) + self.bias
        logdet = self.log_scale.sum() * x.shape[2] * x.shape[3]
        return y, logdet.expand(x.shape[0])

    def inverse(self, y, context=None):
        return (y - self.bias) * torch.exp(-self.log_scale)


class InvertibleConv1x1(nn.Module):
    """Invertible 1×1 convolution with an LU-decomposed weight (Glow).

    ``W = P · (L + I) · (U + diag(sign · exp(log_s)))`` with a fixed permutation ``P``, so the
    log-determinant is ``H · W · Σ log_s`` at no cost.
    """

    def __init__(self, channels: int, generator: torch.Generator | None = None):
        super().__init__()
        weight = torch.linalg.qr(torch.randn(channels, channels, generator=generator))[0]
        P, L, U = torch.linalg.lu(weight)
        diagonal = torch.diagonal(U)
        self.register_buffer("permutation", P)
        self.register_buffer("sign_s", torch.sign(diagonal))
        self.register_buffer("lower_mask", torch.tril(torch.ones(channels, channels), -1))
        self.register_buffer("identity", torch.eye(channels))
        self.lower = nn.Parameter(L * self.lower_mask)
        self.upper = nn.Parameter(torch.triu(U, 1))
        self.log_s = nn.Parameter(torch.log(diagonal.abs()))

    def weight(self):
        lower = self.lower * self.lower_mask + self.identity
        upper = self.upper * self.lower_mask.T + torch.diag(self.sign_s * torch.exp(self.log_s))
        return self.permutation @ lower @ upper

    def forward(self, x, context=None):
        y = torch.einsum("ij,bjhw->bihw", self.weight(), x)
        logdet = self.log_s.sum() * x.shape[2] * x.shape[3]
        return y, logdet.expand(x.shape[0])

    def inverse(self, y, context=None):
        return torch.einsum("ij,bjhw->bihw", torch.linalg.inv(self.weight()), y)


class ResidualBlock(nn.Module):
    """BatchNorm → ReLU → 3×3 conv, twice, plus the identity."""

    def __init__(self, channels: int):
        super().__init__()
        self.net = nn.Sequential(
            nn.BatchNorm2d(channels), nn.ReLU(), nn.Conv2d(channels, channels, 3, padding=1),
            nn.BatchNorm2d(channels), nn.ReLU(), nn.Conv2d(channels, channels, 3, padding=1),
        )

    def forward(self, x):
        return x + self.net(x)


class RQSplineCoupling(nn.Module):
    """Affine-free coupling: the second channel half goes through RQ splines set by the first.

    Parameters
    ----------
    channels : int
        Input channels (at least 2).
    hidden_channels : int
        Width of the residual conditioner.
    num_blocks : int
        Residual blocks in the conditioner (paper: 3).
    num_bins : int
        Spline bins.
    tail_bound : float
        Splines act on ``[-tail_bound, tail_bound]``; outside it the map is the identity.
    """

    def __init__(self, channels: int, hidden_channels: int = 32, num_blocks: int = 1, num_bins: int = 8,
                 tail_bound: float = 4.0):
        super().__init__()
        if channels < 2:
            raise ValueError("a coupling layer needs at least two channels; squeeze the input first")
        self.identity_channels = channels // 2
        self.transform_channels = channels - self.identity_channels
        self.num_bins = num_bins
        self.tail_bound = float(tail_bound)
        out = self.transform_channels * (3 * num_bins - 1)
        last = nn.Conv2d(hidden_channels, out, 3, padding=1)
        # zero-initialised output: every coupling starts as the identity, which stabilises training
        nn.init.zeros_(last.weight)
        nn.init.zeros_(last.bias)
        self.conditioner = nn.Sequential(
            nn.Conv2d(self.identity_channels, hidden_channels, 3, padding=1),
            *[ResidualBlock(hidden_channels) for _ in range(num_blocks)],
            nn.BatchNorm2d(hidden_channels), nn.ReLU(), last,
        )

    def _spline(self, x_identity, x_transform, inverse):
        b, c, h, w = x_transform.shape
        params = self.conditioner(x_identity).reshape(b, c, 3 * self.num_bins - 1, h, w).permute(0, 1, 3, 4, 2)
        widths = params[..., : self.num_bins]
        heights = params[..., self.num_bins: 2 * self.num_bins]
        derivatives = params[..., 2 * self.num_bins:]
        return unconstrained_rational_quadratic_spline(
            x_transform, widths, heights, derivatives, inverse=inverse, tails="linear", tail_bound=self.tail_bound)

    def forward(self, x, context=None):
        x_identity, x_transform = x[:, : self.identity_channels], x[:, self.identity_channels:]
        y, logabsdet = self._spline(x_identity, x_transform, inverse=False)
        return torch.cat([x_identity, y], dim=1), logabsdet.flatten(1).sum(1)

    def inverse(self, y, context=None):
        y_identity, y_transform = y[:, : self.identity_channels], y[:, self.identity_channels:]
        x, _ = self._spline(y_identity, y_transform, inverse=True)
        return torch.cat([y_identity, x], dim=1)


class GlowStep(SequentialFlow):
    """actnorm → 1×1 conv → RQ spline coupling → 1×1 conv (the NSF-Glow step of BlindHarmony)."""

    def __init__(self, channels: int, hidden_channels: int = 32, num_blocks: int = 1, num_bins: int = 8,
                 tail_bound: float = 4.0, generator: torch.Generator | None = None):
        super().__init__([
            ActNorm(channels),
            InvertibleConv1x1(channels, generator),
            RQSplineCoupling(channels, hidden_channels, num_blocks, num_bins, tail_bound),
            InvertibleConv1x1(channels, generator),
        ])


class NSFGlow(nn.Module):
    """Multi-scale NSF-Glow: per level squeeze, ``steps_per_level`` steps, factor out half.

    The latent ``z`` has the shape of the input (factored-out channels are put back in place
    by unsqueezing), which is what BlindHarmony's alternating x/z iteration needs. The prior
    is a standard normal on every latent element.

    Parameters
    ----------
    in_channels : int
        Image channels (1 for T1w slices).
    levels : int
        Scales (paper: 4). Image sides must be divisible by ``2 ** levels``.
    steps_per_level : int
        Glow steps per scale (paper: 7).
    hidden_channels, num_blocks, num_bins, tail_bound
        Spline coupling settings (see :class:`RQSplineCoupling`).
    random_seed : int
        Seeds the random orthogonal initialisation of the 1×1 convolutions.
    """

    def __init__(self, in_channels: int = 1, levels: int = 2, steps_per_level: int = 2, hidden_channels: int = 32,
                 num_blocks: int = 1, num_bins: int = 8, tail_bound: float = 4.0, random_seed: int = 0):
        super().__init__()
        generator = torch.Generator().manual_seed(int(random_seed))
        self.levels = nn.ModuleList()
        channels = in_channels
        for level in range(levels):
            channels *= 4
            self.levels.append(nn.ModuleList([
                GlowStep(channels, hidden_channels, num_blocks, num_bins, tail_bound, generator)
                for _ in range(steps_per_level)]))
            if level < levels - 1:
                channels //= 2
        self.divisor = 2 ** levels

    def _forward_level(self, k, x):
        x = squeeze2d(x)
        logdet = x.new_zeros(x.shape[0])
        for step in self.levels[k]:
            x, ld = step(x)
            logdet = logdet + ld
        if k < len(self.levels) - 1:
            half = x.shape[1] // 2
            inner, ld = self._forward_level(k + 1, x[:, :half])
            x = torch.cat([inner, x[:, half:]], dim=1)
            logdet = logdet + ld
        return unsqueeze2d(x), logdet

    def _inverse_level(self, k, z):
        z = squeeze2d(z)
        if k < len(self.levels) - 1:
            half = z.shape[1] // 2
            z = torch.cat([self._inverse_level(k + 1, z[:, :half]), z[:, half:]], dim=1)
        for step in reversed(self.levels[k]):
            z = step.inverse(z)
        return unsqueeze2d(z)

    def forward(self, x, context=None):
        """``(z, logdet)``: latent of the input's shape and log|det dz/dx| per sample."""
        if x.shape[-1] % self.divisor or x.shape[-2] % self.divisor:
            raise ValueError(f"image sides {tuple(x.shape[-2:])} must be divisible by {self.divisor}")
        return self._forward_level(0, x)

    def inverse(self, z, context=None):
        return self._inverse_level(0, z)

    def log_prob(self, x):
        """Log-density of each sample under the flow (nats, standard-normal prior on z)."""
        z, logdet = self(x)
        prior = -0.5 * (z ** 2 + math.log(2 * math.pi)).flatten(1).sum(1)
        return prior + logdet


def build_nsf_glow(in_channels: int = 1, levels: int = 2, steps_per_level: int = 2, hidden_channels: int = 32,
                   num_blocks: int = 1, num_bins: int = 8, tail_bound: float = 4.0, random_seed: int = 0) -> NSFGlow:
    """The NSF-Glow of BlindHarmony; the paper's setting is ``levels=4, steps_per_level=7, num_blocks=3``.

    The CPU defaults are much smaller (2 × 2 steps, 1 block) so that a model trains in minutes.
    """
    return NSFGlow(in_channels, levels, steps_per_level, hidden_channels, num_blocks, num_bins, tail_bound,
                   random_seed)
