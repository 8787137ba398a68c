"""Brain extraction of a whole-head T1w by registration to a template (antspyx) + refinement.

Threads and seed: see :mod:`bidsharmony.interfaces._common`.
"""

from __future__ import annotations

import os
from pathlib import Path

import nibabel as nb
import numpy as np
from nipype.interfaces.base import File, InputMultiObject, OutputMultiObject, SimpleInterface, TraitedSpec
from nipype.interfaces.base import isdefined, traits

from . import _brainmask
from ._antspy import run_antspyx
from ._common import _like, _save, _stem, _ThreadedInputSpec
from .registration import registration_arguments, run_registration
from .resampling import apply_transforms_files


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
