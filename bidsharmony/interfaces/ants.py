"""The antspyx interfaces under their former address: N4, brain extraction, SyN registration,
resampling, Atropos.

They live in modules of their own, which the package imports directly:
:mod:`~bidsharmony.interfaces.n4`, :mod:`~bidsharmony.interfaces.registration`,
:mod:`~bidsharmony.interfaces.brain_extraction`, :mod:`~bidsharmony.interfaces.segmentation`
and :mod:`~bidsharmony.interfaces.resampling`, with what they share (threads and seed, NIfTI
writing) in :mod:`~bidsharmony.interfaces._common`. Every name this module had is importable
from it still.
"""

from __future__ import annotations

from ._common import _like, _read_float, _save, _stem, _ThreadedInputSpec, _to_numpy_on  # noqa: F401
from .brain_extraction import BrainExtraction, brain_extraction_files
from .n4 import N4_FIT_GRID_MM, N4_ITERATIONS, N4_SPLINE_DISTANCE_MM, N4BiasFieldCorrection, n4_files, n4_shrink_factor
from .registration import (
    REG_QUALITIES,
    REGISTRATION_PRESETS,
    RegistrationSyN,
    _levels,  # noqa: F401
    registration_arguments,
    registration_files,
    run_registration,
)
from .resampling import INTERPOLATIONS, LABEL_INTERPOLATIONS, OUT_DTYPES, ApplyTransforms, apply_transforms_files
from .segmentation import AtroposSegmentation, atropos_files

__all__ = [
    "INTERPOLATIONS",
    "LABEL_INTERPOLATIONS",
    "N4_FIT_GRID_MM",
    "N4_ITERATIONS",
    "N4_SPLINE_DISTANCE_MM",
    "OUT_DTYPES",
    "REGISTRATION_PRESETS",
    "REG_QUALITIES",
    "ApplyTransforms",
    "AtroposSegmentation",
    "BrainExtraction",
    "N4BiasFieldCorrection",
    "RegistrationSyN",
    "apply_transforms_files",
    "atropos_files",
    "brain_extraction_files",
    "n4_files",
    "n4_shrink_factor",
    "registration_arguments",
    "registration_files",
    "run_registration",
]
