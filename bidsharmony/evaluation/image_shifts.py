"""Scanner shifts with known truth for template-space T1w brains, and how to score a harmonizer.

A *shift* turns one template-space brain (the "unshifted" image, as the reference scanner would
store it) into what another scanner might have stored, with its parameters known, so that a
harmonized image can be compared voxel by voxel with the image it should have become. Four
kinds, each a plain function of arrays (``numpy.random.Generator`` for anything random):

``"monotone"`` (a)
    A global strictly increasing intensity map, the synthetic dataset's site maps
    (:func:`bidsharmony.datasets.synthetic.intensity_map`: gamma ``x**a``, exp-like, log-like,
    then gain and offset). Every voxel keeps its rank: landmark histogram matching can undo it.
``"contrast"`` (b)
    Tissue-dependent contrast: the intensity of each tissue (CSF, GM, WM) is multiplied by its
    own factor, voxel by voxel through the tissue posteriors (or a hard segmentation), so the
    GM/WM and CSF/WM ratios change (as with another TI/TR/flip angle or field strength). Not a
    global map of intensity: GM and WM voxels of the same intensity can end up apart.
``"bias"`` (c)
    A residual smooth multiplicative bias field: ``exp`` of a random second-order polynomial of
    position, scaled so that ``(max - min) / (max + min)`` of the field in the brain equals the
    requested amplitude (e.g. 0.05-0.2).
``"blur_noise"`` (d)
    Another resolution and noise level: Gaussian blur of a given FWHM (mm; normalised
    convolution inside the brain mask, so the background does not darken the brain's edge), then
    Rician (or Gaussian) noise whose SD is a fraction of the brain's mean intensity.

:func:`draw_shift` draws the parameters of one kind (the ranges of :data:`SHIFT_RANGES`), and
:func:`apply_shift` applies them; a "site" of a benchmark is one drawn parameter set applied to
every scan of the site (noise drawn per scan).

Scores against the unshifted image: :func:`psnr_in_mask` and :func:`ssim_in_mask` (from
:mod:`bidsharmony.evaluation.images`, scikit-image inside the brain), and a downstream measure,
the tissue volumes of a three-class Gaussian mixture fitted on the unshifted image and applied to
both (:func:`fit_tissue_model`, :func:`tissue_volume_errors`): a fixed segmentation pipeline
calibrated on the reference scanner, so a harmonized image that is off in tissue contrast
loses tissue volume to its neighbours.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ..datasets.synthetic.scanner import intensity_map
from ..morphometry import TISSUE_LABELS
from .images import psnr_in_mask, ssim_in_mask

__all__ = [
    "SHIFT_KINDS", "SHIFT_RANGES", "TissueModel", "apply_shift", "bias_field", "blur_noise_shift", "contrast_shift",
    "draw_shift", "fit_tissue_model", "monotone_shift", "normalize_to_reference_scale", "psnr_in_mask",
    "score_image", "ssim_in_mask", "tissue_mean_ratios", "tissue_volume_errors", "tissue_volumes",
]

#: the four kinds of shift, in the order (a)-(d)
SHIFT_KINDS = ("monotone", "contrast", "bias", "blur_noise")

#: intensity of CSF, GM and WM on the reference scale (the synthetic dataset's site-free
#: intensities, :data:`bidsharmony.datasets.synthetic.INTENSITY`, times 1000)
REFERENCE_LEVELS = {"CSF": 150.0, "GM": 550.0, "WM": 850.0}

#: parameter ranges :func:`draw_shift` draws from. The monotone families, parameters, gains and
#: offsets are those of :func:`bidsharmony.datasets.synthetic.make_sites` (gain divided by 1000,
#: as images here are on the 0-1000 reference scale).
SHIFT_RANGES = {
    "monotone": {"gamma": (0.6, 1.4), "exp": (0.8, 2.0), "log": (2.0, 8.0), "gain": (0.7, 1.6),
                 "offset": (0.0, 40.0)},
    # factor of GM relative to WM: |log factor| in [log 1.1, log 1.25], either sign; CSF: 0.6-1.6
    "contrast": {"gm_change": (1.1, 1.25), "csf_factor": (0.6, 1.6), "gain": (0.7, 1.6)},
    "bias": {"amplitude": (0.05, 0.2), "gain": (0.7, 1.6)},
    "blur_noise": {"fwhm_mm": (2.5, 3.5), "noise_fraction": (0.02, 0.05), "gain": (0.7, 1.6)},
}


# ---------------------------------------------------------------------- helpers
def _float(image) -> np.ndarray:
    return np.asarray(image, dtype=np.float64)


def _mask(mask, shape) -> np.ndarray:
    mask = np.asarray(mask, dtype=bool)
    if mask.shape != tuple(shape):
        raise ValueError(f"mask shape {mask.shape} differs from the image's {tuple(shape)}; give one mask per image")
    if not mask.any():
        raise ValueError("the brain mask is empty")
    return mask


def _posteriors(tissues, shape) -> np.ndarray:
    """(3, *shape) CSF/GM/WM posteriors from posteriors or a hard segmentation (1 CSF, 2 GM, 3 WM)."""
    tissues = np.asarray(tissues)
    if tissues.shape == tuple(shape):  # hard labels
        return np.stack([(tissues == label).astype(np.float64) for label in (1, 2, 3)])
    if tissues.shape == (3, *shape):
        return np.asarray(tissues, dtype=np.float64)
    raise ValueError(f"tissues of shape {tissues.shape}: give a label image {tuple(shape)} (1 CSF, 2 GM, 3 WM) or "
                     f"posteriors (3, {', '.join(map(str, shape))}) in the order CSF, GM, WM")


def tissue_mean_ratios(image, tissues, mask) -> dict:
    """Mean intensity of GM and CSF relative to WM (``{"GM/WM": r, "CSF/WM": r}``).

    Parameters
    ----------
    image : numpy.ndarray
        3-D image.
    tissues : numpy.ndarray
        Hard labels (1 CSF, 2 GM, 3 WM) or posteriors ``(3, *image.shape)``; posteriors weigh
        each voxel's contribution to its tissue's mean.
    mask : numpy.ndarray of bool
        Brain mask.
    """
    image = _float(image)
    mask = _mask(mask, image.shape)
    weights = _posteriors(tissues, image.shape) * mask
    means = [float((w * image).sum() / max(w.sum(), 1e-12)) for w in weights]
    return {"GM/WM": means[1] / means[2], "CSF/WM": means[0] / means[2]}


def normalize_to_reference_scale(image, mask, tissues) -> np.ndarray:
    """Map ``image`` linearly so that its CSF and WM means land on 150 and 850.

    The sources of a benchmark (real scans of several scanners, synthetic scans) come in
    different units; this two-point linear map puts them on one reference scale (that of
    :data:`REFERENCE_LEVELS`) without changing their contrast. Voxels outside the mask are set
    to 0.

    Parameters
    ----------
    image, mask : numpy.ndarray
        3-D image and brain mask.
    tissues : numpy.ndarray
        Hard labels (1 CSF, 2 GM, 3 WM) or posteriors ``(3, *image.shape)``.

    Returns
    -------
    numpy.ndarray
        float32 image on the reference scale.
    """
    image = _float(image)
    mask = _mask(mask, image.shape)
    weights = _posteriors(tissues, image.shape) * mask
    csf, wm = ((w * image).sum() / max(w.sum(), 1e-12) for w in (weights[0], weights[2]))
    if not wm > csf:
        raise ValueError("the WM mean is not above the CSF mean; is this a T1w image with tissues 1 CSF, 2 GM, 3 WM?")
    low, high = REFERENCE_LEVELS["CSF"], REFERENCE_LEVELS["WM"]
    out = low + (image - csf) * (high - low) / (wm - csf)
    return np.where(mask, np.maximum(out, 0.0), 0.0).astype(np.float32)


# ---------------------------------------------------------------------- the four shifts
def monotone_shift(image, mask, family: str, parameter: float, gain: float = 1.0, offset: float = 0.0,
                   scale: float = 1000.0) -> np.ndarray:
    """(a) A global monotone intensity map, the synthetic sites' :func:`~bidsharmony.datasets.synthetic.intensity_map`.

    The image is divided by ``scale`` (so the reference WM is about 0.85), mapped by the
    ``family`` (``"gamma"``: x^a, ``"exp"``: (e^{a x} - 1) / (e^a - 1), ``"log"``:
    log(1 + a x) / log(1 + a)), then multiplied by ``gain * scale`` and ``offset`` added.
    Strictly increasing for intensities >= 0 (negative ones are clipped to 0 first). Outside
    the mask the output is 0.

    Parameters
    ----------
    image, mask : numpy.ndarray
        3-D image (reference scale, >= 0) and brain mask.
    family : {"gamma", "exp", "log"}
    parameter : float
        The family's parameter ``a`` (> 0).
    gain, offset : float
        Global gain (relative) and offset (image units) after the map.
    scale : float
        Intensity taken as 1 by the map.
    """
    if family not in ("gamma", "exp", "log"):
        raise ValueError(f"family={family!r}: use 'gamma', 'exp' or 'log'")
    if not parameter > 0 or not gain > 0:
        raise ValueError(f"parameter={parameter} and gain={gain} must be > 0")
    image = _float(image)
    mask = _mask(mask, image.shape)
    site = {"intensity": {"family": family, "parameter": float(parameter), "gain": float(gain) * scale,
                          "offset": float(offset)}}
    out = intensity_map(image / scale, site)
    return np.where(mask, out, 0.0).astype(np.float32)


def contrast_shift(image, mask, tissues, factors, gain: float = 1.0) -> np.ndarray:
    """(b) Tissue-dependent contrast: each tissue's intensity times its own factor.

    ``out = gain * image * sum_c p_c * factors[c]`` with ``p_c`` the posterior (or hard label)
    of tissue ``c``; with hard labels the mean of tissue ``c`` is multiplied exactly by
    ``gain * factors[c]``, so the GM/WM mean ratio changes by ``factors["GM"] / factors["WM"]``.
    Voxels inside the mask where the posteriors sum to less than 1 (e.g. a label 0 voxel) keep
    the missing share at factor 1.

    The tissue maps must not be a function of the voxel's own intensity (true labels, or
    posteriors with spatial priors / MRF smoothing such as Atropos', warped to the grid): with
    posteriors of an intensity-only mixture (:meth:`TissueModel.posteriors` of the same image)
    the factor depends on intensity alone, so the shift becomes a global intensity map that
    landmark histogram matching largely undoes (measured on the benchmark's sources: 28.0 dB after
    histogram matching, against 25.7 dB with the tissue maps of
    ``benchmarks/bench_image_shifts.py``, seed 0, 4 synthetic + 4 real scans).

    Parameters
    ----------
    image, mask : numpy.ndarray
        3-D image and brain mask.
    tissues : numpy.ndarray
        Hard labels (1 CSF, 2 GM, 3 WM) or posteriors ``(3, *image.shape)`` (CSF, GM, WM).
    factors : dict
        ``{"CSF": f, "GM": f, "WM": f}`` (> 0).
    gain : float
        Global gain on top.
    """
    image = _float(image)
    mask = _mask(mask, image.shape)
    posteriors = _posteriors(tissues, image.shape)
    values = [float(factors[name]) for name in ("CSF", "GM", "WM")]
    if min(values) <= 0 or not gain > 0:
        raise ValueError(f"factors={factors} and gain={gain} must be > 0")
    weight = np.clip(posteriors.sum(axis=0), 0.0, 1.0)
    field = sum(p * f for p, f in zip(posteriors, values)) + (1.0 - weight)
    return np.where(mask, gain * image * field, 0.0).astype(np.float32)


def bias_field(shape, mask, amplitude: float, rng: np.random.Generator, order: int = 2) -> np.ndarray:
    """(c) A smooth multiplicative field of the requested amplitude inside the mask.

    ``exp`` of a polynomial of the voxel coordinates (centred on the mask, scaled to [-1, 1];
    all terms up to ``order``, standard-normal coefficients), rescaled so that inside the mask
    ``min = 1 - a'`` and ``max = 1 + a'`` in the sense ``(max - min) / (max + min) = amplitude``
    and ``max * min = 1`` (the field's geometric centre is 1).

    Parameters
    ----------
    shape : tuple of int
        3-D grid.
    mask : numpy.ndarray of bool
        Where the amplitude is measured.
    amplitude : float
        In [0, 1).
    rng : numpy.random.Generator
    order : int
        Polynomial order (1: linear ramp, 2: the synthetic dataset's second-order fields).

    Returns
    -------
    numpy.ndarray
        float64 field (1 everywhere for ``amplitude=0``).
    """
    if not 0 <= amplitude < 1:
        raise ValueError(f"amplitude={amplitude}: give a value in [0, 1)")
    mask = _mask(mask, shape)
    where = np.argwhere(mask)
    lo, hi = where.min(axis=0), where.max(axis=0)
    axes = [(np.arange(n) - (a + b) / 2.0) / max((b - a) / 2.0, 1.0) for n, a, b in zip(shape, lo, hi)]
    x, y, z = np.meshgrid(*axes, indexing="ij")
    log_field = np.zeros(tuple(shape))
    for i in range(order + 1):
        for j in range(order + 1 - i):
            for k in range(order + 1 - i - j):
                if i + j + k:
                    log_field += rng.standard_normal() * x**i * y**j * z**k
    inside = log_field[mask]
    spread = float(inside.max() - inside.min())
    if amplitude == 0 or spread == 0:
        return np.ones(tuple(shape))
    t = 2.0 * np.arctanh(amplitude) / spread
    return np.exp(t * (log_field - (inside.max() + inside.min()) / 2.0))


def blur_noise_shift(image, mask, fwhm_mm: float, noise_fraction: float, rng: np.random.Generator,
                     voxel_size=(2.0, 2.0, 2.0), noise: str = "rician", gain: float = 1.0) -> np.ndarray:
    """(d) Gaussian blur of ``fwhm_mm`` inside the mask, then noise.

    The blur is a normalised convolution (``G*(I m) / G*m``): only brain voxels are averaged,
    as if the scanner had a wider point-spread function but the brain mask stayed the same.
    Noise SD = ``noise_fraction`` x the brain's mean intensity after blurring; ``"rician"``:
    the magnitude of the signal plus complex Gaussian noise; ``"gaussian"``: additive.

    Parameters
    ----------
    image, mask : numpy.ndarray
        3-D image and brain mask.
    fwhm_mm : float
        FWHM of the added Gaussian kernel in mm (0: no blur).
    noise_fraction : float
        Noise SD relative to the mean brain intensity (0: no noise).
    rng : numpy.random.Generator
    voxel_size : sequence of float
        Voxel size in mm along each axis.
    noise : {"rician", "gaussian"}
    gain : float
        Global gain applied before the noise.
    """
    from scipy import ndimage

    if fwhm_mm < 0 or noise_fraction < 0:
        raise ValueError(f"fwhm_mm={fwhm_mm} and noise_fraction={noise_fraction} must be >= 0")
    if noise not in ("rician", "gaussian"):
        raise ValueError(f"noise={noise!r}: use 'rician' or 'gaussian'")
    image = _float(image)
    mask = _mask(mask, image.shape)
    weights = mask.astype(np.float64)
    out = image * weights
    if fwhm_mm > 0:
        sigma = [fwhm_mm / (2.0 * np.sqrt(2.0 * np.log(2.0))) / float(v) for v in voxel_size]
        out = ndimage.gaussian_filter(out, sigma, mode="constant") / np.maximum(
            ndimage.gaussian_filter(weights, sigma, mode="constant"), 1e-6)
    out = gain * out
    sd = noise_fraction * float(out[mask].mean())
    if sd > 0:
        real = out + rng.normal(0.0, sd, out.shape)
        out = np.hypot(real, rng.normal(0.0, sd, out.shape)) if noise == "rician" else real
    return np.where(mask, out, 0.0).astype(np.float32)


# ---------------------------------------------------------------------- sites: draw and apply
def draw_shift(kind: str, rng: np.random.Generator, **fixed) -> dict:
    """Draw the parameters of one shift of ``kind`` from :data:`SHIFT_RANGES`.

    Parameters
    ----------
    kind : {"monotone", "contrast", "bias", "blur_noise"}
    rng : numpy.random.Generator
    **fixed
        Parameters to set instead of drawing (e.g. ``family="log"``, ``amplitude=0.1``).

    Returns
    -------
    dict
        ``{"kind": kind, ...}``, JSON-serialisable; for ``"bias"`` a ``field_seed`` from which
        :func:`apply_shift` draws the field (the same field for every scan of a site).
    """
    if kind not in SHIFT_KINDS:
        raise ValueError(f"kind={kind!r}: use one of {', '.join(SHIFT_KINDS)}")
    ranges = SHIFT_RANGES[kind]
    params = {"kind": kind, "gain": float(rng.uniform(*ranges["gain"]))}
    if kind == "monotone":
        family = str(rng.choice(["gamma", "exp", "log"]))
        params.update(family=family, parameter=float(rng.uniform(*ranges[family])),
                      offset=float(rng.uniform(*ranges["offset"])))
    elif kind == "contrast":
        gm = float(rng.uniform(*ranges["gm_change"])) ** float(rng.choice([-1.0, 1.0]))
        params["factors"] = {"CSF": float(rng.uniform(*ranges["csf_factor"])), "GM": gm, "WM": 1.0}
    elif kind == "bias":
        params.update(amplitude=float(rng.uniform(*ranges["amplitude"])), field_seed=int(rng.integers(2**31)))
    else:
        params.update(fwhm_mm=float(rng.uniform(*ranges["fwhm_mm"])),
                      noise_fraction=float(rng.uniform(*ranges["noise_fraction"])),
                      noise=str(rng.choice(["rician", "gaussian"])))
    params.update(fixed)
    return params


def apply_shift(image, mask, params: dict, rng: np.random.Generator, tissues=None,
                voxel_size=(2.0, 2.0, 2.0)) -> np.ndarray:
    """Apply a shift drawn by :func:`draw_shift` to one image.

    Parameters
    ----------
    image, mask : numpy.ndarray
        3-D unshifted image (reference scale) and brain mask.
    params : dict
        From :func:`draw_shift`.
    rng : numpy.random.Generator
        Draws the noise of ``"blur_noise"`` (the bias field comes from ``params["field_seed"]``).
    tissues : numpy.ndarray, optional
        Labels or posteriors (needed by ``"contrast"``).
    voxel_size : sequence of float
        Voxel size in mm (``"blur_noise"``).

    Returns
    -------
    numpy.ndarray
        float32 shifted image, 0 outside the mask.
    """
    kind = params["kind"]
    gain = float(params.get("gain", 1.0))
    if kind == "monotone":
        return monotone_shift(image, mask, params["family"], params["parameter"], gain, params.get("offset", 0.0))
    if kind == "contrast":
        if tissues is None:
            raise ValueError("a contrast shift needs the tissues (labels or posteriors) of the image")
        return contrast_shift(image, mask, tissues, params["factors"], gain)
    if kind == "bias":
        field = bias_field(np.shape(image), mask, params["amplitude"], np.random.default_rng(params["field_seed"]))
        return np.where(mask, gain * _float(image) * field, 0.0).astype(np.float32)
    if kind == "blur_noise":
        return blur_noise_shift(image, mask, params["fwhm_mm"], params["noise_fraction"], rng, voxel_size,
                                params.get("noise", "rician"), gain)
    raise ValueError(f"unknown shift kind {kind!r}; use one of {', '.join(SHIFT_KINDS)}")


# ---------------------------------------------------------------------- downstream: tissue volumes
@dataclass
class TissueModel:
    """A three-class Gaussian mixture of brain intensities, classes ordered CSF < GM < WM.

    Attributes
    ----------
    means, variances, weights : numpy.ndarray
        Per class (CSF, GM, WM), in the intensity units of the image it was fitted on.
    """

    means: np.ndarray
    variances: np.ndarray
    weights: np.ndarray

    def posteriors(self, image, mask) -> np.ndarray:
        """``(3, *image.shape)`` class posteriors (0 outside the mask)."""
        image = _float(image)
        mask = _mask(mask, image.shape)
        values = image[mask][:, None]
        log_p = (np.log(self.weights) - 0.5 * np.log(2 * np.pi * self.variances)
                 - 0.5 * (values - self.means) ** 2 / self.variances)
        log_p -= log_p.max(axis=1, keepdims=True)
        p = np.exp(log_p)
        p /= p.sum(axis=1, keepdims=True)
        out = np.zeros((3, *image.shape))
        out[:, mask] = p.T
        return out

    def labels(self, image, mask) -> np.ndarray:
        """Hard labels (0 outside the mask, 1 CSF, 2 GM, 3 WM)."""
        mask = _mask(mask, np.shape(image))
        out = np.zeros(np.shape(image), dtype=np.uint8)
        out[mask] = self.posteriors(image, mask)[:, mask].argmax(axis=0) + 1
        return out


def fit_tissue_model(image, mask, random_state: int = 0, max_voxels: int = 200_000) -> TissueModel:
    """Fit a 3-class Gaussian mixture (scikit-learn) on the brain intensities of ``image``.

    Parameters
    ----------
    image, mask : numpy.ndarray
        3-D T1w image and brain mask (CSF darkest, WM brightest).
    random_state : int
        Seed of the k-means initialisation and of the voxel subsample.
    max_voxels : int
        At most this many brain voxels (a random subsample) are used for the fit.
    """
    from sklearn.mixture import GaussianMixture

    image = _float(image)
    mask = _mask(mask, image.shape)
    values = image[mask]
    rng = np.random.default_rng(random_state)
    if values.size > max_voxels:
        values = rng.choice(values, max_voxels, replace=False)
    gmm = GaussianMixture(3, covariance_type="full", random_state=random_state).fit(values[:, None])
    order = np.argsort(gmm.means_[:, 0])
    return TissueModel(means=gmm.means_[order, 0], variances=gmm.covariances_[order, 0, 0],
                       weights=gmm.weights_[order])


def tissue_volumes(labels, voxel_volume: float = 1.0) -> dict:
    """``{"CSF": v, "GM": v, "WM": v}`` volumes of a label image (1 CSF, 2 GM, 3 WM) in voxel_volume units."""
    labels = np.asarray(labels)
    return {name: float((labels == label).sum()) * float(voxel_volume) for label, name in TISSUE_LABELS.items()}


def tissue_volume_errors(reference_labels, labels) -> dict:
    """Relative volume error (%) of each tissue of ``labels`` against ``reference_labels``.

    Returns
    -------
    dict
        ``{"CSF": e, "GM": e, "WM": e, "mean_abs": mean |e|}``, ``e = 100 (V - V_ref) / V_ref``.
    """
    truth, found = tissue_volumes(reference_labels), tissue_volumes(labels)
    errors = {name: 100.0 * (found[name] - truth[name]) / truth[name] if truth[name] else float("nan")
              for name in truth}
    errors["mean_abs"] = float(np.nanmean([abs(errors[name]) for name in truth]))
    return errors


def score_image(unshifted, image, mask, tissue_model: TissueModel | None = None, reference_labels=None) -> dict:
    """PSNR (dB), SSIM and tissue-volume errors (%) of ``image`` against the ``unshifted`` one.

    Parameters
    ----------
    unshifted, image, mask : numpy.ndarray
        The truth, the image to score (shifted, or harmonized), the brain mask.
    tissue_model : TissueModel, optional
        Segmenter calibrated on the unshifted image (default: fitted here, seed 0).
    reference_labels : numpy.ndarray, optional
        The segmentation of the unshifted image (default: ``tissue_model.labels(unshifted)``).

    Returns
    -------
    dict
        ``psnr``, ``ssim``, ``volume_error_{CSF,GM,WM}`` and ``volume_error`` (mean absolute, %).
    """
    mask = _mask(mask, np.shape(unshifted))
    tissue_model = tissue_model or fit_tissue_model(unshifted, mask)
    if reference_labels is None:
        reference_labels = tissue_model.labels(unshifted, mask)
    errors = tissue_volume_errors(reference_labels, tissue_model.labels(image, mask))
    return {"psnr": psnr_in_mask(unshifted, image, mask), "ssim": ssim_in_mask(unshifted, image, mask),
            **{f"volume_error_{name}": errors[name] for name in ("CSF", "GM", "WM")},
            "volume_error": errors["mean_abs"]}
