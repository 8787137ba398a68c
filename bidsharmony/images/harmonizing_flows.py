"""Harmonizing Flows: source-free image harmonization guided by a flow prior (Beizaee et al., IPMI 2023).

Three stages, each on 2D brain slices (intensities normalised to [0, 1] inside the mask):

1. **Flow prior** of the reference ("source") site, trained with the guided objective of
   Eq. 4: the negative log-likelihood of reference slices, minus a capped negative
   log-likelihood of *augmented* reference slices (random contrast/gamma, brightness,
   multiplication and monotone intensity maps, kept only if they differ enough from the
   original), so the flow learns what the site's contrast looks like rather than anatomy.
2. **Harmonizer** ``h(x) = alpha * x + beta`` (a U-Net: ``beta`` is its full-size output map,
   ``alpha`` a positive scalar read from the bottleneck), pretrained to undo random
   augmentations of reference slices (Eq. 5).
3. **Test-time adaptation** (Eq. 6): for every target site (or every scan) a copy of the
   harmonizer is updated to maximise the frozen flow's likelihood of its outputs, stopping
   when their bits per dimension reach the reference site's validation value (or after
   ``adaptation_iterations``).

Fitting uses only the reference site's scans (source-free): other sites in the
:class:`~.image_base.ImageSet` are ignored, and sites never seen before are adapted to at
transform time without retraining the flow.

Deviations from the paper, all for CPU practicality or robustness (documented in
:class:`HarmonizingFlows`): smaller networks and slices, uniform (not variational)
dequantization, and the margin ``c`` of Eq. 4 counted in bits per dimension *above the
current source NLL* instead of in absolute units.
"""

from __future__ import annotations

import copy
import logging
import math
import time

import numpy as np

from ..harmonize.errors import HarmonizerInputError, HarmonizerParameterError, TrainingError
from ..harmonize.image_base import ImageHarmonizer, ImageSet, arrays_to_module, module_to_arrays
from ..utils.threads import with_own_threads

from .data import SliceGeometry, denormalize_intensity, normalize_intensity

LOGGER = logging.getLogger("bidsharmony")

ADAPTATION_MODES = ("site", "scan")


# ----------------------------------------------------------------------------- augmentations
def augment_slices(x, brain, generator, dissimilarity_threshold: float = 0.01, max_tries: int = 10):
    """Random intensity augmentations of normalised slices, each far enough from its original.

    Every slice gets a random subset of: a gamma (contrast) change, a random monotone
    piecewise-linear map, a multiplication and a brightness shift, applied inside the brain
    only (the background stays 0). A slice whose mean squared difference to the original
    (inside the brain) stays below ``dissimilarity_threshold`` is drawn again, up to
    ``max_tries`` times (the paper's dissimilarity threshold).

    Parameters
    ----------
    x, brain : torch.Tensor
        (B, 1, H, W) slices in [0, 1] and their brain masks (float 0/1).
    generator : torch.Generator
        Source of randomness (seeded by the caller).

    Returns
    -------
    torch.Tensor
        Augmented slices, same shape, values >= 0.
    """
    import torch

    out = x.clone()
    pending = torch.ones(len(x), dtype=torch.bool)
    voxels = brain.flatten(1).sum(1).clamp_min(1)
    for _ in range(max_tries):
        index = torch.nonzero(pending).flatten()
        if not len(index):
            break
        candidate = _random_intensity_map(x[index], generator)
        candidate = candidate * brain[index]
        distance = ((candidate - x[index]) ** 2 * brain[index]).flatten(1).sum(1) / voxels[index]
        out[index] = candidate
        pending[index] = distance < dissimilarity_threshold
    return out


def _random_intensity_map(x, generator):
    """One random composition of the four augmentation families on each slice of ``x``."""
    import torch

    n = len(x)

    def uniform(low, high, shape=(n, 1, 1, 1)):
        return low + (high - low) * torch.rand(shape, generator=generator)

    def chosen():
        return (torch.rand((n, 1, 1, 1), generator=generator) < 0.5).float()

    y = x.clamp(0, 1)
    # contrast: gamma in [0.5, 2] (log-uniform, so brightening and darkening are equally likely)
    gamma = torch.exp(uniform(math.log(0.5), math.log(2.0)))
    use = chosen()
    y = use * y.clamp_min(1e-6) ** gamma + (1 - use) * y
    # random monotone map: piecewise linear through sorted random knots, half-way blended with the
    # identity so that the map stays plausible for a scanner (no flat or near-vertical stretches)
    knots = 4
    values = torch.sort(torch.rand((n, knots), generator=generator), dim=1).values
    values = torch.cat([torch.zeros(n, 1), values, torch.ones(n, 1)], dim=1)
    position = y.clamp(0, 1) * (knots + 1)
    lower = position.floor().clamp(max=knots).long()
    weight = position - lower
    flat_lower = lower.flatten(1)
    start = torch.gather(values, 1, flat_lower).reshape(y.shape)
    stop = torch.gather(values, 1, (flat_lower + 1).clamp(max=knots + 1)).reshape(y.shape)
    use = chosen()
    y = use * 0.5 * (start + weight * (stop - start) + y) + (1 - use) * y
    # multiplication and brightness
    y = y * (1 + chosen() * uniform(-0.3, 0.3))
    y = y + chosen() * uniform(-0.15, 0.15)
    return y.clamp_min(0)


# ----------------------------------------------------------------------------- harmonizer net
def _build_harmonizer_net(base_channels: int, levels: int):
    """``h(x) = alpha * x + beta``: U-Net output is beta, its bottleneck gives the scalar alpha."""
    import torch
    from torch import nn

    from ..flows.unet import ShallowUNet

    class AffineHarmonizer(nn.Module):
        def __init__(self):
            super().__init__()
            widths = [base_channels * min(2 ** level, 4) for level in range(levels)]
            self.unet = ShallowUNet(1, 1, widths, layers_per_level=2, zero_init=True, normalization=False)
            self.gain = nn.Linear(widths[-1], 1)
            nn.init.zeros_(self.gain.weight)
            nn.init.zeros_(self.gain.bias)  # alpha = exp(0) = 1 and beta = 0: starts as the identity

        def forward(self, x, brain):
            beta, bottleneck = self.unet.forward_with_bottleneck(x)
            alpha = torch.exp(self.gain(bottleneck.mean(dim=(2, 3))))[:, :, None, None]
            return (alpha * x + beta) * brain, alpha, beta

    return AffineHarmonizer()


class HarmonizingFlows(ImageHarmonizer):
    """Harmonizing Flows (Beizaee et al., 2023): flow prior of the reference site + adapted harmonizer.

    Parameters
    ----------
    slice_size : int
        Side of the square 2D slices (cropped to the brain, resampled). Paper: full 2D slices
        (e.g. 256x256); CPU default 32. Must be divisible by ``2 ** max(num_scales - 1,
        harmonizer_levels - 1)``.
    slice_axis : int
        Axis of the template grid the slices are cut along (2: axial in RAS).
    num_scales, steps_per_scale : int
        Flow architecture: checkerboard couplings at the first scale, channel couplings after
        each squeeze (paper: 3 scales of 4 couplings; default 2 x 4).
    flow_channels : int
        Width of the first level of each coupling U-Net (levels: ``c, 2c``; paper: 4 levels).
    flow_epochs : int
        Flow training epochs (paper: 1600 with batch 32 and Adam 1e-3 halved every 200).
    margin : float
        ``c`` of Eq. 4 (paper: 1.2): the augmented slices' NLL is pushed up only until it is
        ``margin`` bits per dimension above the source batch's NLL (see Notes).
    augmented_fraction : float
        Augmented slices per source slice in each flow batch (the paper's N').
    dissimilarity_threshold : float
        Minimum mean squared difference (in [0, 1] units, inside the brain) between an
        augmented slice and its original.
    harmonizer_channels, harmonizer_levels : int
        Harmonizer U-Net: first-level width and levels (paper: 16-32-48-64-64, 5 levels; default
        16-32-64, 3 levels).
    harmonizer_epochs : int
        Pretraining epochs to undo augmentations (paper: 200).
    adaptation : {"site", "scan"}
        Adapt one harmonizer per target site (default; cached, all scans of a site given to
        :meth:`transform` are used together) or per scan.
    adaptation_iterations : int
        Cap of the test-time adaptation steps (Eq. 6).
    adaptation_learning_rate : float
        Adam learning rate of the adaptation.
    batch_size, learning_rate : int, float
        Mini-batch size and Adam learning rate of both training stages.
    validation_fraction : float
        Share of reference scans held out to measure the source bits per dimension that
        stops the adaptation (all scans are used when there are fewer than 3).

    Notes
    -----
    * **Units.** Scans are normalised per scan (robust min-max inside the mask); harmonized
      values are mapped back with the *reference* site's median intensity scale, so outputs
      are in the reference site's units. Voxels outside the brain mask, and brain voxels
      outside the slice slab, keep their input values.
    * **Resolution.** The network works on resampled slices, but only its affine map is sent
      back: ``beta`` is resampled to the native grid and ``alpha * x + beta`` is applied to the
      native-resolution normalised scan, so anatomy is not blurred.
    * **Margin.** Eq. 4's second term is ``min(bpd(aug), bpd(source) + margin)`` with the
      source bpd detached; an absolute cap would depend on how the bpd is offset by
      dequantization and image size.
    * **Dequantization.** Uniform, 256 levels (see :mod:`.flows.dequantization`).
    * **Augmentations.** The paper gives no ranges; ours (gamma 0.5-2, multiplication
      0.7-1.3, brightness +-0.15, a 4-knot monotone map blended half-way with the identity) were
      chosen so the small CPU harmonizer can learn to undo them; stronger ones left it unable
      to leave reference-like scans alone.
    * **Known limitation.** With CPU-size networks the pretrained harmonizer is not the
      identity on reference-site scans (relative RMS change ~0.07-0.09 on test phantoms), and
      the flow's likelihood favours lower contrast, so the bpd stop usually fires after a few
      adaptation steps. Reference-site scans go through the same harmonizer as every other site.
    """

    name = "harmonizing-flows"
    desc = "harmonizingflows"
    output_description = ("T1w image harmonized to the reference site by Harmonizing Flows (flow prior of the "
                          "reference site guiding a test-time adapted harmonizer)")

    def __init__(self, *, slice_size: int = 32, slice_axis: int = 2, num_scales: int = 2, steps_per_scale: int = 4,
                 flow_channels: int = 16, flow_epochs: int = 40, margin: float = 1.2,
                 augmented_fraction: float = 0.5, dissimilarity_threshold: float = 0.01,
                 harmonizer_channels: int = 16, harmonizer_levels: int = 3, harmonizer_epochs: int = 60,
                 adaptation: str = "site", adaptation_iterations: int = 100,
                 adaptation_learning_rate: float = 1e-3, batch_size: int = 16, learning_rate: float = 1e-3,
                 validation_fraction: float = 0.2, reference_site: str | None = None, random_seed: int = 0,
                 num_threads: int = 1):
        super().__init__(reference_site=reference_site, random_seed=random_seed, num_threads=num_threads)
        if adaptation not in ADAPTATION_MODES:
            raise HarmonizerParameterError(f"adaptation={adaptation!r}: use one of {', '.join(ADAPTATION_MODES)}")
        divisor = 2 ** max(int(num_scales) - 1, int(harmonizer_levels) - 1)
        if int(slice_size) < 8 or int(slice_size) % divisor:
            raise HarmonizerParameterError(f"slice_size={slice_size}: give a multiple of {divisor} (>= 8) for "
                                           f"{num_scales} flow scales and {harmonizer_levels} harmonizer levels")
        if not 0 <= float(validation_fraction) < 1:
            raise HarmonizerParameterError(f"validation_fraction={validation_fraction}: give a value in [0, 1)")
        self.slice_size, self.slice_axis = int(slice_size), int(slice_axis)
        self.num_scales, self.steps_per_scale = int(num_scales), int(steps_per_scale)
        self.flow_channels = int(flow_channels)
        self.flow_epochs, self.margin = int(flow_epochs), float(margin)
        self.augmented_fraction = float(augmented_fraction)
        self.dissimilarity_threshold = float(dissimilarity_threshold)
        self.harmonizer_channels, self.harmonizer_levels = int(harmonizer_channels), int(harmonizer_levels)
        self.harmonizer_epochs = int(harmonizer_epochs)
        self.adaptation, self.adaptation_iterations = adaptation, int(adaptation_iterations)
        self.adaptation_learning_rate = float(adaptation_learning_rate)
        self.batch_size, self.learning_rate = int(batch_size), float(learning_rate)
        self.validation_fraction = float(validation_fraction)
        self._adapted = {}

    # ------------------------------------------------------------------ networks
    def _build_flow(self):
        from ..flows.multiscale import MultiscaleFlow, realnvp_step_factory

        factory = realnvp_step_factory(hidden_channels=(self.flow_channels, 2 * self.flow_channels))
        return MultiscaleFlow(1, self.num_scales, self.steps_per_scale, step_factory=factory)

    def _slices(self, image, mask):
        """Normalised volume, its scale, and its (slices, brain) tensors of shape (n, 1, S, S)."""
        import torch

        normalized, scale = normalize_intensity(image, mask)
        slices, brain = self.geometry_.to_brain_slices(normalized, mask)
        return (normalized, scale, torch.from_numpy(slices)[:, None],
                torch.from_numpy(brain.astype(np.float32))[:, None])

    def _bits_per_dim(self, x):
        """Mean bits per dimension of slices under the frozen flow (no dequantization noise)."""
        import torch

        with torch.no_grad():
            return float(torch.cat([self.flow_.bits_per_dim(batch) for batch in x.split(64)]).mean())

    # ------------------------------------------------------------------ fit
    def _fit(self, scans: ImageSet) -> None:
        import torch

        rng = self._seed()
        reference = scans.subset(np.flatnonzero(np.asarray(scans.sites) == self.reference_site_))
        self.geometry_ = SliceGeometry.from_masks(reference.masks, axis=self.slice_axis,
                                                  size=(self.slice_size, self.slice_size))
        prepared = [self._slices(np.asarray(i, np.float32), np.asarray(m, bool))
                    for i, m in zip(reference.images, reference.masks)]
        self.reference_scale_ = [float(v) for v in np.median([p[1] for p in prepared], axis=0)]
        n_validation = int(round(self.validation_fraction * len(prepared))) if len(prepared) >= 3 else 0
        order = rng.permutation(len(prepared))
        validation = [prepared[i] for i in order[:n_validation]] or prepared
        training = [prepared[i] for i in order[n_validation:]]
        x = torch.cat([p[2] for p in training])
        brain = torch.cat([p[3] for p in training])
        if len(x) < 2:
            raise HarmonizerInputError("Harmonizing Flows needs at least two brain slices of the reference site; "
                                       "give more reference scans or a larger slice slab")
        generator = torch.Generator().manual_seed(self.random_seed)
        self.flow_ = self._build_flow()
        self.flow_history_ = self._train_flow(x, brain, generator, rng)
        self.flow_.eval()
        for p in self.flow_.parameters():
            p.requires_grad_(False)
        self.source_bits_per_dim_ = self._bits_per_dim(torch.cat([p[2] for p in validation]))
        self.harmonizer_ = _build_harmonizer_net(self.harmonizer_channels, self.harmonizer_levels)
        self.harmonizer_history_ = self._pretrain_harmonizer(x, brain, generator, rng)
        self._adapted = {}

    def _epochs(self, n, rng):
        """Mini-batch index arrays of one shuffled epoch."""
        order = rng.permutation(n)
        return [order[i:i + self.batch_size] for i in range(0, n, self.batch_size)]

    def _log_epoch(self, stage, epoch, epochs, loss, started):
        if not math.isfinite(loss):
            raise TrainingError(f"Harmonizing Flows {stage} diverged at epoch {epoch + 1}; lower learning_rate")
        left = (time.perf_counter() - started) / (epoch + 1) * (epochs - epoch - 1)
        LOGGER.info("harmonizing-flows %s epoch %d/%d: loss %.4f, %.0f s left", stage, epoch + 1, epochs, loss, left)

    def _train_flow(self, x, brain, generator, rng):
        """Guided flow training (Eq. 4) on reference slices; returns per-epoch source bpd."""
        import torch

        from ..flows.dequantization import uniform_dequantize

        optimizer = torch.optim.Adam(self.flow_.parameters(), lr=self.learning_rate)
        # the paper halves the rate every 1/8 of its 1600 epochs; with the few steps of CPU settings
        # that would stall training, so it is halved only twice
        scheduler = torch.optim.lr_scheduler.StepLR(optimizer, step_size=max(self.flow_epochs // 3, 1), gamma=0.5)
        history, started = [], time.perf_counter()
        self.flow_.train()
        for epoch in range(self.flow_epochs):
            total, count = 0.0, 0
            for index in self._epochs(len(x), rng):
                batch = torch.from_numpy(index)
                source_bpd = self.flow_.bits_per_dim(uniform_dequantize(x[batch], generator=generator))
                loss = source_bpd.mean()
                n_augmented = int(round(self.augmented_fraction * len(batch)))
                if n_augmented and self.margin > 0:
                    chosen = batch[torch.randperm(len(batch), generator=generator)[:n_augmented]]
                    augmented = augment_slices(x[chosen], brain[chosen], generator, self.dissimilarity_threshold)
                    augmented_bpd = self.flow_.bits_per_dim(uniform_dequantize(augmented, generator=generator))
                    cap = source_bpd.mean().detach() + self.margin
                    loss = loss - torch.minimum(augmented_bpd, cap).mean()
                optimizer.zero_grad()
                loss.backward()
                torch.nn.utils.clip_grad_norm_(self.flow_.parameters(), 10.0)
                optimizer.step()
                total += float(source_bpd.detach().sum())
                count += len(batch)
            scheduler.step()
            history.append(total / count)
            self._log_epoch("flow", epoch, self.flow_epochs, history[-1], started)
        return history

    def _pretrain_harmonizer(self, x, brain, generator, rng):
        """Eq. 5: the harmonizer learns to undo random augmentations; returns per-epoch MSE."""
        import torch

        optimizer = torch.optim.Adam(self.harmonizer_.parameters(), lr=self.learning_rate)
        scheduler = torch.optim.lr_scheduler.StepLR(optimizer, step_size=max(self.harmonizer_epochs // 3, 1),
                                                    gamma=0.5)
        history, started = [], time.perf_counter()
        self.harmonizer_.train()
        for epoch in range(self.harmonizer_epochs):
            total, count = 0.0, 0
            for index in self._epochs(len(x), rng):
                batch = torch.from_numpy(index)
                augmented = augment_slices(x[batch], brain[batch], generator, self.dissimilarity_threshold)
                # a quarter of the inputs stay as they are, so reference-like scans are left alone
                keep = (torch.rand((len(batch), 1, 1, 1), generator=generator) < 0.25).float()
                augmented = keep * x[batch] + (1 - keep) * augmented
                restored = self.harmonizer_(augmented, brain[batch])[0]
                loss = ((restored - x[batch]) ** 2).mean()
                optimizer.zero_grad()
                loss.backward()
                optimizer.step()
                total += float(loss.detach()) * len(batch)
                count += len(batch)
            scheduler.step()
            history.append(total / count)
            self._log_epoch("harmonizer", epoch, self.harmonizer_epochs, history[-1], started)
        self.harmonizer_.eval()
        return history

    # ------------------------------------------------------------------ adaptation
    @with_own_threads
    def adapt(self, x, brain):
        """Eq. 6: a copy of the pretrained harmonizer adapted to slices ``x`` (n, 1, S, S).

        Returns
        -------
        harmonizer : torch.nn.Module
            The adapted copy (the pretrained one is left untouched).
        info : dict
            ``bits_per_dim_before`` / ``_after``, ``adaptation_iterations`` and ``stopping_reason``
            (``"reached source bpd"``, ``"max iterations"``).
        """
        import torch

        self._check_fitted()
        torch.manual_seed(self.random_seed)
        harmonizer = copy.deepcopy(self.harmonizer_)
        harmonizer.train()
        optimizer = torch.optim.Adam(harmonizer.parameters(), lr=self.adaptation_learning_rate)
        target = self.source_bits_per_dim_
        with torch.no_grad():
            before = self._bits_per_dim(harmonizer(x, brain)[0])
        reason, iterations, current = "max iterations", 0, before
        for iterations in range(self.adaptation_iterations + 1):
            if current <= target:
                reason = "reached source bpd"
                break
            if iterations == self.adaptation_iterations:
                break
            # full batch: a site's slices are few on CPU settings, and the bpd criterion is per batch
            bpd = self.flow_.bits_per_dim(harmonizer(x, brain)[0]).mean()
            optimizer.zero_grad()
            bpd.backward()
            optimizer.step()
            with torch.no_grad():
                current = self._bits_per_dim(harmonizer(x, brain)[0])
            if (iterations + 1) % 10 == 0:
                LOGGER.info("harmonizing-flows adaptation iteration %d/%d: %.4f bits/dim (stops at %.4f)",
                            iterations + 1, self.adaptation_iterations, current, target)
        harmonizer.eval()
        return harmonizer, {"bits_per_dim_before": before, "bits_per_dim_after": current,
                            "source_bits_per_dim": target, "adaptation_iterations": int(iterations),
                            "stopping_reason": reason}

    def _site_harmonizer(self, site, x, brain):
        """The cached harmonizer of ``site`` (adapting it on ``x`` the first time)."""
        if self.adaptation == "scan":
            return self.adapt(x, brain)
        if site not in self._adapted:
            self._adapted[site] = self.adapt(x, brain)
        return self._adapted[site]

    def transform(self, scans: ImageSet):
        """Harmonize every scan; with ``adaptation="site"`` each site adapts once on all its scans."""
        import torch

        self._check_fitted()
        if self.adaptation == "site":
            for site in sorted(set(scans.sites) - set(self._adapted)):
                rows = np.flatnonzero(np.asarray(scans.sites) == site)
                prepared = [self._slices(np.asarray(scans.images[i], np.float32), np.asarray(scans.masks[i], bool))
                            for i in rows]
                self._adapted[site] = self.adapt(torch.cat([p[2] for p in prepared]),
                                                 torch.cat([p[3] for p in prepared]))
        return super().transform(scans)

    def _transform_scan(self, image, mask, site, covariates):
        import torch

        if list(self.geometry_.size) != [self.slice_size] * 2:  # pragma: no cover - defensive
            raise HarmonizerInputError("slice geometry does not match slice_size; refit the model")
        normalized, scale, x, brain = self._slices(image, mask)
        harmonizer, adaptation = self._site_harmonizer(site, x, brain)
        with torch.no_grad():
            harmonized, alpha, beta = harmonizer(x, brain)
            bits_after = self._bits_per_dim(harmonized)
        # apply the affine map at native resolution: beta resampled back, alpha per slice. beta is
        # only trained inside the brain, so it is resampled as a brain-weighted average (normalised
        # interpolation): values outside the brain would otherwise leak into the brain's edge
        zeros = np.zeros_like(normalized)
        weight = self.geometry_.from_slices(brain[:, 0].numpy(), zeros)
        weighted_beta = self.geometry_.from_slices((beta * brain)[:, 0].numpy(), zeros)
        beta_volume = np.where(weight > 1e-3, weighted_beta / np.maximum(weight, 1e-3), 0.0)
        alpha_volume = self.geometry_.from_slices(
            np.broadcast_to(alpha[:, 0].numpy(), beta[:, 0].shape).astype(np.float32), np.ones_like(normalized))
        result = np.clip(alpha_volume * normalized + beta_volume, 0.0, None)
        out = np.where(mask, denormalize_intensity(result, self.reference_scale_), image).astype(np.float32)
        info = dict(adaptation)
        info.update({"adaptation": self.adaptation, "bits_per_dim_scan": bits_after,
                     "alpha_mean": float(alpha.mean()), "source_scale": list(scale), "reference_scale": list(self.reference_scale_),
                     "slices_harmonized": int(len(x)), "slice_axis": self.slice_axis})
        return out, info

    # ------------------------------------------------------------------ persistence
    def _get_state(self):
        state = {"geometry": self.geometry_.to_dict(), "reference_scale": list(self.reference_scale_),
                 "source_bits_per_dim": self.source_bits_per_dim_, "flow_history": list(self.flow_history_),
                 "harmonizer_history": list(self.harmonizer_history_)}
        arrays = {**module_to_arrays(self.flow_, "flow"), **module_to_arrays(self.harmonizer_, "harmonizer")}
        return state, arrays

    def _set_state(self, state, arrays):
        self.geometry_ = SliceGeometry.from_dict(state["geometry"])
        self.reference_scale_ = [float(v) for v in state["reference_scale"]]
        self.source_bits_per_dim_ = float(state["source_bits_per_dim"])
        self.flow_history_ = list(state["flow_history"])
        self.harmonizer_history_ = list(state["harmonizer_history"])
        self.flow_ = self._build_flow()
        arrays_to_module(self.flow_, "flow", arrays)
        self.flow_.eval()
        for p in self.flow_.parameters():
            p.requires_grad_(False)
        self.harmonizer_ = _build_harmonizer_net(self.harmonizer_channels, self.harmonizer_levels)
        arrays_to_module(self.harmonizer_, "harmonizer", arrays)
        self.harmonizer_.eval()
        self._adapted = {}
