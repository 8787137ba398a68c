"""Numerics of the cache builder, shared with bidsharmony.datasets.synthetic: anti-aliased
downsampling and label resampling between grids."""

from __future__ import annotations

import numpy as np



def antialias_sigma(source_mm: float, target_mm: float) -> float:
    """Gaussian sigma (mm) that brings a ``source_mm`` image to ``target_mm`` resolution.

    The kernel FWHM is ``sqrt(target² - source²)``: the result then has the effective
    resolution of the coarser grid, which keeps downsampling free of aliasing.
    """
    fwhm = np.sqrt(max(target_mm**2 - source_mm**2, 0.0))
    return float(fwhm / (2.0 * np.sqrt(2.0 * np.log(2.0))))


def _smooth_stride(data: np.ndarray, factor: int) -> np.ndarray:
    """Anti-alias smooth a 1 mm volume, then keep every ``factor``-th voxel."""
    from scipy import ndimage

    smooth = ndimage.gaussian_filter(
        np.asarray(data, np.float32), antialias_sigma(1.0, factor), mode="constant", truncate=3.0
    )
    return smooth[::factor, ::factor, ::factor]


def _strided_affine(affine: np.ndarray, factor: int) -> np.ndarray:
    """Affine of ``data[::factor, ::factor, ::factor]``: same first voxel, larger voxels."""
    out = np.array(affine, dtype=float)
    out[:3, :3] *= factor
    return out


def _mode(samples: np.ndarray) -> np.ndarray:
    """Most frequent value of each row (ties go to the smallest value)."""
    ordered = np.sort(samples, axis=1)
    runs = np.ones(ordered.shape, dtype=np.int16)
    for j in range(1, ordered.shape[1]):
        same = ordered[:, j] == ordered[:, j - 1]
        runs[:, j] = np.where(same, runs[:, j - 1] + 1, 1)
    return ordered[np.arange(len(ordered)), runs.argmax(axis=1)]


def resample_labels(
    labels: np.ndarray,
    source_affine: np.ndarray,
    target_affine: np.ndarray,
    target_shape: tuple[int, int, int],
    n_sub: int = 1,
) -> np.ndarray:
    """Resample a label image onto another grid (world coordinates, no registration).

    Parameters
    ----------
    labels : ndarray of int
        Source label image.
    source_affine, target_affine : ndarray (4, 4)
        Voxel-to-world affines.
    target_shape : tuple of int
        Shape of the target grid.
    n_sub : int
        1: nearest neighbour. >1: the mode of ``n_sub³`` nearest-neighbour samples spread
        over each target voxel (the centre sample counted twice, so that it breaks ties),
        which keeps labels' volumes when the target voxels are larger.

    Returns
    -------
    ndarray
        Labels on the target grid, 0 outside the source field of view.
    """
    from scipy import ndimage

    to_source = np.linalg.solve(source_affine, target_affine)
    offsets = [np.zeros(3)]
    if n_sub > 1:
        steps = (np.arange(n_sub) + 0.5) / n_sub - 0.5
        offsets += list(np.stack(np.meshgrid(steps, steps, steps, indexing="ij"), -1).reshape(-1, 3))
    out = np.zeros(target_shape, dtype=labels.dtype)
    # slab by slab along the first axis keeps the coordinate arrays small
    slab = max(1, 2_000_000 // (int(np.prod(target_shape[1:])) * len(offsets)))
    for start in range(0, target_shape[0], slab):
        stop = min(start + slab, target_shape[0])
        grid = np.indices((stop - start, *target_shape[1:]), dtype=np.float64).reshape(3, -1)
        grid[0] += start
        samples = np.empty((grid.shape[1], len(offsets)), dtype=np.int32)
        for k, offset in enumerate(offsets):
            coords = to_source[:3, :3] @ (grid + offset[:, None]) + to_source[:3, 3:]
            samples[:, k] = ndimage.map_coordinates(labels, coords, order=0, mode="constant", cval=0)
        values = samples[:, 0] if n_sub == 1 else _mode(samples)
        out[start:stop] = values.reshape((stop - start, *target_shape[1:]))
    return out


def _fill_holes(mask: np.ndarray) -> np.ndarray:
    from scipy import ndimage

    return ndimage.binary_fill_holes(mask)
