"""Regional volumes from label images: one definition for the pipeline and the ground truth.

The participant level measures ROI volumes with :func:`roi_volumes`, and the synthetic
dataset computes its true volumes with the same function on its true label images, so an
error against ground truth is an error of the pipeline, never of two definitions.

Conventions
-----------
Tissue classes (``dseg``): 0 background, 1 CSF, 2 GM, 3 WM (T1w intensity order).
Volumes are in mm³ and counted on hard labels:

``volume_<label>``
    all voxels of the atlas label inside the brain mask;
``gm_<label>``
    those of them that are GM;
``volume_ICV``
    the brain mask (intracranial volume, as far as the mask reaches);
``volume_TotalBrain``, ``volume_GM``, ``volume_WM``, ``volume_CSF``
    tissue totals inside the brain mask (TotalBrain = GM + WM).
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

TISSUE_LABELS = {1: "CSF", 2: "GM", 3: "WM"}
GLOBAL_MEASURES = ("ICV", "TotalBrain", "GM", "WM", "CSF")


def read_label_table(path: str | os.PathLike) -> dict[int, str]:
    """Read a BIDS ``dseg.tsv`` (columns ``index`` and ``name``) into ``{index: name}``."""
    import pandas as pd

    table = pd.read_csv(path, sep="\t")
    missing = {"index", "name"} - set(table.columns)
    if missing:
        raise ValueError(
            f"{path}: a dseg.tsv needs the columns 'index' and 'name' (missing: "
            f"{', '.join(sorted(missing))})"
        )
    return {int(i): str(n) for i, n in zip(table["index"], table["name"]) if int(i) != 0}


def feature_columns(labels: dict[int, str]) -> list[str]:
    """The morphometry columns, in the order :func:`roi_volumes` writes them."""
    columns = [f"volume_{m}" for m in GLOBAL_MEASURES]
    for name in labels.values():
        columns += [f"volume_{name}", f"gm_{name}"]
    return columns


def roi_volumes(
    atlas: np.ndarray,
    tissues: np.ndarray,
    brain_mask: np.ndarray,
    voxel_volume: float,
    labels: dict[int, str],
) -> dict[str, float]:
    """Measure global and regional volumes (mm³) on one image grid.

    Parameters
    ----------
    atlas : ndarray of int
        Atlas labels on the image grid (0 = unlabelled).
    tissues : ndarray of int
        Tissue classes, see :data:`TISSUE_LABELS`.
    brain_mask : ndarray of bool
        Brain (intracranial) mask.
    voxel_volume : float
        Volume of one voxel in mm³.
    labels : dict
        ``{label index: name}`` of the atlas; labels absent from the image get 0.

    Returns
    -------
    dict
        ``{column: volume}`` with the columns of :func:`feature_columns`.
    """
    atlas = np.asarray(atlas)
    tissues = np.asarray(tissues)
    mask = np.asarray(brain_mask) > 0
    if not (atlas.shape == tissues.shape == mask.shape):
        raise ValueError(
            f"atlas {atlas.shape}, tissues {tissues.shape} and mask {mask.shape} must share a grid"
        )
    atlas = np.where(mask, atlas, 0).astype(np.int64)
    tissue = np.where(mask, tissues, 0).astype(np.int64)

    counts = {name: int(np.count_nonzero(tissue == value)) for value, name in TISSUE_LABELS.items()}
    out = {
        "volume_ICV": float(np.count_nonzero(mask)) * voxel_volume,
        "volume_TotalBrain": float(counts["GM"] + counts["WM"]) * voxel_volume,
        "volume_GM": float(counts["GM"]) * voxel_volume,
        "volume_WM": float(counts["WM"]) * voxel_volume,
        "volume_CSF": float(counts["CSF"]) * voxel_volume,
    }
    n_bins = max(int(atlas.max()), max(labels, default=0)) + 1
    total = np.bincount(atlas.ravel(), minlength=n_bins)
    grey = np.bincount(atlas[tissue == 2].ravel(), minlength=n_bins)
    for index, name in labels.items():
        out[f"volume_{name}"] = float(total[index]) * voxel_volume
        out[f"gm_{name}"] = float(grey[index]) * voxel_volume
    return out


def voxel_volume(img) -> float:
    """Volume in mm³ of one voxel of a nibabel image."""
    return float(abs(np.linalg.det(img.affine[:3, :3])))


def roi_volumes_from_files(
    atlas_file: str | os.PathLike,
    tissues_file: str | os.PathLike,
    mask_file: str | os.PathLike,
    labels: dict[int, str],
) -> dict[str, float]:
    """:func:`roi_volumes` on three NIfTI files that share a grid."""
    import nibabel as nb

    atlas_img, tissue_img, mask_img = (nb.load(Path(f)) for f in (atlas_file, tissues_file, mask_file))
    for name, img in (("tissue", tissue_img), ("mask", mask_img)):
        if img.shape != atlas_img.shape or not np.allclose(img.affine, atlas_img.affine, atol=1e-3):
            raise ValueError(f"{name} image does not share the atlas grid: {img.get_filename()}")
    return roi_volumes(
        np.asanyarray(atlas_img.dataobj),
        np.asanyarray(tissue_img.dataobj),
        np.asanyarray(mask_img.dataobj),
        voxel_volume(atlas_img),
        labels,
    )
