"""What the antspyx interfaces share: file names, NIfTI writing, antspyx reading, threads and seed.

nipype's own ANTs interfaces call the ANTs command-line programs, which are not available
here (no Debian or PyPI package); antspyx ships the same C++ code as a Python extension.
Each interface of :mod:`~bidsharmony.interfaces.n4`, :mod:`~bidsharmony.interfaces.registration`,
:mod:`~bidsharmony.interfaces.brain_extraction`, :mod:`~bidsharmony.interfaces.segmentation`
and :mod:`~bidsharmony.interfaces.resampling` is a thin
:class:`~nipype.interfaces.base.SimpleInterface` around a module-level function of files in,
files out (the ``*_files`` functions), run through
:func:`~bidsharmony.interfaces._antspy.run_antspyx` so that ``num_threads`` and
``random_seed`` really apply to the call.

Every heavy interface takes (:class:`_ThreadedInputSpec`)

``num_threads`` (default 1)
    ITK threads; not part of the hash (it does not change what is computed), and read by
    Nipype as the node's ``n_procs``.
``random_seed`` (default 0)
    Given to antsRegistration (``--random-seed``, which drives its metric sampling) and as
    ``ANTS_RANDOM_SEED`` to the other ANTs programs, shifted by one because ANTs reads 0
    as "seed from the clock" (:func:`~bidsharmony.interfaces._antspy.ants_seed`).
    Atropos runs with a constant internal seed (``-r 0``); N4 and resampling have no
    randomness. The same inputs and seed give the same outputs with one thread.
"""

from __future__ import annotations

import os
from pathlib import Path

import nibabel as nb
import numpy as np
from nipype.interfaces.base import BaseInterfaceInputSpec, traits


def _stem(path) -> str:
    """File name without ``.nii``/``.nii.gz``."""
    name = Path(path).name
    for ext in (".nii.gz", ".nii", ".h5"):
        if name.endswith(ext):
            return name[: -len(ext)]
    return Path(name).stem


def _like(reference, data: np.ndarray, dtype) -> nb.Nifti1Image:
    """``data`` as a NIfTI image on the grid (affine, header) of the nibabel ``reference``."""
    header = reference.header.copy()
    header.set_data_dtype(dtype)
    header.set_slope_inter(1, 0)
    img = nb.Nifti1Image(np.asarray(data).astype(dtype), reference.affine, header)
    img.set_qform(reference.affine, code=1)
    img.set_sform(reference.affine, code=1)
    return img


def _save(img: nb.Nifti1Image, path) -> str:
    img.to_filename(os.fspath(path))
    return os.fspath(path)


def _read_float(path):
    """An antspyx image read as float, whatever the file's type."""
    import ants

    return ants.image_read(os.fspath(path), pixeltype="float")


def _to_numpy_on(reference_path, ants_image) -> np.ndarray:
    """Voxel values of an antspyx image on the grid of ``reference_path``, as numpy.

    antspyx and nibabel index voxels the same way (i, j, k), so the array can be written
    with the reference's nibabel header; this keeps the affine bit-identical to the
    reference's, which :func:`bidsharmony.morphometry.roi_volumes_from_files` relies on.
    """
    array = ants_image.numpy()
    shape = nb.load(os.fspath(reference_path)).shape[:3]
    if array.shape != shape:
        raise RuntimeError(f"antspyx returned shape {array.shape} on the grid of {reference_path} {shape}")
    return array


class _ThreadedInputSpec(BaseInterfaceInputSpec):
    num_threads = traits.Int(1, usedefault=True, nohash=True, desc="ITK threads for this call")
    random_seed = traits.Int(0, usedefault=True, desc="seed of ANTs' random number generators")
