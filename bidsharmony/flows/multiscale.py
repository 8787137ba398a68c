"""RealNVP/Glow-style multiscale flow for image slices with a standard-normal base."""

from __future__ import annotations

import math

import torch
from torch import nn

from .coupling import AffineCoupling
from .layers import squeeze2d, unsqueeze2d


def realnvp_step_factory(hidden_channels=(16, 32)):
    """Step factory of Harmonizing Flows: checkerboard couplings at the first scale, channel ones after.

    Returns a callable ``factory(channels, scale, step) -> nn.Module`` for :class:`MultiscaleFlow`;
    consecutive steps alternate the mask parity so every pixel/channel gets transformed.
    """

    def factory(channels: int, scale: int, step: int) -> nn.Module:
        mask = "checkerboard" if scale == 0 else "channel"
        return AffineCoupling(channels, mask=mask, parity=step % 2, hidden_channels=hidden_channels)

    return factory


class MultiscaleFlow(nn.Module):
    """Multiscale flow: at each scale ``steps_per_scale`` steps, then squeeze 2x2 and factor out half.

    The first scale runs at the input resolution; between scales the tensor is squeezed
    (4x channels, half the sides) and half of its channels leave as latents (``factor_out``).
    All latents are standard normal. With ``num_scales=3, steps_per_scale=4`` and the default
    factory this is the Harmonizing Flows architecture (4 checkerboard couplings, squeeze,
    4 channel couplings, squeeze, 4 channel couplings), plus factoring out.

    Parameters
    ----------
    in_channels : int
        Image channels.
    num_scales : int
        Scales; image sides must be divisible by ``2 ** (num_scales - 1)``.
    steps_per_scale : int
        Flow steps per scale.
    step_factory : callable, optional
        ``factory(channels, scale, step) -> nn.Module`` building one flow step (any module
        following the flow-layer protocol, e.g. Glow steps); default
        :func:`realnvp_step_factory`.
    factor_out : bool
        Factor out half of the channels after each squeeze (RealNVP); if False, every
        variable flows through all scales (Harmonizing Flows' figure).

    Notes
    -----
    ``forward`` returns the latents flattened and concatenated, shape (B, C*H*W);
    ``inverse`` needs the image shape, taken from the last ``forward`` or given explicitly.
    """

    def __init__(self, in_channels: int = 1, num_scales: int = 3, steps_per_scale: int = 4, step_factory=None,
                 factor_out: bool = True):
        super().__init__()
        step_factory = step_factory or realnvp_step_factory()
        self.in_channels, self.factor_out = int(in_channels), bool(factor_out)
        self.scales = nn.ModuleList()
        channels = self.in_channels
        for scale in range(num_scales):
            if scale:
                channels = channels * 4 // 2 if factor_out else channels * 4
            self.scales.append(nn.ModuleList([step_factory(channels, scale, step) for step in range(steps_per_scale)]))
        self.divisor = 2 ** (num_scales - 1)
        self._image_shape = None

    def _check_shape(self, x):
        if x.dim() != 4 or x.shape[1] != self.in_channels:
            raise ValueError(f"expected images shaped (B, {self.in_channels}, H, W), got {tuple(x.shape)}")
        if x.shape[-1] % self.divisor or x.shape[-2] % self.divisor:
            raise ValueError(f"image sides {tuple(x.shape[-2:])} must be divisible by {self.divisor}")

    def forward_latents(self, x, context=None):
        """``(latents, logdet)``: the list of per-scale latent tensors and log|det dz/dx|."""
        self._check_shape(x)
        self._image_shape = tuple(x.shape[1:])
        logdet = x.new_zeros(x.shape[0])
        latents = []
        for scale, steps in enumerate(self.scales):
            if scale:
                x = squeeze2d(x)
                if self.factor_out:
                    half = x.shape[1] // 2
                    latents.append(x[:, half:])
                    x = x[:, :half]
            for step in steps:
                x, step_logdet = step(x, context=context)
                logdet = logdet + step_logdet
        latents.append(x)
        return latents, logdet

    def forward(self, x, context=None):
        """``(z, logdet)`` with ``z`` the flattened latents, shape (B, C*H*W)."""
        latents, logdet = self.forward_latents(x, context)
        return torch.cat([z.flatten(1) for z in latents], dim=1), logdet

    def _latent_shapes(self, image_shape):
        channels, height, width = image_shape
        shapes = []
        for scale in range(1, len(self.scales)):
            channels, height, width = channels * 4, height // 2, width // 2
            if self.factor_out:
                shapes.append((channels - channels // 2, height, width))
                channels //= 2
        shapes.append((channels, height, width))
        return shapes

    def inverse(self, z, context=None, image_shape=None):
        """Images from flattened latents; ``image_shape`` (C, H, W) defaults to the last forward's."""
        image_shape = tuple(image_shape or self._image_shape or ())
        if len(image_shape) != 3:
            raise ValueError("inverse needs image_shape=(C, H, W) when forward has not been called")
        shapes = self._latent_shapes(image_shape)
        sizes = [math.prod(shape) for shape in shapes]
        latents = [part.reshape(-1, *shape) for part, shape in zip(z.split(sizes, dim=1), shapes)]
        x = latents.pop()
        for scale in range(len(self.scales) - 1, -1, -1):
            for step in reversed(self.scales[scale]):
                x = step.inverse(x, context=context)
            if scale:
                if self.factor_out:
                    x = torch.cat([x, latents.pop()], dim=1)
                x = unsqueeze2d(x)
        return x

    def log_prob(self, x, context=None):
        """Log-density of each image (nats), standard-normal base on every latent element."""
        z, logdet = self(x, context)
        return -0.5 * (z ** 2 + math.log(2 * math.pi)).sum(1) + logdet

    def bits_per_dim(self, x, context=None, num_bins: int | None = 256):
        """Negative log-likelihood in bits per dimension, one value per image.

        ``num_bins`` is the number of intensity levels of [0, 1]-scaled, dequantized data: the
        density is then counted in units of one level (adds ``log(num_bins)`` nats per
        dimension), as in the flow literature; ``None`` reports the raw continuous density.
        """
        dims = math.prod(x.shape[1:])
        nll = -self.log_prob(x, context)
        if num_bins:
            nll = nll + dims * math.log(num_bins)
        return nll / (dims * math.log(2))

    @torch.no_grad()
    def sample(self, num_samples: int, image_shape, temperature: float = 1.0, generator=None, context=None):
        """Draw ``num_samples`` images shaped ``image_shape`` = (C, H, W) (seed via ``generator``)."""
        dims = math.prod(image_shape)
        reference = next(self.parameters())
        z = torch.randn(num_samples, dims, generator=generator, dtype=reference.dtype) * temperature
        return self.inverse(z, context=context, image_shape=image_shape)
