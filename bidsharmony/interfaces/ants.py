"""Nipype interfaces over antspyx: N4, brain extraction, SyN registration, resampling, Atropos.

nipype's own ANTs interfaces call the ANTs command-line programs, which are not available
here (no Debian or PyPI package); antspyx ships the same C++ code as a Python extension.
Each interface below is a thin :class:`~nipype.interfaces.base.SimpleInterface` around a
module-level function of files in, files out (the ``*_files`` functions), run through
:func:`~bidsharmony.interfaces._antspy.run_antspyx` so that ``num_threads`` and
``random_seed`` really apply to the call.

Every heavy interface takes

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
from nipype.interfaces.base import (
    BaseInterfaceInputSpec,
    File,
    InputMultiObject,
    OutputMultiObject,
    SimpleInterface,
    TraitedSpec,
    isdefined,
    traits,
)

from . import _brainmask
from ._antspy import ants_seed, run_antspyx

REG_QUALITIES = ("fast", "standard")

# Levels of each stage as (grid spacing in mm, iterations), coarse to fine. Written in mm,
# not as shrink factors, so that one preset serves 1 mm data and 3-4 mm test images: the
# shrink factor of a level is ceil(level mm / image spacing). Mattes mutual information
# everywhere (CC took 11 min at 2 mm on this machine). One SyN iteration costs ~2 µs per
# voxel of the level's grid on one thread (measured: 0.7 s at 3 mm, ~15 s at 1 mm), so the
# SyN stages stop at 2 mm and the displacement field stays on that grid on finer images (a
# last 1 mm level with 0 iterations, only to bring the field onto the full grid, cost 10 s
# and wrote 88 MB instead of 11 MB per transform at 1 mm, for a warped brain mask that
# agreed with Dice 0.9994). The few iterations at the finest level are what brings a
# registered brain mask from Dice 0.978 to 0.986 at 3 mm (measured), so 'fast' keeps them.
REGISTRATION_PRESETS = {
    "fast": {
        "linear": ((8, 500), (4, 250), (2, 100)),
        "syn": ((8, 60), (4, 30), (2, 10)),
    },
    "standard": {
        "linear": ((8, 1000), (4, 500), (2, 250), (1, 100)),
        "syn": ((8, 100), (4, 70), (2, 30)),
    },
}

INTERPOLATIONS = ("linear", "nearestNeighbor", "genericLabel")
LABEL_INTERPOLATIONS = ("nearestNeighbor", "genericLabel")
OUT_DTYPES = ("uint8", "int16", "uint16", "int32", "float32", "float64")


# --------------------------------------------------------------------------- helpers


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


# --------------------------------------------------------------------------- N4


#: N4 defaults: B-spline control points every 200 mm at the first of three fitting levels
#: (50 mm at the last). fMRIPrep's four levels (25 mm) absorbed anatomy on the synthetic
#: heads: the residual bias after correction was larger than the bias itself (log-std 0.094
#: vs 0.071), while three levels left 0.016-0.038 of 0.046-0.071 (measured at 3 mm).
N4_SPLINE_DISTANCE_MM = 200.0
N4_ITERATIONS = (50, 50, 50)
#: the automatic shrink factor fits N4 on a grid of at least this spacing, and shrinks by at
#: least 4: at 1 mm that is a factor 6, which halves N4's time (32 -> 14 s) and changes the
#: bias field by a log-SD of 0.008 (the field itself: 0.063) on the synthetic heads
N4_FIT_GRID_MM = 6.0


def n4_shrink_factor(spacing_mm) -> int:
    """Automatic N4 shrink factor for voxels of ``spacing_mm`` (see :data:`N4_FIT_GRID_MM`)."""
    return max(4, int(np.ceil(N4_FIT_GRID_MM / float(min(spacing_mm)) - 1e-6)))


def n4_files(
    in_file,
    out_file,
    bias_file,
    mask_file=None,
    shrink_factor=None,
    spline_distance=N4_SPLINE_DISTANCE_MM,
    iterations=N4_ITERATIONS,
    convergence_threshold=1e-7,
    weight_file=None,
) -> dict:
    """N4 bias-field correction of one image.

    Parameters
    ----------
    in_file : str
        Image to correct.
    out_file, bias_file : str
        Where to write the corrected image and the estimated (multiplicative) bias field.
    mask_file : str, optional
        Voxels used to fit the field; default: the head (Otsu foreground), so that the
        background noise does not pull the fit.
    shrink_factor : int, optional
        Fit on an image shrunk by this factor (full resolution took > 6 min at 1 mm);
        ``None`` or 0: :func:`n4_shrink_factor` of the voxel size.
    spline_distance : float
        B-spline control-point spacing (mm) of the first fitting level.
    iterations : sequence of int
        Iterations per fitting level; each level halves the control-point spacing.
    convergence_threshold : float
        Stop a level when the field changes less than this.
    weight_file : str, optional
        Voxel weights of the fit (e.g. grey + white matter posteriors), so that tissue
        contrast is not mistaken for bias (antsAtroposN4's ``--weight-image``).

    Returns
    -------
    dict
        ``out_file`` and ``bias_image``.
    """
    import ants

    reference = nb.load(os.fspath(in_file))
    # N4 works on log intensities; negative values (some reconstructions) would break it.
    data = np.clip(np.asarray(reference.dataobj, dtype=np.float32), 0, None)
    if mask_file:
        mask = np.asarray(nb.load(os.fspath(mask_file)).dataobj) > 0
    else:
        mask = _brainmask.head_mask(data, reference.header.get_zooms()[:3])
    if not shrink_factor:
        shrink_factor = n4_shrink_factor(reference.header.get_zooms()[:3])
    geometry = _read_float(in_file)
    mask_image = geometry.new_image_like(mask.astype(np.float32))
    weight_image = None
    if weight_file:
        weight_image = geometry.new_image_like(np.asarray(nb.load(os.fspath(weight_file)).dataobj, dtype=np.float32))
    bias = ants.n4_bias_field_correction(
        geometry.new_image_like(data),
        mask=mask_image,
        shrink_factor=int(shrink_factor),
        convergence={"iters": [int(i) for i in iterations], "tol": float(convergence_threshold)},
        spline_param=float(spline_distance),
        return_bias_field=True,
        weight_mask=weight_image,
    ).numpy()
    bias = np.where(bias > 0, bias, 1.0).astype(np.float32)
    corrected = (data / bias).astype(np.float32)
    _save(_like(reference, corrected, np.float32), out_file)
    _save(_like(reference, bias, np.float32), bias_file)
    return {"out_file": out_file, "bias_image": bias_file}


class _ThreadedInputSpec(BaseInterfaceInputSpec):
    num_threads = traits.Int(1, usedefault=True, nohash=True, desc="ITK threads for this call")
    random_seed = traits.Int(0, usedefault=True, desc="seed of ANTs' random number generators")


class _N4InputSpec(_ThreadedInputSpec):
    in_file = File(exists=True, mandatory=True, desc="image to correct (e.g. the validated T1w)")
    mask_file = File(exists=True, desc="voxels to fit the field on (default: Otsu head mask)")
    shrink_factor = traits.Int(
        0, usedefault=True, desc="fit on an image shrunk by this factor (0: from the voxel size, n4_shrink_factor)"
    )
    spline_distance = traits.Float(
        N4_SPLINE_DISTANCE_MM, usedefault=True, desc="B-spline control-point spacing (mm), first level"
    )
    n_iterations = traits.List(
        traits.Int, list(N4_ITERATIONS), usedefault=True, desc="iterations per fitting level"
    )
    convergence_threshold = traits.Float(1e-7, usedefault=True, desc="per-level stopping threshold")


class _N4OutputSpec(TraitedSpec):
    out_file = File(exists=True, desc="bias-corrected image (float32)")
    bias_image = File(exists=True, desc="estimated multiplicative bias field (float32)")


class N4BiasFieldCorrection(SimpleInterface):
    """N4 bias-field correction (antspyx) with a shrink factor; see :func:`n4_files`."""

    input_spec = _N4InputSpec
    output_spec = _N4OutputSpec

    def _run_interface(self, runtime):
        stem = _stem(self.inputs.in_file)
        cwd = Path(runtime.cwd)
        self._results.update(
            run_antspyx(
                n4_files,
                num_threads=self.inputs.num_threads,
                seed=self.inputs.random_seed,
                workdir=cwd,
                in_file=self.inputs.in_file,
                out_file=str(cwd / f"{stem}_N4.nii.gz"),
                bias_file=str(cwd / f"{stem}_biasfield.nii.gz"),
                mask_file=self.inputs.mask_file if isdefined(self.inputs.mask_file) else None,
                shrink_factor=self.inputs.shrink_factor,
                spline_distance=self.inputs.spline_distance,
                iterations=list(self.inputs.n_iterations),
                convergence_threshold=self.inputs.convergence_threshold,
            )
        )
        return runtime


# --------------------------------------------------------------------------- registration


def _levels(levels, spacing_mm: float) -> tuple[str, str, str]:
    """antsRegistration level strings for a preset's (mm, iterations) levels.

    Levels that fall on the same shrink factor are merged (iterations added).

    Returns
    -------
    tuple of str
        Convergence iterations, shrink factors and smoothing sigmas (``AxBxC``); the
        smoothing is log2 of the shrink factor in voxels (8 → 3, 4 → 2, 2 → 1, 1 → 0),
        the usual ANTs pairing.
    """
    merged: dict[int, int] = {}
    for level_mm, iterations in levels:
        shrink = max(1, int(np.ceil(level_mm / spacing_mm - 1e-6)))
        merged[shrink] = merged.get(shrink, 0) + int(iterations)
    shrinks = sorted(merged, reverse=True)
    its = "x".join(str(merged[f]) for f in shrinks)
    sigmas = "x".join(f"{np.log2(f):.2g}" for f in shrinks)
    return its, "x".join(str(f) for f in shrinks), sigmas + "vox"


def registration_arguments(
    fixed,
    moving,
    out_prefix,
    warped_file,
    *,
    reg_quality="standard",
    fixed_mask=None,
    moving_mask=None,
    random_seed=0,
    linear_moving=None,
    initial_transform=None,
) -> list[str]:
    """The antsRegistration command line of rigid → affine → SyN with Mattes MI.

    Parameters
    ----------
    fixed, moving : str
        Image files (moving is registered onto fixed).
    out_prefix, warped_file : str
        Output prefix (``<prefix>Composite.h5``, ``<prefix>InverseComposite.h5``) and the
        moving image resampled onto fixed.
    reg_quality : {"fast", "standard"}
        Iteration preset, see :data:`REGISTRATION_PRESETS`.
    fixed_mask, moving_mask : str, optional
        Metric masks, used in every stage.
    random_seed : int
        Our seed; antsRegistration gets ``--random-seed`` :func:`ants_seed` of it (ANTs
        takes 0 to mean "from the clock").
    linear_moving : str, optional
        A different moving image for the rigid/affine stages (brain extraction aligns a
        crude brain image first, then the whole head in the SyN stage).
    initial_transform : str, optional
        Initial moving transform; default: align the centres of mass of the images
        (of ``linear_moving`` when given).

    Returns
    -------
    list of str
    """
    preset = REGISTRATION_PRESETS[reg_quality]
    spacing = float(min(nb.load(os.fspath(fixed)).header.get_zooms()[:3]))
    linear_moving = linear_moving or moving
    masks = f"[{fixed_mask or 'NA'},{moving_mask or 'NA'}]"
    init = initial_transform or f"[{fixed},{linear_moving},1]"
    args = [
        "--dimensionality", "3",
        "--float", "1",
        "--collapse-output-transforms", "1",
        "--write-composite-transform", "1",
        "--output", f"[{out_prefix},{warped_file}]",
        "--interpolation", "Linear",
        "--winsorize-image-intensities", "[0.005,0.995]",
        "--use-histogram-matching", "0",
        "--initial-moving-transform", init,
    ]  # fmt: skip
    its, sfs, sgs = _levels(preset["linear"], spacing)
    for transform in ("Rigid[0.1]", "Affine[0.1]"):
        args += [
            "--transform", transform,
            "--metric", f"Mattes[{fixed},{linear_moving},1,32,Regular,0.25]",
            "--convergence", f"[{its},1e-6,10]",
            "--shrink-factors", sfs,
            "--smoothing-sigmas", sgs,
            "--masks", masks,
        ]  # fmt: skip
    its, sfs, sgs = _levels(preset["syn"], spacing)
    args += [
        "--transform", "SyN[0.2,3,0]",
        "--metric", f"Mattes[{fixed},{moving},1,32]",
        "--convergence", f"[{its},1e-6,10]",
        "--shrink-factors", sfs,
        "--smoothing-sigmas", sgs,
        "--masks", masks,
        "--random-seed", str(ants_seed(random_seed)),
        "--verbose", "0",
    ]  # fmt: skip
    return args


def run_registration(args: list[str]) -> None:
    """Run antsRegistration (in-process, through antspyx) on a full argument list."""
    import ants

    ants.registration(args, None)


def registration_files(
    moving,
    fixed,
    out_prefix,
    moving_mask=None,
    fixed_mask=None,
    reg_quality="standard",
    random_seed=0,
) -> dict:
    """Register ``moving`` onto ``fixed`` (rigid, affine, SyN) and write composite transforms.

    Returns
    -------
    dict
        ``warped_image`` (moving on the fixed grid), ``forward_transform``
        (``<prefix>Composite.h5``: moving → fixed, i.e. what brings moving-space images
        into fixed space with :func:`apply_transforms_files`) and ``reverse_transform``
        (``<prefix>InverseComposite.h5``: fixed → moving).
    """
    warped = f"{out_prefix}Warped.nii.gz"
    args = registration_arguments(
        fixed, moving, out_prefix, warped,
        reg_quality=reg_quality, fixed_mask=fixed_mask, moving_mask=moving_mask, random_seed=random_seed,
    )  # fmt: skip
    run_registration(args)
    return {
        "warped_image": warped,
        "forward_transform": f"{out_prefix}Composite.h5",
        "reverse_transform": f"{out_prefix}InverseComposite.h5",
    }


class _RegistrationInputSpec(_ThreadedInputSpec):
    moving = File(exists=True, mandatory=True, desc="image to register (e.g. the T1w brain)")
    moving_mask = File(exists=True, desc="metric mask in moving space")
    fixed = File(exists=True, mandatory=True, desc="target image (e.g. the template brain)")
    fixed_mask = File(exists=True, desc="metric mask in fixed space")
    reg_quality = traits.Enum(
        "standard", "fast", usedefault=True, desc="'fast': few iterations (tests, demo); 'standard': for 1 mm"
    )


class _RegistrationOutputSpec(TraitedSpec):
    warped_image = File(exists=True, desc="moving image resampled into fixed space")
    forward_transform = File(exists=True, desc="composite ITK transform (.h5) moving → fixed")
    reverse_transform = File(exists=True, desc="composite ITK transform (.h5) fixed → moving")


class RegistrationSyN(SimpleInterface):
    """Rigid + affine + SyN registration with Mattes MI (antsRegistration via antspyx).

    ``forward_transform`` brings images from the moving (T1w) space into the fixed
    (template) space: ``ApplyTransforms(input_image=<T1w-space>, reference_image=<template>,
    transforms=[forward_transform])``; ``reverse_transform`` does the opposite.
    """

    input_spec = _RegistrationInputSpec
    output_spec = _RegistrationOutputSpec

    def _run_interface(self, runtime):
        inputs = self.inputs
        cwd = Path(runtime.cwd)
        self._results.update(
            run_antspyx(
                registration_files,
                num_threads=inputs.num_threads,
                seed=inputs.random_seed,
                workdir=cwd,
                moving=inputs.moving,
                fixed=inputs.fixed,
                out_prefix=str(cwd / "from-moving_to-fixed_"),
                moving_mask=inputs.moving_mask if isdefined(inputs.moving_mask) else None,
                fixed_mask=inputs.fixed_mask if isdefined(inputs.fixed_mask) else None,
                reg_quality=inputs.reg_quality,
                random_seed=inputs.random_seed,
            )
        )
        return runtime


# --------------------------------------------------------------------------- resampling


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


# --------------------------------------------------------------------------- Atropos


def atropos_files(
    in_file,
    mask_file,
    out_dseg,
    out_probsegs,
    prior_probsegs=None,
    prior_weight=0.25,
    mrf_smoothing=0.1,
    iterations=5,
) -> dict:
    """Three-class Atropos segmentation, classes ordered CSF < GM < WM by T1w intensity.

    Parameters
    ----------
    in_file, mask_file : str
        Brain T1w image and brain mask.
    out_dseg : str
        Hard labels (uint8): 0 background, 1 CSF, 2 GM, 3 WM.
    out_probsegs : list of str
        Three output files for the [CSF, GM, WM] posteriors (float32).
    prior_probsegs : list of str, optional
        [CSF, GM, WM] prior probability images on the grid of ``in_file``; without them
        Atropos starts from k-means.
    prior_weight : float
        Weight of the priors in the posterior (0: initialisation only).
    mrf_smoothing : float
        Markov random field weight (1-voxel neighbourhood).
    iterations : int
        EM iterations.

    Returns
    -------
    dict
        ``out_dseg`` and ``out_probsegs``.
    """
    import ants

    reference = nb.load(os.fspath(in_file))
    image = _read_float(in_file)
    mask = _read_float(mask_file)
    mask = ants.threshold_image(mask, 0.5, 1e12, 1, 0)
    if prior_probsegs:
        if len(prior_probsegs) != 3:
            raise ValueError(f"prior_probsegs must be [CSF, GM, WM], got {len(prior_probsegs)} files")
        init = [_read_float(p) for p in prior_probsegs]
    else:
        init = "KMeans[3]"
    result = ants.atropos(
        a=image,
        x=mask,
        i=init,
        m=f"[{mrf_smoothing},1x1x1]",
        c=f"[{int(iterations)},0]",
        priorweight=float(prior_weight) if prior_probsegs else 0.0,
        # -r 0: Atropos' internal generator starts from a constant seed. By default it is
        # seeded from the clock (measured: posteriors differ by up to 0.03 between two
        # identical calls); ANTS_RANDOM_SEED does not reach it.
        r=0,
    )
    labels = _to_numpy_on(in_file, result["segmentation"]).astype(np.int64)
    probs = [_to_numpy_on(in_file, p) for p in result["probabilityimages"]]
    t1 = np.asarray(reference.dataobj, dtype=np.float32)
    dseg, probs = _order_classes_by_intensity(t1, labels, probs)
    _save(_like(reference, dseg, np.uint8), out_dseg)
    for prob, path in zip(probs, out_probsegs):
        _save(_like(reference, prob, np.float32), path)
    return {"out_dseg": out_dseg, "out_probsegs": list(out_probsegs)}


def _order_classes_by_intensity(t1: np.ndarray, labels: np.ndarray, probs: list[np.ndarray]):
    """Relabel Atropos classes 1..3 so that their median T1w intensity increases.

    Atropos orders k-means classes by intensity, but with priors the order is the priors'
    order, and a prior set given in another order (or a T2-like contrast) would silently
    swap GM and WM; sorting here makes 1 CSF, 2 GM, 3 WM hold whatever Atropos returned.
    """
    present = [c for c in (1, 2, 3)]
    medians = [float(np.median(t1[labels == c])) if np.any(labels == c) else np.inf for c in present]
    order = np.argsort(medians, kind="stable")  # order[k] = index of the class that becomes k+1
    dseg = np.zeros(labels.shape, dtype=np.uint8)
    for new, old_index in enumerate(order, start=1):
        dseg[labels == present[old_index]] = new
    return dseg, [np.clip(probs[i], 0, 1).astype(np.float32) for i in order]


class _AtroposInputSpec(_ThreadedInputSpec):
    in_file = File(exists=True, mandatory=True, desc="brain T1w (skull-stripped or not; only the mask counts)")
    mask_file = File(exists=True, mandatory=True, desc="brain mask")
    prior_probsegs = InputMultiObject(File(exists=True), desc="[CSF, GM, WM] priors in native space")
    prior_weight = traits.Float(0.25, usedefault=True, desc="weight of the priors (0: initialisation only)")
    mrf_smoothing = traits.Float(0.1, usedefault=True, desc="MRF weight")
    iterations = traits.Int(5, usedefault=True, desc="EM iterations")


class _AtroposOutputSpec(TraitedSpec):
    out_dseg = File(exists=True, desc="uint8 labels: 0 background, 1 CSF, 2 GM, 3 WM")
    out_probsegs = OutputMultiObject(File(exists=True), desc="[CSF, GM, WM] posteriors (float32)")


class AtroposSegmentation(SimpleInterface):
    """Three-class tissue segmentation (Atropos via antspyx); see :func:`atropos_files`."""

    input_spec = _AtroposInputSpec
    output_spec = _AtroposOutputSpec

    def _run_interface(self, runtime):
        inputs = self.inputs
        cwd = Path(runtime.cwd)
        stem = _stem(inputs.in_file)
        priors = list(inputs.prior_probsegs) if isdefined(inputs.prior_probsegs) else None
        result = run_antspyx(
            atropos_files,
            num_threads=inputs.num_threads,
            seed=inputs.random_seed,
            workdir=cwd,
            in_file=inputs.in_file,
            mask_file=inputs.mask_file,
            out_dseg=str(cwd / f"{stem}_dseg.nii.gz"),
            out_probsegs=[str(cwd / f"{stem}_label-{t}_probseg.nii.gz") for t in ("CSF", "GM", "WM")],
            prior_probsegs=priors,
            prior_weight=inputs.prior_weight,
            mrf_smoothing=inputs.mrf_smoothing,
            iterations=inputs.iterations,
        )
        self._results.update(result)
        return runtime


# --------------------------------------------------------------------------- brain extraction


def _write_like(reference_file, data, dtype, path) -> str:
    return _save(_like(nb.load(os.fspath(reference_file)), data, dtype), path)


def _dilated_mask_file(mask_file, radius_mm, out_path) -> str:
    """Write ``mask_file`` (> 0.5) dilated by ``radius_mm`` to ``out_path``."""
    img = nb.load(os.fspath(mask_file))
    mask = np.asarray(img.dataobj, dtype=np.float32) > 0.5
    dilated = _brainmask.dilate(mask, radius_mm, img.header.get_zooms()[:3])
    return _write_like(mask_file, dilated, np.uint8, out_path)


def _native_tissue_priors(template_probsegs, reference, reverse_transform, workdir) -> list[str]:
    """The template's [CSF, GM, WM] probability maps resampled to native space (linear)."""
    return [
        apply_transforms_files(
            path, reference, [reverse_transform], str(Path(workdir) / f"prior_{name}_native.nii.gz")
        )["output_image"]
        for name, path in zip(("CSF", "GM", "WM"), template_probsegs)
    ]


def brain_extraction_files(
    in_file,
    template,
    template_mask,
    out_file,
    out_mask,
    work_folder,
    template_probsegs=None,
    head_template=None,
    head_template_probmask=None,
    reg_quality="standard",
    random_seed=0,
    refine=True,
) -> dict:
    """Skull-strip a whole-head, bias-corrected T1w by registration to a template.

    Default (brain-only template, works offline):

    1. head mask (Otsu, largest component, closing, hole filling), cut to 170 mm below the
       top of the head (no neck: :func:`_brainmask.below_vertex`), and a crude brain mask
       (non-dark head voxels, eroded until the largest component is brain-sized, dilated
       back: :func:`_brainmask.crude_brain_mask`);
    2. one antsRegistration run onto the template brain: rigid and affine stages on the
       crude brain image (starting from the centres of mass), then SyN on the whole head,
       all with Mattes MI and the template mask dilated by 5 mm as the fixed metric mask —
       within it, the template's empty background faces the subject's dark CSF and skull;
    3. the template mask brought back through the inverse transform (linear, > 0.5);
    4. a border refinement by intensity classes (:func:`_brainmask.refine_with_tissues`),
       which only adds tissue where the template's GM + WM probability (``template_probsegs``
       [CSF, GM, WM], when given) reaches.

    With ``head_template`` and ``head_template_probmask`` (a whole-head template and its
    brain probability map), the whole head is registered to the head template and the
    probability map brought back instead, as antsBrainExtraction.sh does.

    Returns
    -------
    dict
        ``out_file``, ``out_mask``, ``forward_transform`` / ``reverse_transform``
        (subject → template and back, as :func:`registration_files` names them),
        ``native_probsegs`` (``template_probsegs`` in native space, or ``[]``) and
        ``report`` (a few lines on what was done).
    """
    workdir = Path(work_folder)
    reference = nb.load(os.fspath(in_file))
    data = np.asarray(reference.dataobj, dtype=np.float32)
    spacing = reference.header.get_zooms()[:3]
    prefix = str(workdir / "from-T1w_to-template_")
    lines = []
    if head_template and head_template_probmask:
        fixed, fixed_brain = head_template, head_template_probmask
        linear_moving = None
        lines.append(f"method: head template {Path(head_template).name} with brain probability map")
    else:
        fixed, fixed_brain = template, template_mask
        crude = _brainmask.crude_brain_mask(data, spacing)
        linear_moving = _write_like(in_file, data * crude, np.float32, workdir / "crude_brain.nii.gz")
        lines.append(
            f"method: brain-only template {Path(template).name}; crude brain "
            f"{crude.sum() * np.prod(spacing) / 1000:.0f} mL for the linear stages"
        )
    fixed_mask = _dilated_mask_file(fixed_brain, 5.0, workdir / "template_mask_dil5mm.nii.gz")
    args = registration_arguments(
        fixed, in_file, prefix, f"{prefix}Warped.nii.gz",
        reg_quality=reg_quality, fixed_mask=fixed_mask, random_seed=random_seed, linear_moving=linear_moving,
    )  # fmt: skip
    run_registration(args)
    reverse = f"{prefix}InverseComposite.h5"
    probmask_native = apply_transforms_files(
        fixed_brain, in_file, [reverse], str(workdir / "brainprob_native.nii.gz"), interpolation="linear"
    )["output_image"]
    registered = np.asarray(nb.load(probmask_native).dataobj) > 0.5
    registered = _brainmask.largest_component(registered)
    lines.append(f"registered template mask: {registered.sum() * np.prod(spacing) / 1000:.1f} mL ({reg_quality})")
    mask = registered
    # the segmentation's priors too, when the workflow reuses this registration
    native_priors = _native_tissue_priors(template_probsegs, in_file, reverse, workdir) if template_probsegs else []
    if refine:
        plausible = None
        if native_priors:  # where the template has brain tissue: GM + WM probability > 0.05
            tissue = sum(np.asarray(nb.load(p).dataobj, dtype=np.float32) for p in native_priors[1:])
            plausible = tissue > 0.05
        mask, info = _brainmask.refine_with_tissues(data, registered, spacing, plausible)
        lines.append(
            f"tissue refinement: +{info['added_voxels']} / -{info['removed_voxels']} voxels, "
            f"class means {', '.join(f'{m:.1f}' for m in info['class_means'])}"
        )
    lines.append(f"final mask: {mask.sum() * np.prod(spacing) / 1000:.1f} mL")
    _write_like(in_file, mask, np.uint8, out_mask)
    _write_like(in_file, data * mask, np.float32, out_file)
    return {
        "out_file": os.fspath(out_file),
        "out_mask": os.fspath(out_mask),
        "forward_transform": f"{prefix}Composite.h5",
        "reverse_transform": reverse,
        "native_probsegs": native_priors,
        "report": lines,
    }


class _BrainExtractionInputSpec(_ThreadedInputSpec):
    in_file = File(exists=True, mandatory=True, desc="N4-corrected whole-head T1w")
    template = File(exists=True, mandatory=True, desc="brain-only template T1w")
    template_mask = File(exists=True, mandatory=True, desc="brain mask of the template")
    template_probsegs = InputMultiObject(
        File(exists=True), desc="[CSF, GM, WM] probability maps of the template (optional)"
    )
    reg_quality = traits.Enum("standard", "fast", usedefault=True, desc="registration iterations")
    head_template = File(exists=True, desc="whole-head template T1w: switches to template-based extraction")
    head_template_probmask = File(exists=True, desc="brain probability map of head_template")
    refine = traits.Bool(True, usedefault=True, desc="refine the registered mask's border by intensity")


class _BrainExtractionOutputSpec(TraitedSpec):
    out_file = File(exists=True, desc="skull-stripped T1w (float32, zero outside the brain)")
    out_mask = File(exists=True, desc="brain mask (uint8 0/1)")
    forward_transform = File(exists=True, desc="composite transform T1w → (brain or head) template")
    reverse_transform = File(exists=True, desc="composite transform (brain or head) template → T1w")
    native_probsegs = OutputMultiObject(
        File(exists=True), desc="template_probsegs [CSF, GM, WM] resampled to native space (linear)"
    )
    out_report = File(exists=True, desc="text: method, volumes, refinement")


class BrainExtraction(SimpleInterface):
    """Brain extraction of a whole-head T1w by registration to a template + refinement.

    See :func:`brain_extraction_files`. The registration it runs is a full rigid + affine +
    SyN one onto ``template``; its transforms are outputs, so a workflow whose output space
    is that template can reuse them instead of registering again.
    """

    input_spec = _BrainExtractionInputSpec
    output_spec = _BrainExtractionOutputSpec

    def _run_interface(self, runtime):
        inputs = self.inputs
        cwd = Path(runtime.cwd)
        stem = _stem(inputs.in_file)
        optional = lambda name: getattr(inputs, name) if isdefined(getattr(inputs, name)) else None  # noqa: E731
        result = run_antspyx(
            brain_extraction_files,
            num_threads=inputs.num_threads,
            seed=inputs.random_seed,
            workdir=cwd,
            in_file=inputs.in_file,
            template=inputs.template,
            template_mask=inputs.template_mask,
            out_file=str(cwd / f"{stem}_brain.nii.gz"),
            out_mask=str(cwd / f"{stem}_brainmask.nii.gz"),
            work_folder=str(cwd),
            template_probsegs=list(inputs.template_probsegs) if isdefined(inputs.template_probsegs) else None,
            head_template=optional("head_template"),
            head_template_probmask=optional("head_template_probmask"),
            reg_quality=inputs.reg_quality,
            random_seed=inputs.random_seed,
            refine=inputs.refine,
        )
        report = cwd / f"{stem}_brainextraction.txt"
        report.write_text("\n".join(result.pop("report")) + "\n")
        result["out_report"] = str(report)
        self._results.update(result)
        return runtime
