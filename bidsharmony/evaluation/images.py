"""Image-similarity metrics restricted to a brain mask (for image harmonizers).

PSNR and SSIM come from :mod:`skimage.metrics`; both are computed against a reference
image (e.g. the same traveling subject scanned at the reference site) and only inside the
mask, so the background does not inflate the scores. ``data_range`` defaults to the
reference's range inside the mask.
"""

from __future__ import annotations

import numpy as np

from ..datasets.truth import dice

__all__ = ["brain_percentiles", "dice", "dice_per_label", "distribution_distance", "psnr_in_mask", "ssim_in_mask"]

PERCENTILES = np.arange(1, 100)


def brain_percentiles(image: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """The 1st-99th percentiles of ``image`` inside ``mask`` (no reference image needed)."""
    return np.percentile(np.asarray(image, dtype=np.float64)[np.asarray(mask, dtype=bool)], PERCENTILES)


def distribution_distance(percentiles: np.ndarray, reference_percentiles: np.ndarray) -> float:
    """1-Wasserstein distance between two intensity distributions given by their
    :func:`brain_percentiles`, in units of the reference's interquartile range.

    0 = the same distribution; 1 = off by one reference IQR on average. Blind to anatomy.
    """
    reference = np.asarray(reference_percentiles, dtype=np.float64)
    scale = float(reference[74] - reference[24]) or 1.0
    return float(np.mean(np.abs(np.asarray(percentiles, dtype=np.float64) - reference)) / scale)


def _data_range(reference, mask, data_range):
    if data_range is not None:
        return float(data_range)
    values = np.asarray(reference, dtype=np.float64)[mask]
    return float(values.max() - values.min()) or 1.0


def psnr_in_mask(reference: np.ndarray, image: np.ndarray, mask: np.ndarray, data_range: float | None = None) -> float:
    """Peak signal-to-noise ratio (dB) of ``image`` vs ``reference`` over the voxels of ``mask``."""
    from skimage.metrics import peak_signal_noise_ratio

    mask = np.asarray(mask, bool)
    reference = np.asarray(reference, dtype=np.float64)
    image = np.asarray(image, dtype=np.float64)
    return float(peak_signal_noise_ratio(reference[mask], image[mask],
                                         data_range=_data_range(reference, mask, data_range)))


def ssim_in_mask(reference: np.ndarray, image: np.ndarray, mask: np.ndarray, data_range: float | None = None,
                 win_size: int = 7) -> float:
    """Mean structural similarity of ``image`` vs ``reference`` over the voxels of ``mask``.

    The SSIM map is computed on the whole image (2D or 3D, Gaussian-free 7-voxel window) and
    averaged inside the mask; ``win_size`` shrinks automatically for small images.
    """
    from skimage.metrics import structural_similarity

    mask = np.asarray(mask, bool)
    reference = np.asarray(reference, dtype=np.float64)
    image = np.asarray(image, dtype=np.float64)
    win_size = min(win_size, *[s if s % 2 else s - 1 for s in reference.shape])
    _, ssim_map = structural_similarity(reference, image, data_range=_data_range(reference, mask, data_range),
                                        win_size=win_size, full=True)
    return float(ssim_map[mask].mean())


def dice_per_label(truth: np.ndarray, predicted: np.ndarray, labels) -> dict:
    """Dice overlap of each label (``{label: dice}``) between two label images."""
    truth, predicted = np.asarray(truth), np.asarray(predicted)
    return {label: dice(truth == label, predicted == label) for label in labels}
