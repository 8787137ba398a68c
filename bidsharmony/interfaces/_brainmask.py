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


def ball(radius_mm: float, spacing) -> np.ndarray:
    """A ball-shaped structuring element of ``radius_mm`` on a grid of ``spacing`` (mm)."""
    spacing = np.asarray(spacing, dtype=float)
    half = np.maximum(np.floor(radius_mm / spacing), 0).astype(int)
    grids = np.meshgrid(*[np.arange(-h, h + 1) * s for h, s in zip(half, spacing)], indexing="ij")
    return sum(g**2 for g in grids) <= radius_mm**2 + 1e-6


def closing(mask: np.ndarray, radius_mm: float, spacing) -> np.ndarray:
    """Morphological closing with a ball, padded so objects touching the border survive."""
    structure = ball(radius_mm, spacing)
    pad = max(structure.shape) // 2 + 1
    padded = np.pad(mask, pad)
    closed = ndi.binary_erosion(ndi.binary_dilation(padded, structure), structure)
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


def head_mask(data: np.ndarray, spacing=(1.0, 1.0, 1.0)) -> np.ndarray:
    """The head (everything that is not background) of a T1w image.

    Otsu's threshold on a lightly smoothed image, the largest component, a closing to bridge
    dark bone, and hole filling.
    """
    spacing = np.asarray(spacing, dtype=float)
    smooth = ndi.gaussian_filter(np.asarray(data, dtype=np.float32), sigma=1.0)
    positive = smooth[smooth > 0]
    if positive.size == 0:
        return np.zeros(data.shape, dtype=bool)
    # Otsu on the upper 98 % so that a few very bright voxels (vessels, fat) do not decide.
    threshold = otsu_threshold(np.clip(positive, None, np.percentile(positive, 99.5))) * 0.5
    mask = largest_component(smooth > threshold)
    mask = closing(mask, 6.0, spacing)
    return fill_holes(mask, slicewise=True)


#: Largest plausible intracranial volume (mL); a crude "brain" above it still holds scalp or neck.
MAX_BRAIN_ML = 2000.0


def crude_brain_mask(data: np.ndarray, spacing, head: np.ndarray | None = None) -> np.ndarray:
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
    scanners do not.
    """
    spacing = np.asarray(spacing, dtype=float)
    head = head_mask(data, spacing) if head is None else head
    smooth = ndi.gaussian_filter(np.asarray(data, dtype=np.float32), 0.5)
    means, _ = kmeans_1d(smooth[head], 4)
    tissue = head & (smooth > (means[0] + means[1]) / 2)
    voxel_ml = float(np.prod(spacing)) / 1000.0
    brain = tissue
    for radius in (5.0, 7.0, 9.0, 11.0, 13.0):
        radius = max(radius, 1.01 * float(spacing.max()))
        core = ndi.binary_erosion(tissue, structure=ball(radius, spacing))
        if not core.any():  # tiny images: nothing survives the erosion
            break
        brain = ndi.binary_dilation(largest_component(core), structure=ball(radius, spacing)) & tissue
        brain = fill_holes(largest_component(brain))
        if brain.sum() * voxel_ml <= MAX_BRAIN_ML:
            break
    return brain


def refine_with_tissues(
    data: np.ndarray,
    registered: np.ndarray,
    spacing,
    band_mm: float = 3.0,
) -> tuple[np.ndarray, dict]:
    """Correct a registered brain mask at its border with a three-class intensity model.

    Registration places the brain border within a voxel or two. Within ``band_mm`` of that
    border, a voxel whose intensity is brain tissue (the GM/WM classes of a 3-class
    k-means inside the dilated mask) and that touches the brain is added; a bright voxel
    brighter than any brain tissue (fat, marrow) is removed. Dark voxels keep the
    registration's decision: CSF inside the skull and bone outside look alike on a T1w, so
    intensity cannot tell them apart and the template's shape decides.

    Parameters
    ----------
    data : ndarray
        Bias-corrected T1w.
    registered : ndarray of bool
        Template brain mask brought to native space.
    spacing : sequence of float
        Voxel size in mm.
    band_mm : float
        Half-width of the border band that may change.

    Returns
    -------
    mask : ndarray of bool
    info : dict
        Class means and the number of voxels added and removed (for the report).
    """
    spacing = np.asarray(spacing, dtype=float)
    band_mm = max(band_mm, 1.01 * float(spacing.max()))  # at least one voxel
    outer = ndi.binary_dilation(registered, structure=ball(band_mm, spacing))
    inner = ndi.binary_erosion(registered, structure=ball(band_mm, spacing))
    band = outer & ~inner
    means, labels = kmeans_1d(data[outer], 3)
    classes = np.zeros(data.shape, dtype=np.int8)
    classes[outer] = labels + 1  # 1 dark (CSF, bone), 2 GM-like, 3 WM-like
    wm_values = data[outer][labels == 2]
    too_bright = np.percentile(wm_values, 99.5) if wm_values.size else np.inf

    tissue = (classes >= 2) & (data <= too_bright)
    grown = registered | (band & tissue)
    # Only tissue connected to the registered brain counts (not a blob of scalp).
    grown = largest_component(grown)
    removed = band & registered & (data > too_bright)
    refined = fill_holes(grown & ~removed)
    refined = largest_component(refined)
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
