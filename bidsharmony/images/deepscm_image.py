"""Image counterfactuals with a deep structural causal model (Pawlowski et al. 2020, App. B).

Graph (the paper's brain case plus the acquisition site)::

    age a, sex s, site t                       roots
    brain volume     b := f_b(eps_b; s, a)     invertible explicit flow (scm/ FlowMechanism)
    ventricle volume v := f_v(eps_v; a, b)     invertible explicit flow (scm/ FlowMechanism)
    image            x := h(u; g(z; a, s, b, v, t))   amortised, explicit mechanism

The scalar mechanisms are the flow-SCM core's :class:`~bidsharmony.scm.model.FlowSCM`
(log-scale, affine normalisation, conditional linear spline). The image mechanism is a
conditional VAE-style decoder ``g`` (high-level noise ``z ~ N(0, I)``) whose output is the
location and log-scale of a diagonal Gaussian ``h`` (low-level noise ``u``): ``x = loc + scale
* u``. An encoder ``e(x, parents)`` gives the variational posterior of ``z``; everything is
trained by the ELBO (Eq. 3).

Counterfactuals follow abduction–action–prediction: ``z`` is the encoder mean, ``u`` is
recovered exactly by inverting ``h``, the scalar noises exactly by inverting their flows; the
intervened values replace the observed ones and every descendant is recomputed through its
mechanism (``do(a)`` changes ``b``, ``v`` and then ``x``).

How strongly the image follows its parents: with exact abduction of ``u``, a counterfactual
changes the image by ``loc(z, new parents) - loc(z, parents)`` (scaled), so the decoder must use
its parents rather than ``z``. The parents are therefore concatenated as maps before every decoder
layer (``decoder_conditioning="all"``); on the template-space benchmark this made do(age + 10)
darken the ventricle region in more scans, and by more, than parents at the input only (clearly
after short training, modestly after long training). A KL weight above 1, a higher floor of the
scale of ``h`` and an auxiliary parents-only likelihood (``kl_weight``, ``min_log_scale``,
``parent_weight``) are available but off by default: they did not help reliably there
(BENCHMARKS.md).

What is 2D-only: the model works on ``n_slices`` axial slices through the middle of the brain
mask (the ventricles), or the slices ``slab`` names, cropped to the brain and resampled to ``slice_size``
(:class:`~.data.SliceGeometry`), intensities scaled to [0, 1] inside the brain
(:func:`~.data.normalize_intensity`). A harmonized
volume is the input volume with those slices replaced inside the brain mask; every other voxel
keeps the input's values (and units). Brain and ventricle volumes come from the covariate
columns ``brain_volume`` / ``ventricle_volume`` when present; otherwise the brain volume is
the mask volume and the ventricle volume is the volume of dark (CSF-like, normalised intensity
below ``csf_threshold``) voxels in the central box of the brain (middle third in every
direction) — a crude proxy, documented as such.
"""

from __future__ import annotations

import logging
import time

import numpy as np
import pandas as pd

from ..harmonize.errors import HarmonizerInputError, HarmonizerParameterError, ModelFileError
from ..harmonize.image_base import ImageHarmonizer, ImageSet, arrays_to_module, module_to_arrays
from .data import SliceGeometry, denormalize_intensity, normalize_intensity

LOGGER = logging.getLogger("bidsharmony")

SCALAR_NODES = ("age", "sex", "site", "brain_volume", "ventricle_volume")
_LOG_2PI = float(np.log(2 * np.pi))


# ---------------------------------------------------------------------- volume proxies
def measure_volumes(image, mask, voxel_volume=1.0, csf_threshold=0.3) -> tuple[float, float]:
    """Brain volume (mask) and a ventricle proxy (dark voxels in the central third), in mm^3."""
    mask = np.asarray(mask, bool)
    normalized = normalize_intensity(image, mask)[0]
    idx = np.nonzero(mask)
    central = np.zeros_like(mask)
    bounds = [(int(a.min()), int(a.max()) + 1) for a in idx]
    sl = tuple(slice(lo + (hi - lo) // 3, hi - (hi - lo) // 3) for lo, hi in bounds)
    central[sl] = True
    ventricles = mask & central & (normalized < csf_threshold)
    return float(mask.sum() * voxel_volume), float(max(ventricles.sum(), 0.5) * voxel_volume)


def dark_area(slices, masks, threshold=0.3, central=True) -> np.ndarray:
    """Number of dark (CSF-like) pixels per slice in the central third (ventricle proxy, 2D)."""
    slices = np.asarray(slices)
    region = np.asarray(masks, bool).copy()
    if central:
        h, w = slices.shape[-2:]
        box = np.zeros((h, w), bool)
        box[h // 3: h - h // 3, w // 3: w - w // 3] = True
        region &= box
    return ((slices < threshold) & region).sum(axis=(-2, -1))


def _gaussian_log_lik(x, loc, log_scale):
    """Log-density of ``x`` per slice under the diagonal Gaussian ``h`` (pixels summed)."""
    import torch

    return (-0.5 * ((x - loc) / torch.exp(log_scale)) ** 2 - log_scale - 0.5 * _LOG_2PI).flatten(1).sum(1)


# ---------------------------------------------------------------------- networks
CONDITIONING = ("input", "all")


def _build_networks(size, context_features, latent_dim, channels, conditioning="all", min_log_scale=-6.0):
    """Encoder ``e(x, pa)`` and decoder ``g(z, pa)`` of the image mechanism.

    ``conditioning="input"`` gives the decoder its parents once (with ``z`` and as maps at the
    coarsest grid); ``"all"`` concatenates the parent maps again before every later layer, so
    that the parents reach the full-resolution output directly instead of through ``z``'s path.
    The log-scale of ``h`` is floored softly at ``min_log_scale``: below it, pixel detail is not
    worth encoding in ``z`` or in the decoder, and the exact abduction of ``u`` keeps it.
    """
    import torch
    from torch import nn

    h, w = size
    if h % 4 or w % 4:
        raise HarmonizerParameterError(f"slice_size={size}: give sizes divisible by 4 (e.g. 32 or 64)")
    if conditioning not in CONDITIONING:
        raise HarmonizerParameterError(f"decoder_conditioning={conditioning!r}: choose from {', '.join(CONDITIONING)}")
    again = context_features if conditioning == "all" else 0

    def with_maps(tensor, context):
        maps = context[:, :, None, None].expand(-1, -1, tensor.shape[2], tensor.shape[3])
        return torch.cat([tensor, maps], dim=1)

    class Encoder(nn.Module):
        def __init__(self):
            super().__init__()
            c = channels
            self.conv = nn.Sequential(
                nn.Conv2d(1 + context_features, c, 3, padding=1), nn.LeakyReLU(0.1),
                nn.Conv2d(c, c, 4, stride=2, padding=1), nn.LeakyReLU(0.1),
                nn.Conv2d(c, 2 * c, 4, stride=2, padding=1), nn.LeakyReLU(0.1))
            self.head = nn.Linear(2 * c * (h // 4) * (w // 4) + context_features, 2 * latent_dim)

        def forward(self, x, context):
            features = self.conv(with_maps(x, context)).flatten(1)
            mean, log_var = self.head(torch.cat([features, context], dim=1)).chunk(2, dim=1)
            return mean, log_var.clamp(-10, 5)

    class Decoder(nn.Module):
        def __init__(self):
            super().__init__()
            c = channels
            self.fc = nn.Sequential(nn.Linear(latent_dim + context_features, 2 * c * (h // 4) * (w // 4)),
                                    nn.LeakyReLU(0.1))
            self.up1 = nn.Sequential(nn.ConvTranspose2d(2 * c + context_features, c, 4, stride=2, padding=1),
                                     nn.LeakyReLU(0.1))
            self.up2 = nn.Sequential(nn.ConvTranspose2d(c + again, c, 4, stride=2, padding=1), nn.LeakyReLU(0.1))
            self.out = nn.Conv2d(c + again, 2, 3, padding=1)

        def forward(self, z, context):
            grid = self.fc(torch.cat([z, context], dim=1)).view(z.shape[0], 2 * channels, h // 4, w // 4)
            hidden = self.up1(with_maps(grid, context))
            hidden = self.up2(with_maps(hidden, context) if again else hidden)
            loc, raw = self.out(with_maps(hidden, context) if again else hidden).chunk(2, dim=1)
            # soft floor and cap: unlike a clamp they keep gradients, so no pixel gets stuck
            log_scale = min_log_scale + nn.functional.softplus(raw - min_log_scale)
            return loc, 2.0 - nn.functional.softplus(2.0 - log_scale)

    return Encoder(), Decoder()


# ---------------------------------------------------------------------- the harmonizer
class DeepSCMImage(ImageHarmonizer):
    """Deep SCM over 2D template-space slices: do(site = reference) and other counterfactuals.

    Parameters
    ----------
    slice_size : int
        Slices are resampled to ``slice_size x slice_size`` (64 as in the paper).
    n_slices : int
        Axial slices per scan, centred on the brain's middle (through the ventricles).
    slab : (int, int), optional
        Instead, the ``[start, stop)`` axial slice indices to model (e.g. where the template's
        lateral ventricles are); ``n_slices`` is then ignored.
    latent_dim : int
        Dimension of the decoder's high-level noise ``z``.
    channels : int
        Convolution width of encoder and decoder.
    epochs, batch_size, learning_rate : training settings (Adam).
    kl_weight : float
        Weight (beta) of the KL term of the ELBO; above 1 squeezes ``z``, so the decoder must
        take more of the image from its parents (1: the plain ELBO of Eq. 3).
    kl_warmup : int
        Epochs over which the KL weight rises linearly from 0 to ``kl_weight`` (0: none).
    min_log_scale : float
        Soft floor of the log-scale of the low-level Gaussian ``h``; a higher floor makes pixel
        detail not worth encoding in ``z`` (the exact abduction of ``u`` keeps it anyway).
    decoder_conditioning : {"all", "input"}
        Parents injected before every decoder layer, or only at its input.
    parent_weight : float
        Weight of an auxiliary term: the negative log-likelihood of the image under the
        decoder at the prior mean ``z = 0``, i.e. what the parents alone predict (0: off).
    scalar_flow : str
        Flow of the brain/ventricle mechanisms (see :mod:`bidsharmony.scm.flows`).
    csf_threshold : float
        Normalised-intensity threshold of the ventricle proxy when volumes are not given.
    """

    name = "deepscm-image"
    desc = "deepscm"
    output_description = "T1w slices: deep-SCM counterfactual under do(site = reference)"

    def __init__(self, *, slice_size: int = 64, n_slices: int = 1, slab=None, latent_dim: int = 16,
                 channels: int = 16, epochs: int = 200, batch_size: int = 32, learning_rate: float = 1e-3,
                 kl_weight: float = 1.0, kl_warmup: int = 0, min_log_scale: float = -6.0,
                 decoder_conditioning: str = "all", parent_weight: float = 0.0,
                 scalar_flow: str = "linear-spline", csf_threshold: float = 0.3,
                 reference_site=None, random_seed=0, num_threads=1):
        super().__init__(reference_site=reference_site, random_seed=random_seed, num_threads=num_threads)
        self.slice_size = int(slice_size)
        self.n_slices = int(n_slices)
        self.slab = None if slab is None else [int(v) for v in slab]
        if self.slab is not None and (len(self.slab) != 2 or not 0 <= self.slab[0] < self.slab[1]):
            raise HarmonizerParameterError(f"slab={slab!r}: give [start, stop) axial slice indices, 0 <= start < stop")
        self.latent_dim = int(latent_dim)
        self.channels = int(channels)
        self.epochs = int(epochs)
        self.batch_size = int(batch_size)
        self.learning_rate = float(learning_rate)
        self.kl_weight = float(kl_weight)
        self.kl_warmup = int(kl_warmup)
        self.min_log_scale = float(min_log_scale)
        self.decoder_conditioning = str(decoder_conditioning)
        self.parent_weight = float(parent_weight)
        if self.kl_weight <= 0 or self.kl_warmup < 0 or self.parent_weight < 0:
            raise HarmonizerParameterError(f"kl_weight={kl_weight!r}, kl_warmup={kl_warmup!r}, parent_weight="
                                           f"{parent_weight!r}: give kl_weight > 0 and the others >= 0")
        if self.decoder_conditioning not in CONDITIONING:
            raise HarmonizerParameterError(f"decoder_conditioning={decoder_conditioning!r}: choose from "
                                           f"{', '.join(CONDITIONING)}")
        self.scalar_flow = str(scalar_flow)
        self.csf_threshold = float(csf_threshold)

    # ------------------------------------------------------------------ model pieces
    @property
    def _size(self):
        return (self.slice_size, self.slice_size)

    @property
    def _context_features(self) -> int:
        # age, sex, brain, ventricles (1 each), site one-hot, slice position
        return 4 + len(self.sites_) + 1

    def _build(self):
        from ..scm.graph import CausalGraph, NodeSpec
        from ..scm.model import FlowSCM

        graph = CausalGraph([
            NodeSpec("age", "continuous", log_transform=True, flow=self.scalar_flow),
            NodeSpec("sex", "binary"),
            NodeSpec("site", "categorical", categories=len(self.sites_)),
            NodeSpec("brain_volume", "continuous", parents=["sex", "age"], log_transform=True, flow=self.scalar_flow),
            NodeSpec("ventricle_volume", "continuous", parents=["age", "brain_volume"], log_transform=True,
                     flow=self.scalar_flow),
        ])
        self.scm_ = FlowSCM(graph, context_hidden=(16,), context_features=8)
        self.encoder_, self.decoder_ = _build_networks(self._size, self._context_features, self.latent_dim,
                                                       self.channels, self.decoder_conditioning,
                                                       self.min_log_scale)

    def _sex_code(self, value) -> int:
        key = str(value)
        if key not in self.sex_levels_:
            raise HarmonizerInputError(f"sex {value!r} was not seen in fit ({self.sex_levels_}); use one of them")
        return self.sex_levels_.index(key)

    def _site_code(self, site) -> int:
        if str(site) not in self.sites_:
            raise HarmonizerInputError(
                f"site {site!r} was not seen in fit ({', '.join(self.sites_)}); deepscm-image models the "
                "site as a node, so refit with that site's scans")
        return self.sites_.index(str(site))

    def _scalar_values(self, rows: list[dict]) -> dict:
        import torch

        def column(name):
            return torch.tensor([[float(r[name])] for r in rows], dtype=torch.float64)
        return {"age": column("age"), "brain_volume": column("brain_volume"),
                "ventricle_volume": column("ventricle_volume"),
                "sex": torch.tensor([self._sex_code(r["sex"]) for r in rows], dtype=torch.long),
                "site": torch.tensor([self._site_code(r["site"]) for r in rows], dtype=torch.long)}

    def _image_context(self, values: dict, n_per_scan: int):
        """Parents of the image (encoded like the scalar mechanisms do), one row per slice."""
        import torch

        mechanisms = self.scm_.mechanisms
        parts = [mechanisms[name].encode(values[name]) for name in ("age", "sex", "brain_volume", "ventricle_volume")]
        parts.append(torch.nn.functional.one_hot(values["site"].long(), len(self.sites_)).to(torch.float64))
        context = torch.cat(parts, dim=1).float().repeat_interleave(n_per_scan, dim=0)
        position = torch.linspace(-1, 1, n_per_scan) if n_per_scan > 1 else torch.zeros(1)
        position = position.repeat(context.shape[0] // n_per_scan)[:, None]
        return torch.cat([context, position], dim=1)

    def _row(self, image, mask, site, covariates) -> dict:
        """Covariates of one scan with the volumes filled in (given or measured)."""
        row = dict(covariates)
        row["site"] = site
        for name in ("age", "sex"):
            if name not in row or pd.isna(row[name]):
                raise HarmonizerInputError(f"scan of site {site} has no {name!r} covariate; deepscm-image needs age and sex")
        if pd.isna(row.get("brain_volume", np.nan)) or pd.isna(row.get("ventricle_volume", np.nan)):
            brain, ventricles = measure_volumes(image, mask, self.voxel_volume_, self.csf_threshold)
            row.setdefault("brain_volume", brain)
            row.setdefault("ventricle_volume", ventricles)
            if pd.isna(row["brain_volume"]):
                row["brain_volume"] = brain
            if pd.isna(row["ventricle_volume"]):
                row["ventricle_volume"] = ventricles
        return row

    def _prepare(self, image, mask, site, covariates):
        normalized, scale = normalize_intensity(image, mask)
        slices, slice_masks = self.geometry_.to_brain_slices(normalized, mask)
        return slices, slice_masks, scale, self._row(image, mask, site, covariates)

    # ------------------------------------------------------------------ fit
    def _fit(self, scans: ImageSet) -> None:
        import torch

        rng = self._seed()
        covariates = scans.covariates
        missing = [c for c in ("age", "sex") if c not in covariates]
        if missing:
            raise HarmonizerInputError(f"covariates lack {missing}; deepscm-image needs age and sex of every scan")
        self.voxel_volume_ = float(abs(np.linalg.det(scans.affine[:3, :3])))
        self.sex_levels_ = sorted({str(s) for s in covariates["sex"]})
        if len(self.sex_levels_) > 2:
            raise HarmonizerInputError(f"sex has {len(self.sex_levels_)} levels {self.sex_levels_}; give two")
        while len(self.sex_levels_) < 2:
            self.sex_levels_.append(f"unseen-{len(self.sex_levels_)}")
        # the central axial slices (through the ventricles) of every scan's brain
        self.geometry_ = SliceGeometry.from_masks(scans.masks, axis=2, size=self._size, margin_vox=1,
                                                  n_slices=self.n_slices)
        if self.slab is not None:
            if self.slab[1] > scans.shape[2]:
                raise HarmonizerParameterError(f"slab={self.slab}: the grid has {scans.shape[2]} axial slices")
            self.geometry_ = SliceGeometry(2, self.slab, self.geometry_.crop, self._size)
        slices, masks, rows, scales = [], [], [], []
        for image, mask, (_, cov) in zip(scans.images, scans.masks, covariates.iterrows()):
            s, m, scale, row = self._prepare(np.asarray(image, np.float32), np.asarray(mask, bool), str(cov["site"]),
                                             cov.to_dict())
            slices.append(s), masks.append(m), rows.append(row), scales.append(scale)
        reference_scales = np.array([sc for sc, r in zip(scales, rows) if r["site"] == self.reference_site_])
        self.reference_scale_ = [float(v) for v in np.median(reference_scales, axis=0)]
        self._build()
        values = self._scalar_values(rows)
        self.scm_.initialise(values)
        x = torch.from_numpy(np.concatenate(slices)[:, None])
        k = len(self.geometry_.slice_indices)
        params = list(self.scm_.parameters()) + list(self.encoder_.parameters()) + list(self.decoder_.parameters())
        optimizer = torch.optim.Adam(params, lr=self.learning_rate)
        n = x.shape[0]
        started = time.perf_counter()
        self.history_ = []
        for epoch in range(self.epochs):
            order = rng.permutation(len(rows))
            total = 0.0
            beta = self.kl_weight * min(1.0, (epoch + 1) / self.kl_warmup) if self.kl_warmup else self.kl_weight
            for start in range(0, len(rows), self.batch_size):
                batch = order[start:start + self.batch_size]
                batch_values = {key: value[batch] for key, value in values.items()}
                slice_rows = (batch[:, None] * k + np.arange(k)).ravel()
                loss = self.scm_.nll(batch_values) / (n / len(rows)) + \
                    self._negative_elbo(x[slice_rows], self._image_context(batch_values, k), beta)
                optimizer.zero_grad()
                loss.backward()
                optimizer.step()
                total += float(loss.detach()) * len(batch)
            self.history_.append(total / len(rows))
            if epoch % max(self.epochs // 10, 1) == 0 or epoch == self.epochs - 1:
                spent = time.perf_counter() - started
                LOGGER.info("deepscm-image epoch %d/%d  loss %.4f  (%.0f s left)", epoch + 1, self.epochs,
                            self.history_[-1], spent / (epoch + 1) * (self.epochs - epoch - 1))
        self.scm_.eval(), self.encoder_.eval(), self.decoder_.eval()

    def _negative_elbo(self, x, context, beta=1.0):
        """Negative ELBO per slice (pixels summed), Eq. 3 with a diagonal-Gaussian h.

        ``beta`` weighs the KL term; with ``parent_weight`` the loss adds the negative
        log-likelihood under the decoder at ``z = 0`` (the parents' own prediction).
        """
        import torch

        mean, log_var = self.encoder_(x, context)
        z = mean + torch.exp(0.5 * log_var) * torch.randn_like(mean)
        kl = 0.5 * (mean ** 2 + log_var.exp() - 1 - log_var).sum(1)
        loss = beta * kl - _gaussian_log_lik(x, *self.decoder_(z, context))
        if self.parent_weight:
            loss = loss - self.parent_weight * _gaussian_log_lik(x, *self.decoder_(torch.zeros_like(z), context))
        return loss.mean()

    # ------------------------------------------------------------------ counterfactuals
    def _parse_intervention(self, intervention: dict, row: dict) -> dict:
        do = {}
        for name, value in intervention.items():
            if name not in SCALAR_NODES:
                raise HarmonizerParameterError(f"cannot intervene on {name!r}; choose from {', '.join(SCALAR_NODES)}")
            if name == "site":
                do[name] = self._site_code(value)
            elif name == "sex":
                do[name] = self._sex_code(value)
            elif isinstance(value, str) and value[:1] in "+-":
                do[name] = float(row[name]) + float(value)  # relative, e.g. age "+10"
            else:
                do[name] = float(value)
        return do

    def counterfactual(self, image, mask, covariates: dict, intervention: dict) -> dict:
        """Abduction, action, prediction for one scan.

        Parameters
        ----------
        image, mask : numpy.ndarray
            3D volume and brain mask on the fitted grid.
        covariates : dict
            ``site``, ``age``, ``sex`` (and optionally ``brain_volume``, ``ventricle_volume``).
        intervention : dict
            ``{node: value}`` with nodes among ``age, sex, site, brain_volume,
            ventricle_volume``; a string starting with ``+``/``-`` is relative (``{"age": "+10"}``).

        Returns
        -------
        dict
            ``original`` and ``counterfactual`` slices (``(n_slices, H, W)``, normalised [0, 1]
            units), ``difference`` (counterfactual - original), ``slice_mask``,
            ``reconstruction`` (decoder mean under the observed parents), ``values`` and
            ``counterfactual_values`` (scalar nodes) and ``scale`` (intensity lo/hi of the scan).
        """
        import torch

        self._check_fitted()
        image = np.asarray(image, np.float32)
        mask = np.asarray(mask, bool)
        site = str(covariates.get("site"))
        slices, slice_masks, scale, row = self._prepare(image, mask, site, covariates)
        do = self._parse_intervention(intervention, row)
        k = slices.shape[0]
        with torch.no_grad():
            values = self._scalar_values([row])
            new_values = self.scm_.counterfactual(values, do)
            x = torch.from_numpy(slices[:, None])
            context = self._image_context(values, k)
            new_context = self._image_context(new_values, k)
            z, _ = self.encoder_(x, context)                      # abduction of z: encoder mean
            loc, log_scale = self.decoder_(z, context)
            u = (x - loc) / torch.exp(log_scale)                  # abduction of u: h inverted exactly
            new_loc, new_log_scale = self.decoder_(z, new_context)
            result = (new_loc + torch.exp(new_log_scale) * u)[:, 0].numpy()
        result = np.clip(result, 0.0, 1.0) * slice_masks
        def scalars(vals):
            out = {name: float(vals[name].view(-1)[0]) for name in ("age", "brain_volume", "ventricle_volume")}
            out["sex"] = self.sex_levels_[int(vals["sex"][0])]
            out["site"] = self.sites_[int(vals["site"][0])]
            return out
        return {"original": slices, "counterfactual": result.astype(np.float32),
                "difference": (result - slices).astype(np.float32), "slice_mask": slice_masks,
                "reconstruction": (np.clip(loc[:, 0].numpy(), 0, 1) * slice_masks).astype(np.float32),
                "values": scalars(values), "counterfactual_values": scalars(new_values), "scale": scale}

    def _transform_scan(self, image, mask, site, covariates):
        covariates = dict(covariates, site=site)
        cf = self.counterfactual(image, mask, covariates, {"site": self.reference_site_})
        target = self.reference_scale_ if site != self.reference_site_ else cf["scale"]
        slab = denormalize_intensity(cf["counterfactual"], target)
        harmonized = np.where(mask, self.geometry_.from_slices(slab, image), image)
        inside = cf["slice_mask"]
        info = {
            "Method": "Deep SCM counterfactual do(site = reference) (Pawlowski et al. 2020)",
            "ReferenceSite": self.reference_site_,
            "ModelledSlices": self.geometry_.slice_indices,
            "SliceAxis": "z (axial); other voxels keep the input values",
            "DecoderReconstructionMAE": float(np.abs(cf["reconstruction"] - cf["original"])[inside].mean()),
            "CounterfactualValues": cf["counterfactual_values"],
        }
        return harmonized, info

    # ------------------------------------------------------------------ persistence
    def _get_state(self):
        state = {"geometry": self.geometry_.to_dict(), "sex_levels": self.sex_levels_,
                 "voxel_volume": self.voxel_volume_, "reference_scale": self.reference_scale_,
                 "history": list(self.history_)}
        arrays = {}
        arrays.update(module_to_arrays(self.scm_, "scm"))
        arrays.update(module_to_arrays(self.encoder_, "encoder"))
        arrays.update(module_to_arrays(self.decoder_, "decoder"))
        return state, arrays

    def _set_state(self, state, arrays):
        if any(key.startswith("decoder.up.") for key in arrays):
            # the decoder before parents were injected at every level (bidsharmony <= 2026-11-22)
            raise ModelFileError("this deepscm-image model was saved by an older bidsharmony whose decoder is no "
                                 "longer supported; refit it with --harmonizer deepscm-image")
        self.geometry_ = SliceGeometry.from_dict(state["geometry"])
        self.sex_levels_ = list(state["sex_levels"])
        self.voxel_volume_ = float(state["voxel_volume"])
        self.reference_scale_ = list(state["reference_scale"])
        self.history_ = list(state["history"])
        self._build()
        for prefix, module in (("scm", self.scm_), ("encoder", self.encoder_), ("decoder", self.decoder_)):
            arrays_to_module(module, prefix, arrays)
            module.eval()


def plot_counterfactuals(results: dict, path, titles=None):
    """Fig. 5-like PNG: original, each counterfactual and its difference map (first slice).

    Parameters
    ----------
    results : dict
        ``{label: DeepSCMImage.counterfactual(...) result}`` for one scan.
    path : str or Path
        Output PNG.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    labels = list(results)
    fig, axes = plt.subplots(2, len(labels) + 1, figsize=(2.2 * (len(labels) + 1), 4.4), squeeze=False)
    first = results[labels[0]]
    axes[0, 0].imshow(first["original"][0].T, cmap="gray", origin="lower", vmin=0, vmax=1)
    axes[0, 0].set_title("original")
    axes[1, 0].axis("off")
    limit = max(float(np.abs(r["difference"][0]).max()) for r in results.values()) or 1.0
    for j, label in enumerate(labels, start=1):
        axes[0, j].imshow(results[label]["counterfactual"][0].T, cmap="gray", origin="lower", vmin=0, vmax=1)
        axes[0, j].set_title(label, fontsize=8)
        axes[1, j].imshow(results[label]["difference"][0].T, cmap="RdBu_r", origin="lower", vmin=-limit, vmax=limit)
        axes[1, j].set_title("difference", fontsize=8)
    for ax in axes.ravel():
        ax.set_xticks([]), ax.set_yticks([])
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path
