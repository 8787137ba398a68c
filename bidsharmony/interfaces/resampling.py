"""Resampling through ITK transforms (antsApplyTransforms via antspyx).

Threads and seed: see :mod:`bidsharmony.interfaces._common`.
"""

from __future__ import annotations

import os
from pathlib import Path

import nibabel as nb
import numpy as np
from nipype.interfaces.base import File, InputMultiObject, SimpleInterface, TraitedSpec, isdefined, traits

from ._antspy import run_antspyx
from ._common import _like, _read_float, _save, _stem, _ThreadedInputSpec, _to_numpy_on

INTERPOLATIONS = ("linear", "nearestNeighbor", "genericLabel")
LABEL_INTERPOLATIONS = ("nearestNeighbor", "genericLabel")
OUT_DTYPES = ("uint8", "int16", "uint16", "int32", "float32", "float64")


def _label_dtype(values: np.ndarray) -> str:
    """Smallest integer type holding the labels of ``values``."""
    low, high = (int(values.min()), int(values.max())) if values.size else (0, 0)
    for dtype in ("uint8", "int16", "int32"):
        info = np.iinfo(dtype)
        if info.min <= low and high <= info.max:
            return dtype
    return "int64"


def apply_transforms_files(
    input_image,
    reference_image,
    transforms,
    output_image,
    interpolation="linear",
    out_dtype=None,
    invert_transform_flags=None,
) -> dict:
    """Resample ``input_image`` onto ``reference_image`` through ``transforms``.

    Parameters
    ----------
    input_image, reference_image : str
        Image to move, and the grid to put it on.
    transforms : list of str
        ITK transforms in antsApplyTransforms order (the last is applied first to points
        of the reference); a registration's single composite ``.h5`` file is enough.
    output_image : str
        Output file.
    interpolation : {"linear", "nearestNeighbor", "genericLabel"}
        The last two keep labels: the output is rounded and written as an integer type.
    out_dtype : str, optional
        Output type; default: float32 for linear, the smallest integer type holding the
        input labels otherwise.
    invert_transform_flags : list of bool, optional
        Invert the corresponding (affine) transforms. Given explicitly always, because
        antspyx otherwise guesses and inverts the first of two transforms when it is a
        ``.mat`` file.

    Returns
    -------
    dict
        ``output_image``.
    """
    import ants

    flags = list(invert_transform_flags or [False] * len(transforms))
    if len(flags) != len(transforms):
        raise ValueError(f"{len(flags)} invert flags for {len(transforms)} transforms")
    moving = _read_float(input_image)
    # The reference is read as float: antspyx casts its output to the reference's pixel
    # type, which would truncate a float image resampled onto a uint8 mask grid.
    fixed = _read_float(reference_image)
    interpolator = {"linear": "linear", "nearestNeighbor": "nearestNeighbor", "genericLabel": "genericLabel"}
    warped = ants.apply_transforms(
        fixed=fixed,
        moving=moving,
        transformlist=[os.fspath(t) for t in transforms],
        interpolator=interpolator[interpolation],
        whichtoinvert=flags,
        singleprecision=True,
    )
    data = _to_numpy_on(reference_image, warped)
    is_labels = interpolation in LABEL_INTERPOLATIONS
    if is_labels:
        labels_in = np.asanyarray(nb.load(os.fspath(input_image)).dataobj)
        data = np.rint(data)
        dtype = out_dtype or _label_dtype(labels_in)
    else:
        dtype = out_dtype or "float32"
    _save(_like(nb.load(os.fspath(reference_image)), data, np.dtype(dtype)), output_image)
    return {"output_image": output_image}


class _ApplyTransformsInputSpec(_ThreadedInputSpec):
    input_image = File(exists=True, mandatory=True, desc="image to resample")
    reference_image = File(exists=True, mandatory=True, desc="grid of the output")
    transforms = InputMultiObject(
        File(exists=True), mandatory=True, desc="ITK transforms, antsApplyTransforms order"
    )
    interpolation = traits.Enum(
        "linear", "nearestNeighbor", "genericLabel", usedefault=True,
        desc="'nearestNeighbor'/'genericLabel' keep labels integer",
    )  # fmt: skip
    out_dtype = traits.Enum(*OUT_DTYPES, desc="output type (default: float32, or an integer type for labels)")
    invert_transform_flags = InputMultiObject(traits.Bool, desc="invert these (affine) transforms")


class _ApplyTransformsOutputSpec(TraitedSpec):
    output_image = File(exists=True, desc="the resampled image")


class ApplyTransforms(SimpleInterface):
    """Resample an image through ITK transforms (antsApplyTransforms via antspyx)."""

    input_spec = _ApplyTransformsInputSpec
    output_spec = _ApplyTransformsOutputSpec

    def _run_interface(self, runtime):
        inputs = self.inputs
        cwd = Path(runtime.cwd)
        flags = list(inputs.invert_transform_flags) if isdefined(inputs.invert_transform_flags) else None
        self._results.update(
            run_antspyx(
                apply_transforms_files,
                num_threads=inputs.num_threads,
                seed=inputs.random_seed,
                workdir=cwd,
                input_image=inputs.input_image,
                reference_image=inputs.reference_image,
                transforms=list(inputs.transforms),
                output_image=str(cwd / f"{_stem(inputs.input_image)}_trans.nii.gz"),
                interpolation=inputs.interpolation,
                out_dtype=inputs.out_dtype if isdefined(inputs.out_dtype) else None,
                invert_transform_flags=flags,
            )
        )
        return runtime
