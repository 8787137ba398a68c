"""Check a T1w image before anything else touches it, and hand on a clean RAS copy.

Every later step (ITK through antspyx, nibabel, the morphometry) assumes one 3D volume of
finite numbers on a plausible, orthonormal grid. Checking this once, up front, turns what
would be a numpy or ITK traceback deep in a workflow into one line that names the file and
says how to fix it (:class:`~bidsharmony.errors.InputDataError`).
"""

from __future__ import annotations

import gzip
import os
import zlib
from pathlib import Path

import nibabel as nb
import numpy as np
from nibabel.filebasedimages import ImageFileError
from nipype.interfaces.base import BaseInterfaceInputSpec, File, SimpleInterface, TraitedSpec

from ..errors import InputDataError
from ..utils.io import atomic_path, atomic_write_text

MIN_VOXEL_MM = 0.2
MAX_VOXEL_MM = 8.0
MIN_SLICES = 8
# Largest |cos| between two voxel axes that is still rounding, not shear: 1e-3 moves a voxel
# 100 mm from the origin by 0.1 mm. Smaller deviations are removed (and reported).
MAX_AXIS_COSINE = 1e-3
# Errors nibabel, gzip and numpy raise on unreadable, truncated or corrupt files.
_READ_ERRORS = (ImageFileError, OSError, EOFError, ValueError, zlib.error, gzip.BadGzipFile, MemoryError)


def _reject(path, problem: str, fix: str):
    """Raise the one-line error every check uses: file, problem, fix."""
    raise InputDataError(f"{Path(path).name}: {problem}; {fix}")


def _check_gzip_stream(path) -> None:
    """Decompress a ``.gz`` file to its end, so that its CRC and length are verified.

    nibabel reads only the bytes the header asks for and never reaches the gzip trailer:
    garbage inside the compressed stream then decodes into a plausible-looking image that
    would go through the whole workflow (and can stall the registration on noise).
    """
    with gzip.open(os.fspath(path), "rb") as stream:
        while stream.read(1 << 22):
            pass


def _load(path) -> tuple[nb.Nifti1Image, np.ndarray]:
    """Read header and all voxels, so that truncation shows up here and not later."""
    if not Path(path).is_file():
        _reject(path, "file not found", "check the path and the BIDS dataset")
    try:
        if os.fspath(path).endswith(".gz"):
            _check_gzip_stream(path)
        img = nb.load(os.fspath(path))
        if not isinstance(img, (nb.Nifti1Image, nb.Nifti2Image)):
            _reject(path, f"is a {type(img).__name__}, not NIfTI", "convert it to NIfTI (.nii.gz)")
        data = np.asanyarray(img.dataobj)
    except InputDataError:
        raise
    except _READ_ERRORS as exc:
        reason = " ".join(str(exc).replace(os.fspath(path), Path(path).name).split()) or type(exc).__name__
        _reject(
            path,
            f"cannot be read as NIfTI ({type(exc).__name__}: {reason[:120]})",
            "the file is truncated or corrupt - copy or convert it again from the scanner data",
        )
    return img, data


def _squeeze_to_3d(path, data: np.ndarray, notes: list[str]) -> np.ndarray:
    """Accept 3D, or 4D+ with singleton extra dimensions (squeezed); reject the rest."""
    if data.ndim < 3:
        _reject(path, f"is {data.ndim}D (shape {data.shape}), not a 3D volume", "provide a 3D T1w image")
    if data.ndim > 3:
        extra = data.shape[3:]
        if int(np.prod(extra)) != 1:
            _reject(
                path,
                f"is {data.ndim}D with {int(np.prod(extra))} volumes (shape {data.shape})",
                "a T1w must be one 3D volume - keep one volume (or average them) and save it as 3D",
            )
        data = data.reshape(data.shape[:3])
        notes.append(f"squeezed a {len(extra) + 3}D image with one volume to 3D")
    if min(data.shape) < MIN_SLICES:
        _reject(
            path,
            f"has only {min(data.shape)} slices along one axis (shape {data.shape})",
            "provide a whole-brain 3D T1w volume",
        )
    return data


def _check_values(path, data: np.ndarray) -> np.ndarray:
    """Real, finite and not constant; returned as float32."""
    if data.dtype.fields is not None or np.iscomplexobj(data):
        _reject(path, f"has voxel type {data.dtype} (RGB or complex)", "save the T1w magnitude as a scalar image")
    data = np.asarray(data, dtype=np.float32)
    bad = np.count_nonzero(~np.isfinite(data))
    if bad:
        _reject(path, f"has {bad} NaN or infinite voxels", "replace them (e.g. by 0) or re-export the image")
    low, high = float(data.min()), float(data.max())
    if high - low <= 1e-6 * max(abs(high), 1.0):
        _reject(path, f"is empty (every voxel is {low:g})", "the file holds no image - re-export it")
    return data


def _check_grid(path, img) -> np.ndarray:
    """Voxel sizes within [0.2, 8] mm and voxel axes (nearly) orthogonal; return the affine.

    Tiny non-orthogonality (rounding in the header) is removed by the polar decomposition of
    the direction matrix; real shear is rejected, because ITK refuses non-orthonormal
    directions and nibabel would silently keep them.
    """
    if int(img.header["qform_code"]) == 0 and int(img.header["sform_code"]) == 0:
        # nibabel then assumes a radiological (LAS) grid from pixdim alone: left and right
        # would be a guess, and zero voxel sizes silently become 1 mm
        _reject(path, "has no orientation in its header (qform_code and sform_code are both 0)",
                "convert the scan again from DICOM (e.g. with dcm2niix) so that the header holds its orientation")
    affine = np.asarray(img.affine, dtype=np.float64)
    if not np.all(np.isfinite(affine)):
        _reject(path, "has a non-finite affine (NaN in the header)", "fix the qform/sform of the header")
    linear = affine[:3, :3]
    sizes = np.linalg.norm(linear, axis=0)
    if np.any(sizes < MIN_VOXEL_MM) or np.any(sizes > MAX_VOXEL_MM):
        shown = "x".join(f"{s:.3g}" for s in sizes)
        _reject(
            path,
            f"has an implausible voxel size ({shown} mm; expected {MIN_VOXEL_MM}-{MAX_VOXEL_MM} mm)",
            "fix pixdim and the qform/sform of the header",
        )
    directions = linear / sizes
    cosines = np.abs(directions.T @ directions - np.eye(3))
    if abs(np.linalg.det(directions)) < 0.5 or cosines.max() > MAX_AXIS_COSINE:
        _reject(
            path,
            f"has a sheared or singular affine (voxel axes {np.degrees(np.arcsin(min(cosines.max(), 1))):.2f} deg "
            "from orthogonal)",
            "reslice it to an orthogonal grid or fix the qform/sform of the header",
        )
    return affine


def _orthonormalized(affine: np.ndarray) -> np.ndarray:
    """The affine with its direction matrix replaced by the nearest rotation (same sizes)."""
    linear = affine[:3, :3]
    sizes = np.linalg.norm(linear, axis=0)
    u, _, vt = np.linalg.svd(linear / sizes)
    fixed = affine.copy()
    fixed[:3, :3] = (u @ vt) * sizes
    return fixed


def validate_t1w(path, notes: list[str] | None = None) -> nb.Nifti1Image:
    """Check a T1w image and return it as a float32, RAS-oriented NIfTI image.

    Parameters
    ----------
    path : path-like
        The T1w NIfTI file.
    notes : list of str, optional
        Receives one line per thing checked or changed (for the report).

    Returns
    -------
    nibabel.Nifti1Image
        In memory: float32 data (scaling applied), voxel axes permuted/flipped to RAS, the
        same world position for every voxel, qform = sform = that affine.

    Raises
    ------
    bidsharmony.errors.InputDataError
        With one line naming the file, the problem and the fix, if the file is unreadable,
        truncated, not 3D, has NaN/Inf voxels, is empty, has no orientation (qform and sform
        codes 0), an implausible voxel size or a sheared/singular affine.
    """
    notes = [] if notes is None else notes
    img, data = _load(path)
    data = _squeeze_to_3d(path, data, notes)
    data = _check_values(path, data)
    affine = _check_grid(path, img)
    orthonormal = _orthonormalized(affine)
    shift = np.abs(orthonormal - affine).max()
    if shift > 1e-6:
        notes.append(f"removed rounding-level non-orthogonality of the affine (max change {shift:.2e})")
    orientation = "".join(nb.aff2axcodes(affine))
    notes.append(f"input orientation {orientation}, shape {data.shape}, dtype {img.get_data_dtype()}")
    notes.append("voxel size " + "x".join(f"{s:.3g}" for s in np.linalg.norm(affine[:3, :3], axis=0)) + " mm")
    notes.append("values finite, not constant; converted to float32 with the header scaling applied")

    clean = nb.Nifti1Image(data, orthonormal)
    ras = nb.as_closest_canonical(clean)
    if ras is not clean:
        notes.append(f"reoriented {orientation} -> RAS (voxel order only, world positions kept)")
    out = nb.Nifti1Image(np.asarray(ras.dataobj, dtype=np.float32), ras.affine)
    out.header.set_xyzt_units("mm")
    out.set_qform(ras.affine, code=1)
    out.set_sform(ras.affine, code=1)
    return out


def _stem(path) -> str:
    name = Path(path).name
    for ext in (".nii.gz", ".nii"):
        if name.endswith(ext):
            return name[: -len(ext)]
    return Path(name).stem


class _ValidateT1wInputSpec(BaseInterfaceInputSpec):
    in_file = File(exists=True, mandatory=True, desc="T1w NIfTI image to check")


class _ValidateT1wOutputSpec(TraitedSpec):
    out_file = File(exists=True, desc="the image as float32 NIfTI, reoriented to RAS")
    out_report = File(exists=True, desc="text file listing what was checked and changed")


class ValidateT1w(SimpleInterface):
    """Check a T1w image (see :func:`validate_t1w`) and write its RAS float32 copy."""

    input_spec = _ValidateT1wInputSpec
    output_spec = _ValidateT1wOutputSpec

    def _run_interface(self, runtime):
        notes: list[str] = []
        img = validate_t1w(self.inputs.in_file, notes)
        stem = _stem(self.inputs.in_file)
        out_file = Path(runtime.cwd) / f"{stem}_ras.nii.gz"
        with atomic_path(out_file) as tmp:
            img.to_filename(tmp)
        report = Path(runtime.cwd) / f"{stem}_validation.txt"
        lines = [f"T1w validation of {Path(self.inputs.in_file).name}: passed"] + [f"- {n}" for n in notes]
        atomic_write_text(report, "\n".join(lines) + "\n")
        self._results["out_file"] = str(out_file)
        self._results["out_report"] = str(report)
        return runtime
