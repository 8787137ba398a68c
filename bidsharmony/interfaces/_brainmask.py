"""Intensity and morphology steps of brain extraction (numpy/scipy, no ANTs).

The brain extraction of :mod:`bidsharmony.interfaces.ants` needs a head mask (for N4 and to
find the head), a crude brain mask (only to start the registration to a brain-only template
from the right place) and a tissue-based refinement of the registered template mask. All
sizes here are in millimetres and converted to voxels with the image's spacing, so the
same code serves 1 mm data and 4 mm test images.
"""

from __future__ import annotations

import numpy as np
from scipy import ndimage as ndi


def otsu_threshold(values: np.ndarray, bins: int = 256) -> float:
    """Otsu's threshold of a 1D sample (between-class variance maximised on a histogram)."""
    values = np.asarray(values, dtype=np.float64).ravel()
    hist, edges = np.histogram(values, bins=bins)
    centres = (edges[:-1] + edges[1:]) / 2
    weight_low = np.cumsum(hist)
    weight_high = weight_low[-1] - weight_low
    mean_low = np.cumsum(hist * centres) / np.maximum(weight_low, 1)
    total = (hist * centres).sum()
    mean_high = (total - np.cumsum(hist * centres)) / np.maximum(weight_high, 1)
    between = weight_low * weight_high * (mean_low - mean_high) ** 2
    return float(centres[np.argmax(between[:-1])])


#: Balls up to this radius (in voxels) are applied as structuring elements, larger ones
#: through the distance transform: at 1 mm, dilating by a 3 mm ball took 1.2 s, by a 13 mm
#: ball 65 s, while a distance transform takes ~4 s whatever the radius (measured).
_MAX_ELEMENT_RADIUS_VOXELS = 3.0


def ball(radius_mm: float, spacing) -> np.ndarray:
    """A ball-shaped structuring element of ``radius_mm`` on a grid of ``spacing`` (mm)."""
    spacing = np.asarray(spacing, dtype=float)
    half = np.maximum(np.floor(radius_mm / spacing), 0).astype(int)
    grids = np.meshgrid(*[np.arange(-h, h + 1) * s for h, s in zip(half, spacing)], indexing="ij")
    return sum(g**2 for g in grids) <= radius_mm**2 + 1e-6


def _small_ball(radius_mm: float, spacing) -> bool:
    return radius_mm / float(np.min(spacing)) <= _MAX_ELEMENT_RADIUS_VOXELS


def erode(mask: np.ndarray, radius_mm: float, spacing) -> np.ndarray:
    """Erosion by a ball of ``radius_mm`` (the image border counts as background)."""
    mask = np.asarray(mask, dtype=bool)
    if _small_ball(radius_mm, spacing):
        return ndi.binary_erosion(mask, structure=ball(radius_mm, spacing))
    padded = np.pad(mask, 1)
    eroded = ndi.distance_transform_edt(padded, sampling=spacing) > radius_mm + 1e-6
    return eroded[1:-1, 1:-1, 1:-1]


def dilate(mask: np.ndarray, radius_mm: float, spacing) -> np.ndarray:
    """Dilation by a ball of ``radius_mm``: voxels within that distance of the mask."""
    mask = np.asarray(mask, dtype=bool)
    if not mask.any():
        return mask.copy()
    if _small_ball(radius_mm, spacing):
        return ndi.binary_dilation(mask, structure=ball(radius_mm, spacing))
    return ndi.distance_transform_edt(~mask, sampling=spacing) <= radius_mm + 1e-6


def closing(mask: np.ndarray, radius_mm: float, spacing) -> np.ndarray:
    """Morphological closing with a ball, padded so objects touching the border survive."""
    pad = int(np.ceil(radius_mm / float(np.min(spacing)))) + 1
    padded = np.pad(np.asarray(mask, dtype=bool), pad)
    closed = erode(dilate(padded, radius_mm, spacing), radius_mm, spacing)
    return closed[pad:-pad, pad:-pad, pad:-pad]


def largest_component(mask: np.ndarray) -> np.ndarray:
    """The largest 6-connected component of a binary mask (empty stays empty)."""
    labels, count = ndi.label(mask)
    if count <= 1:
        return labels > 0
    sizes = np.bincount(labels.ravel())
    sizes[0] = 0
    return labels == int(np.argmax(sizes))


def fill_holes(mask: np.ndarray, slicewise: bool = False) -> np.ndarray:
    """Fill enclosed holes in 3D and, with ``slicewise``, also slice by slice on each axis.

    The slice-wise pass closes cavities (mouth, sinuses, ear canals) that open to the
    outside through a thin channel in 3D; it is for head masks only, because it would also
    close the concavities between brain lobes.
    """
    filled = ndi.binary_fill_holes(mask)
    if slicewise:
        for axis in range(3):
            filled = _fill_along(filled, axis)
    return filled


def _fill_along(mask: np.ndarray, axis: int) -> np.ndarray:
    moved = np.moveaxis(mask, axis, 0)
    out = np.empty_like(moved)
    for index, plane in enumerate(moved):
        out[index] = ndi.binary_fill_holes(plane)
    return np.moveaxis(out, 0, axis)


#: Head and crude brain masks are computed on a grid no finer than this (mm): they only
#: need to be right to a few mm, and at 1 mm the morphology took ~25 s (measured).
COARSE_GRID_MM = 2.0


def _block_factor(spacing) -> int:
    return max(1, int(np.floor(COARSE_GRID_MM / float(np.max(spacing)) + 1e-6)))


def _block_mean(data: np.ndarray, factor: int) -> np.ndarray:
    """Average of ``factor``³ blocks (the image is cropped to whole blocks)."""
    shape = [n // factor for n in data.shape]
    cropped = data[: shape[0] * factor, : shape[1] * factor, : shape[2] * factor]
    return cropped.reshape(shape[0], factor, shape[1], factor, shape[2], factor).mean(axis=(1, 3, 5))


def _block_repeat(mask: np.ndarray, factor: int, shape) -> np.ndarray:
    """Back onto the fine grid: each block's value to its voxels; the cropped rim copies its
    nearest block."""
    fine = mask.repeat(factor, 0).repeat(factor, 1).repeat(factor, 2)
    pad = [(0, n - m) for n, m in zip(shape, fine.shape)]
    return np.pad(fine, pad, mode="edge")


def _on_coarse_grid(func, data: np.ndarray, spacing) -> np.ndarray:
    """``func(data, spacing)`` (a mask) computed on a grid of about 2 mm, returned at full size."""
    spacing = np.asarray(spacing, dtype=float)
    factor = _block_factor(spacing)
    if factor == 1:
        return func(np.asarray(data, dtype=np.float32), spacing)
    coarse = _block_mean(np.asarray(data, dtype=np.float32), factor)
    return _block_repeat(func(coarse, spacing * factor), factor, data.shape)


def head_mask(data: np.ndarray, spacing=(1.0, 1.0, 1.0)) -> np.ndarray:
    """The head (everything that is not background) of a T1w image.

    Otsu's threshold on a lightly smoothed image, the largest component, a closing to bridge
    dark bone, and hole filling; on a grid of about 2 mm.
    """
    return _on_coarse_grid(_head_mask, data, spacing)


def _head_mask(data: np.ndarray, spacing) -> np.ndarray:
    smooth = ndi.gaussian_filter(data, sigma=1.0)
    positive = smooth[smooth > 0]
    if positive.size == 0:
        return np.zeros(data.shape, dtype=bool)
    # Otsu below the 99.5th percentile, so that a few very bright voxels do not decide.
    threshold = otsu_threshold(np.clip(positive, None, np.percentile(positive, 99.5))) * 0.5
    mask = largest_component(smooth > threshold)
    mask = closing(mask, 6.0, spacing)
    return fill_holes(mask, slicewise=True)


#: Largest plausible intracranial volume (mL); a crude "brain" above it still holds scalp or neck.
MAX_BRAIN_ML = 2000.0


def crude_brain_mask(data: np.ndarray, spacing) -> np.ndarray:
    """A rough brain mask of a whole-head T1w, only good enough to start a registration.

    On a T1w the brain is separated from the bright scalp layers (marrow, fat) and the neck
    by dark CSF and bone. So: split the head's intensities in four k-means classes and keep
    everything above the darkest (tissue of any kind); erode, which removes the scalp
    shells (a few mm thick each) and cuts thin bridges; keep the largest component, dilate
    it back by the same radius and fill its holes (ventricles). The erosion starts at 5 mm
    and grows until the result is no larger than a brain can be (:data:`MAX_BRAIN_ML`): at
    coarse voxels, or where CSF is bright, the thin dark layers blur and the brain stays
    joined to the neck at small radii.

    Only the order of intensities matters, so the monotone intensity differences between
    scanners do not. Computed on a grid of about 2 mm.
    """
    return _on_coarse_grid(_crude_brain_mask, data, spacing)


#: Height (mm) of the head kept below its top, as FSL's robustfov: the brain and cerebellum
#: lie within it, the neck and shoulders of a large field of view do not.
HEAD_FOV_MM = 170.0


def below_vertex(head: np.ndarray, spacing, height_mm: float = HEAD_FOV_MM) -> np.ndarray:
    """The part of a RAS head mask within ``height_mm`` below its top (the vertex)."""
    levels = np.nonzero(head.any(axis=(0, 1)))[0]
    if levels.size == 0:
        return head
    lowest = levels.max() - int(np.floor(height_mm / float(spacing[2])))
    kept = head.copy()
    kept[:, :, : max(lowest, 0)] = False
    return kept


def _crude_brain_mask(data: np.ndarray, spacing) -> np.ndarray:
    # without the neck, the largest component cannot be the neck and the centre of mass
    # that starts the registration is the brain's
    head = below_vertex(_head_mask(data, spacing), spacing)
    smooth = ndi.gaussian_filter(data, 0.5)
    means, _ = kmeans_1d(smooth[head], 4)
    tissue = head & (smooth > (means[0] + means[1]) / 2)
    voxel_ml = float(np.prod(spacing)) / 1000.0
    brain = tissue
    for radius in (5.0, 7.0, 9.0, 11.0, 13.0):
        radius = max(radius, 1.01 * float(spacing.max()))
        core = erode(tissue, radius, spacing)
        if not core.any():  # tiny images: nothing survives the erosion
            break
        brain = dilate(largest_component(core), radius, spacing) & tissue
        brain = fill_holes(largest_component(brain))
        if brain.sum() * voxel_ml <= MAX_BRAIN_ML:
            break
    return brain


def refine_with_tissues(
    data: np.ndarray,
    registered: np.ndarray,
    spacing,
    plausible: np.ndarray | None = None,
    band_mm: float = 3.0,
) -> tuple[np.ndarray, dict]:
    """Correct a registered brain mask at its border with a three-class intensity model.

    Registration places the brain border within a voxel or two. Within ``band_mm`` of that
    border, a voxel outside the mask whose intensity is brain tissue (the GM/WM classes of
    a 3-class k-means inside the dilated mask), that touches the brain and where the
    template says brain tissue is ``plausible`` is added; a voxel brighter than any brain
    tissue (fat) is removed. Dark voxels keep the registration's decision: CSF inside the
    skull and bone outside look alike on a T1w, so intensity cannot tell them apart and
    the template's shape decides.

    Parameters
    ----------
    data : ndarray
        Bias-corrected T1w.
    registered : ndarray of bool
        Template brain mask brought to native space.
    spacing : sequence of float
        Voxel size in mm.
    plausible : ndarray of bool, optional
        Where brain tissue may be added (e.g. the template's GM + WM probability brought to
        native space, > 0.05); keeps bone marrow, which is as bright as GM, from being
        added. Default: anywhere in the band.
    band_mm : float
        Half-width of the border band that may change (at least one voxel).

    Returns
    -------
    mask : ndarray of bool
    info : dict
        Class means and the number of voxels added and removed (for the report).
    """
    spacing = np.asarray(spacing, dtype=float)
    band_mm = max(band_mm, 1.01 * float(spacing.max()))
    outer = dilate(registered, band_mm, spacing)
    inner = erode(registered, band_mm, spacing)
    band = outer & ~inner
    means, labels = kmeans_1d(data[outer], 3)
    classes = np.zeros(data.shape, dtype=np.int8)
    classes[outer] = labels + 1  # 1 dark (CSF, bone), 2 GM-like, 3 WM-like
    wm_values = data[outer][labels == 2]
    too_bright = np.percentile(wm_values, 99.5) if wm_values.size else np.inf

    tissue = (classes >= 2) & (data <= too_bright)
    if plausible is not None:
        tissue &= plausible
    # Only tissue connected to the registered brain counts (not a blob of scalp).
    grown = largest_component(registered | (band & tissue))
    removed = band & registered & (data > too_bright)
    refined = largest_component(fill_holes(grown & ~removed))
    info = {
        "class_means": [float(m) for m in means],
        "added_voxels": int(np.count_nonzero(refined & ~registered)),
        "removed_voxels": int(np.count_nonzero(registered & ~refined)),
    }
    return refined, info


def kmeans_1d(values: np.ndarray, k: int, iterations: int = 50) -> tuple[np.ndarray, np.ndarray]:
    """Deterministic 1D k-means (quantile start); classes sorted by increasing mean.

    Returns
    -------
    means : ndarray, shape (k,)
    labels : ndarray of int, values in ``0..k-1``
    """
    values = np.asarray(values, dtype=np.float64).ravel()
    means = np.quantile(values, (np.arange(k) + 0.5) / k)
    labels = np.zeros(values.shape, dtype=np.int64)
    for _ in range(iterations):
        cuts = (means[:-1] + means[1:]) / 2
        labels = np.searchsorted(cuts, values)
        updated = np.array([values[labels == c].mean() if np.any(labels == c) else means[c] for c in range(k)])
        if np.allclose(updated, means):
            break
        means = np.sort(updated)
    return means, labels
