"""BlindHarmony: blind harmonization with a flow prior of the reference site only.

Jeong et al., "BlindHarmony: 'Blind' Harmonization for MR Images via Flow Model", ICCV 2023.

A normalizing flow (NSF-Glow, :mod:`bidsharmony.flows.glow`) learns the density of
the reference site's 2D slices. A slice ``x_s`` of any other site — also one never seen during
fitting, since the method never needs its data — is harmonized by Algorithm 1 of the paper,
starting from the mean training slice ``x_0`` and alternating, for ``N`` iterations::

    x <- f^-1(z) + beta1 * grad NCC(x, x_s) - beta2 * grad sum(M * |G x|)   (stay close to x_s)
    z <- (1 - alpha) * f(x)                                                 (move towards the prior)

``f`` maps images to latents, ``NCC`` is the normalised cross-correlation, ``G`` the image
gradient and ``M`` the non-edge mask (pixels where the source gradient is below the
``edge_quantile`` of its in-brain values). Shrinking ``z`` raises the flow likelihood, i.e.
makes the slice look more like the reference site; the NCC and edge terms keep its anatomy.

Two choices the paper leaves open: ``beta1`` is rescaled by the slice's pixel count relative to
192 × 192 (NCC gradients shrink with image size, so the paper's 1000 would blow up on small
CPU slices), and each iterate is clipped to the normalised range [0, 1] (without it a few
voxels whose latents leave the training distribution were amplified by ``f^-1`` to ~20×).

Intensity units: slices are normalised to [0, 1] inside the brain (robust 0.5–99.5 percentiles
per volume, :func:`~.data.normalize_intensity`) and cut by a
:class:`~.data.SliceGeometry`. The harmonized volume is expressed in the reference site's units by mapping [0, 1]
back with the median percentile scale of the reference scans seen in fit. Only the correction
``x_h - x_s`` is resampled back from the slice grid to the volume, so no resolution is lost;
voxels outside the brain mask keep their input values.
"""

from __future__ import annotations

import logging
import math
import time

import numpy as np

from ..harmonize.errors import HarmonizerInputError, HarmonizerParameterError
from ..harmonize.image_base import ImageHarmonizer, ImageSet, arrays_to_module, module_to_arrays
from ..utils.threads import with_own_threads
from .data import SliceGeometry, denormalize_intensity, normalize_intensity

LOGGER = logging.getLogger("bidsharmony")

#: pixels of the paper's slices (192 × 192 at 1.2 mm), the size its beta1 = 1000 was tuned on
PAPER_SLICE_PIXELS = 192 * 192


# ----------------------------------------------------------------------------- algorithm terms
def normalized_cross_correlation(x, y):
    """NCC of each image pair of two (B, 1, H, W) tensors, shape (B,)."""
    x = x.flatten(1) - x.flatten(1).mean(1, keepdim=True)
    y = y.flatten(1) - y.flatten(1).mean(1, keepdim=True)
    return (x * y).sum(1) / (x.norm(dim=1) * y.norm(dim=1)).clamp_min(1e-8)


def gradient_magnitude(x):
    """|G x| by forward differences (zero at the last row/column), same shape as ``x``."""
    import torch.nn.functional as F

    dy = F.pad(x[..., 1:, :] - x[..., :-1, :], (0, 0, 0, 1))
    dx = F.pad(x[..., :, 1:] - x[..., :, :-1], (0, 1, 0, 0))
    return (dx ** 2 + dy ** 2 + 1e-12).sqrt()


def non_edge_mask(source, brain, edge_quantile=0.75):
    """M: 1 where the source gradient is below its ``edge_quantile`` inside the brain, else 0."""
    import torch

    grad = gradient_magnitude(source)
    mask = torch.ones_like(source)
    for k in range(source.shape[0]):
        inside = grad[k][brain[k] > 0]
        if inside.numel():
            mask[k] = (grad[k] < torch.quantile(inside, edge_quantile)).float()
    return mask


def blind_harmonize_slices(flow, source, start, brain=None, alpha=0.001, beta1=1000.0, beta2=0.001,
                           num_iterations=10, edge_quantile=0.75):
    """Algorithm 1 of BlindHarmony on a batch of slices.

    Parameters
    ----------
    flow : torch.nn.Module
        Trained flow in eval mode, ``flow(x) -> (z, logdet)`` and ``flow.inverse(z)``.
    source : torch.Tensor
        (B, 1, H, W) normalised source slices ``x_s``.
    start : torch.Tensor
        (B, 1, H, W) initial images ``x_0`` (the mean training slices).
    brain : torch.Tensor, optional
        (B, 1, H, W) brain masks; the edge threshold is taken inside them (whole slice if None).
    alpha, beta1, beta2, num_iterations, edge_quantile
        Algorithm 1's prior weight, NCC and edge step sizes, iterations, and non-edge threshold.

    Returns
    -------
    x : torch.Tensor
        The harmonized slices.
    terms : dict
        Per-slice final NCC with the source and edge term ``sum(M |G x|)`` (numpy arrays).
    """
    import torch

    brain = torch.ones_like(source) if brain is None else brain
    # NCC's gradient per pixel shrinks like 1 / (H * W); rescale so beta1 means the same per-pixel
    # step as on the paper's slices, whatever the slice size here
    beta1 = beta1 * source[0].numel() / PAPER_SLICE_PIXELS
    mask = non_edge_mask(source, brain, edge_quantile)
    x = start.clone()  # N = 0 returns the mean image
    with torch.no_grad():
        z = flow(start)[0]
    for _ in range(int(num_iterations)):
        with torch.no_grad():
            x = flow.inverse(z)
        x = x.detach().requires_grad_(True)
        ncc = normalized_cross_correlation(x, source).sum()
        edge = (mask * gradient_magnitude(x)).flatten(1).sum(1).sum()
        grad_ncc = torch.autograd.grad(ncc, x, retain_graph=True)[0]
        grad_edge = torch.autograd.grad(edge, x)[0]
        # project onto the normalised intensity range: a step that leaves it sends f(x) far from
        # the training latents, where f^-1 amplifies a few voxels by orders of magnitude
        x = (x + beta1 * grad_ncc - beta2 * grad_edge).detach().clamp(0.0, 1.0)
        with torch.no_grad():
            z = (1.0 - alpha) * flow(x)[0]
    with torch.no_grad():
        terms = {"ncc": normalized_cross_correlation(x, source).numpy(),
                 "edge": (mask * gradient_magnitude(x)).flatten(1).sum(1).numpy()}
    return x, terms


def lowfrequency_replacement(source, reference, cutoff=0.1):
    """SSIMH-like baseline: swap the source's low spatial frequencies for the reference's.

    Parameters
    ----------
    source, reference : numpy.ndarray
        2D slices (or stacks ``(..., H, W)``) on the same grid, same intensity scale.
    cutoff : float
        Radius of the low-frequency disc, as a fraction of the Nyquist frequency.

    Returns
    -------
    numpy.ndarray
        ``source`` with the frequencies below ``cutoff`` taken from ``reference``.
    """
    source = np.asarray(source, dtype=np.float64)
    reference = np.broadcast_to(np.asarray(reference, dtype=np.float64), source.shape)
    fy = np.fft.fftfreq(source.shape[-2])[:, None] / 0.5
    fx = np.fft.fftfreq(source.shape[-1])[None, :] / 0.5
    low = np.hypot(fy, fx) <= cutoff
    spectrum = np.fft.fft2(source)
    spectrum[..., low] = np.fft.fft2(reference)[..., low]
    return np.real(np.fft.ifft2(spectrum)).astype(np.float32)


# ----------------------------------------------------------------------------- harmonizer
class BlindHarmony(ImageHarmonizer):
    """Blind harmonization to the reference site with an NSF-Glow prior (Jeong et al. 2023).

    Parameters
    ----------
    slice_size : int
        Side of the square slices the flow models (divisible by ``2 ** levels``).
    slice_axis : int
        Grid axis the slices are taken across (2: axial on a RAS grid).
    levels, steps_per_level, hidden_channels, num_blocks, num_bins, tail_bound
        NSF-Glow size (paper: 4 levels × 7 steps, 3 residual blocks; CPU default: 2 × 2, 1).
    epochs, batch_size, learning_rate
        Adam with cosine annealing of the learning rate (paper: 5e-4).
    noise_std
        Gaussian noise added to training slices (dequantization; the background is constant).
    alpha, beta1, beta2, num_iterations, edge_quantile
        Algorithm 1 (paper: 0.001, 1000, 0.001, 10; the non-edge threshold is not given there).
    reference_site, random_seed, num_threads
        See :class:`~bidsharmony.harmonize.image_base.ImageHarmonizer`.
    """

    name = "blindharmony"
    desc = "blindharmony"
    output_description = ("T1w image harmonized blindly to the reference site with a flow prior of its slices "
                          "(BlindHarmony, Jeong et al. 2023), in the reference site's intensity units")

    def __init__(self, *, slice_size: int = 32, slice_axis: int = 2, levels: int = 2, steps_per_level: int = 2,
                 hidden_channels: int = 32, num_blocks: int = 1, num_bins: int = 8, tail_bound: float = 4.0,
                 epochs: int = 30, batch_size: int = 16, learning_rate: float = 5e-4, noise_std: float = 0.01,
                 alpha: float = 0.001, beta1: float = 1000.0, beta2: float = 0.001, num_iterations: int = 10,
                 edge_quantile: float = 0.75, reference_site: str | None = None, random_seed: int = 0,
                 num_threads: int = 1):
        super().__init__(reference_site=reference_site, random_seed=random_seed, num_threads=num_threads)
        if slice_size % (2 ** levels):
            raise HarmonizerParameterError(
                f"slice_size={slice_size} is not divisible by 2**levels={2 ** levels}; pick e.g. {32 * 2 ** max(levels - 5, 0)}")
        if not 0 <= alpha < 1 or num_iterations < 0 or not 0 < edge_quantile <= 1:
            raise HarmonizerParameterError("alpha must be in [0, 1), num_iterations >= 0 and edge_quantile in (0, 1]; "
                                           "fix the BlindHarmony settings")
        self.slice_size, self.slice_axis = int(slice_size), int(slice_axis)
        self.levels, self.steps_per_level = int(levels), int(steps_per_level)
        self.hidden_channels, self.num_blocks, self.num_bins = int(hidden_channels), int(num_blocks), int(num_bins)
        self.tail_bound = float(tail_bound)
        self.epochs, self.batch_size, self.learning_rate = int(epochs), int(batch_size), float(learning_rate)
        self.noise_std = float(noise_std)
        self.alpha, self.beta1, self.beta2 = float(alpha), float(beta1), float(beta2)
        self.num_iterations, self.edge_quantile = int(num_iterations), float(edge_quantile)

    def _build_flow(self):
        from ..flows.glow import build_nsf_glow

        return build_nsf_glow(1, self.levels, self.steps_per_level, self.hidden_channels, self.num_blocks,
                              self.num_bins, self.tail_bound, self.random_seed)

    def _slices(self, image, mask):
        normalized, scale = normalize_intensity(image, mask)
        # not zeroed outside the resampled brain: the brain's edge pixels keep their blend with the
        # background, which Algorithm 1 harmonizes better (~0.2 dB on the test phantoms)
        brain = self.geometry_.to_slices(mask.astype(np.float32)) > 0.5
        return normalized, scale, self.geometry_.to_slices(normalized), brain

    # ------------------------------------------------------------------ fit
    def _fit(self, scans: ImageSet) -> None:
        import torch

        rng = self._seed()
        reference = scans.subset(np.asarray(scans.sites) == self.reference_site_)
        self.geometry_ = SliceGeometry.from_masks(reference.masks, axis=self.slice_axis, size=(self.slice_size,) * 2)
        slices, scales = [], []
        for image, mask in zip(reference.images, reference.masks):
            _, scale, s, _ = self._slices(np.asarray(image, np.float32), np.asarray(mask, bool))
            slices.append(s)
            scales.append(scale)
        slices = np.stack(slices)  # (scans, slices, H, W)
        self.reference_scale_ = tuple(float(v) for v in np.median(np.asarray(scales), axis=0))
        self.mean_slices_ = slices.mean(0).astype(np.float32)
        data = torch.from_numpy(slices.reshape(-1, 1, self.slice_size, self.slice_size))
        if len(data) < 2:
            raise HarmonizerInputError("BlindHarmony needs at least two brain slices of the reference site; "
                                       "give more reference scans or a larger slice slab")
        self.flow_ = self._build_flow()
        optimizer = torch.optim.Adam(self.flow_.parameters(), lr=self.learning_rate)
        batches = math.ceil(len(data) / self.batch_size)
        scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=max(self.epochs * batches, 1))
        generator = torch.Generator().manual_seed(self.random_seed)
        dims = data[0].numel()
        self.history_ = []
        started = time.perf_counter()
        self.flow_.train()
        with torch.no_grad():  # actnorm's data-dependent initialisation on a large batch
            self.flow_(data[torch.randperm(len(data), generator=generator)[:256]])
        for epoch in range(self.epochs):
            order = torch.from_numpy(rng.permutation(len(data)))
            total = 0.0
            for b in range(batches):
                batch = data[order[b * self.batch_size:(b + 1) * self.batch_size]]
                if len(batch) < 2:  # batch norm needs two samples
                    continue
                batch = batch + self.noise_std * torch.randn(batch.shape, generator=generator)
                loss = -self.flow_.log_prob(batch).mean() / dims
                optimizer.zero_grad()
                loss.backward()
                torch.nn.utils.clip_grad_norm_(self.flow_.parameters(), 10.0)
                optimizer.step()
                scheduler.step()
                total += float(loss.detach()) * len(batch)
            bits = total / len(data) / math.log(2)
            if not math.isfinite(bits):
                from ..harmonize.errors import TrainingError

                raise TrainingError(f"BlindHarmony flow diverged at epoch {epoch + 1}; lower learning_rate")
            self.history_.append(bits)
            elapsed = time.perf_counter() - started
            LOGGER.info("blindharmony epoch %d/%d: %.4f bits/dim, %.0f s left", epoch + 1, self.epochs, bits,
                        elapsed / (epoch + 1) * (self.epochs - epoch - 1))
        self.flow_.eval()

    # ------------------------------------------------------------------ transform
    def _bits_per_dim(self, x):
        import torch

        with torch.no_grad():
            return float(-self.flow_.log_prob(x).mean() / x[0].numel() / math.log(2))

    @with_own_threads
    def harmonize_slices(self, source, brain=None):
        """Algorithm 1 on normalised slices ``(n, H, W)`` of this grid; returns (slices, info)."""
        import torch

        x_s = torch.from_numpy(np.asarray(source, np.float32))[:, None]
        brain_t = None if brain is None else torch.from_numpy(np.asarray(brain, np.float32))[:, None]
        start = torch.from_numpy(self.mean_slices_)[:, None]
        if start.shape != x_s.shape:
            raise HarmonizerInputError(f"{len(x_s)} slices of {tuple(x_s.shape[-2:])} given, the model has "
                                       f"{tuple(start.shape)}; use the model's slice grid")
        x, terms = blind_harmonize_slices(self.flow_, x_s, start, brain_t, self.alpha, self.beta1, self.beta2,
                                          self.num_iterations, self.edge_quantile)
        info = {"ncc_with_source": float(np.mean(terms["ncc"])), "ncc_with_source_min": float(np.min(terms["ncc"])),
                "edge_term": float(np.mean(terms["edge"])),
                "bits_per_dim_before": self._bits_per_dim(x_s), "bits_per_dim_after": self._bits_per_dim(x)}
        return x[:, 0].detach().numpy(), info

    def _transform_scan(self, image, mask, site, covariates):
        normalized, scale, slices, brain = self._slices(image, mask)
        harmonized, info = self.harmonize_slices(slices, brain)
        # resample only the correction back to the volume, so anatomy keeps the full resolution
        correction = self.geometry_.from_slices(harmonized - slices, np.zeros_like(normalized))
        result = np.clip(normalized + correction, 0.0, None)
        out = np.where(mask, denormalize_intensity(result, self.reference_scale_), image).astype(np.float32)
        info.update({"source_scale": list(scale), "reference_scale": list(self.reference_scale_),
                     "slices_harmonized": int(len(slices)), "slice_axis": self.slice_axis,
                     "iterations": self.num_iterations})
        return out, info

    # ------------------------------------------------------------------ persistence
    def _get_state(self):
        state = {"geometry": self.geometry_.to_dict(), "reference_scale": list(self.reference_scale_),
                 "history_bits_per_dim": list(self.history_)}
        arrays = {"mean_slices": self.mean_slices_, **module_to_arrays(self.flow_, "flow")}
        return state, arrays

    def _set_state(self, state, arrays):
        self.geometry_ = SliceGeometry.from_dict(state["geometry"])
        self.reference_scale_ = tuple(float(v) for v in state["reference_scale"])
        self.history_ = list(state.get("history_bits_per_dim", []))
        self.mean_slices_ = np.asarray(arrays["mean_slices"], dtype=np.float32)
        self.flow_ = self._build_flow()
        arrays_to_module(self.flow_, "flow", arrays)
        self.flow_.eval()
