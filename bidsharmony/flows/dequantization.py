"""Dequantization of [0, 1] images before a continuous flow.

The default (and for now only) scheme is uniform dequantization: each intensity is
snapped to one of ``num_bins`` levels and uniform noise of one level's width is added,
so the flow never sees a distribution concentrated on a grid. The bits-per-dimension of
:meth:`~.multiscale.MultiscaleFlow.bits_per_dim` with the same ``num_bins`` is then the
usual discrete-likelihood bound. Variational dequantization (Flow++, used by Harmonizing
Flows) is not implemented yet: on resampled MRI slices the intensities are already
continuous and uniform dequantization suffices at the model sizes we train on CPU.
"""

from __future__ import annotations

import torch


def uniform_dequantize(x: torch.Tensor, num_bins: int = 256, generator: torch.Generator | None = None) -> torch.Tensor:
    """``(floor(x * (num_bins - 1) + 0.5) + u) / num_bins`` with ``u ~ U[0, 1)``, for ``x`` in [0, 1]."""
    levels = torch.round(x.clamp(0, 1) * (num_bins - 1))
    noise = torch.rand(x.shape, generator=generator, dtype=x.dtype, device=x.device)
    return (levels + noise) / num_bins
