"""Scoring helpers of the interface tests (Dice, truth read in RAS voxel order)."""

from __future__ import annotations

import os

import nibabel as nb
import numpy as np


def dice(a, b) -> float:
    """Dice overlap of two binary arrays."""
    a, b = np.asarray(a) > 0, np.asarray(b) > 0
    return float(2 * np.count_nonzero(a & b) / max(np.count_nonzero(a) + np.count_nonzero(b), 1))


def ras_data(path) -> np.ndarray:
    """Voxel data of an image in RAS voxel order (the truth is stored in the site's order)."""
    return np.asanyarray(nb.as_closest_canonical(nb.load(os.fspath(path))).dataobj)
