"""Rigid + affine + SyN registration through antspyx: presets, command line, interface.

Threads and seed: see :mod:`bidsharmony.interfaces._common`.
"""

from __future__ import annotations

import os
from pathlib import Path

import nibabel as nb
import numpy as np
from nipype.interfaces.base import File, SimpleInterface, TraitedSpec, isdefined, traits

from ._antspy import ants_seed, run_antspyx
from ._common import _ThreadedInputSpec

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
