"""The anatomical preprocessing of one T1w image.

Importable by other pipelines::

    from bidsharmony.workflows.anatomical import init_anat_preproc_wf

    anat_wf = init_anat_preproc_wf(omp_nthreads=2)
    anat_wf.inputs.inputnode.t1w = "sub-01_T1w.nii.gz"
    # template inputs: see templates.template_inputs()

With existing fMRIPrep/sMRIPrep preprocessing (``precomputed``), N4, brain extraction and
(when the transforms target the same template) registration are skipped; tissues and ROI
volumes are still computed::

    anat_wf = init_anat_preproc_wf(precomputed=PRECOMPUTED_FIELDS)
    anat_wf.inputs.inputnode.t1w_preproc = ".../sub-01_desc-preproc_T1w.nii.gz"  # etc.
"""

from __future__ import annotations

from nipype.interfaces import utility as niu
from nipype.pipeline import engine as pe

from ..interfaces.brain_extraction import BrainExtraction
from ..interfaces.checks import BrainMaskChecks
from ..interfaces.images import ValidateT1w
from ..interfaces.morphometry import ROIVolumes
from ..interfaces.n4 import N4BiasFieldCorrection
from ..interfaces.registration import RegistrationSyN
from ..interfaces.resampling import ApplyTransforms
from ..interfaces.segmentation import AtroposSegmentation
from ..interfaces.skullstrip import DeepBetBrainExtraction

# Memory estimates (GB) of the heavy nodes at 1 mm, measured with antspyx on 2 cores;
# Nipype's schedulers (MultiProc, SLURM) use them to avoid over-subscribing a node. Every
# node that runs ITK with `omp_nthreads` threads (resampling too) declares n_procs to match.
MEM_GB = {"n4": 2.5, "brain_extraction": 2.5, "deepbet": 3.0, "registration": 2.5, "segmentation": 1.5, "resample": 0.5}

# Outputs of another pipeline (fMRIPrep, sMRIPrep) the workflow can start from: the first two
# skip N4 and brain extraction, all four also skip the registration to the template.
PRECOMPUTED_FIELDS = ("t1w_preproc", "t1w_mask", "forward_xfm", "reverse_xfm")
#: ``--skull-strip`` choices: template registration (antspyx) or deepbet's networks
SKULL_STRIP_METHODS = ("deepbet", "ants")
TEMPLATE_FIELDS = ["template", "template_mask", "template_probsegs", "atlas_dseg", "atlas_labels"]
OUTPUT_FIELDS = [
    "t1w_valid",
    "t1w_preproc",
    "t1w_mask",
    "t1w_dseg",
    "t1w_probsegs",
    "std_t1w",
    "std_mask",
    "forward_xfm",
    "reverse_xfm",
    "atlas_native",
    "morph_tsv",
    "mask_meta",
    "qc_failed",
]


def init_anat_preproc_wf(
    *,
    reg_quality: str = "standard",
    n4_shrink_factor: int | None = None,
    omp_nthreads: int = 1,
    random_seed: int = 0,
    separate_registration: bool = False,
    skull_strip: str = "deepbet",
    precomputed=(),
    name: str = "anat_preproc_wf",
):
    """Preprocess one T1w image and measure its atlas ROI volumes.

    Steps: validation and reorientation to RAS → N4 bias-field correction → brain
    extraction (template-mask based, works with a brain-only template) → SyN registration
    of the brain to the template → three-class tissue segmentation with the template's
    tissue priors → atlas warped to native space (nearest neighbour) → ROI volumes.

    Parameters
    ----------
    reg_quality : {"fast", "standard"}
        Registration iterations; "fast" is for tests and previews.
    n4_shrink_factor : int, optional
        N4 shrink factor; 1 means full resolution (minutes per image at 1 mm). Default:
        from the voxel size (:func:`~bidsharmony.interfaces.n4.n4_shrink_factor`).
    omp_nthreads : int
        ITK threads of each heavy node.
    random_seed : int
        Seed of every ANTs step.
    separate_registration : bool
        Register the extracted brain to the template again (rigid → affine → SyN with both
        masks) instead of reusing the transform that brain extraction already estimated to
        the same template. Off by default: the second SyN roughly doubles the run time for
        a small gain in alignment (see BENCHMARKS.md).
    skull_strip : {"deepbet", "ants"}
        Brain extraction: "deepbet" segments the brain with deepbet's networks
        (:class:`~bidsharmony.interfaces.skullstrip.DeepBetBrainExtraction`), and that mask
        is used for everything downstream (the registration of the brain to the brain
        template, tissues, ROI volumes); "ants" registers the head, cut to 170 mm below its
        top, to the template and warps its mask back (refined by intensity). Ignored when
        ``precomputed`` gives the mask.
    precomputed : iterable of str
        Names of :data:`PRECOMPUTED_FIELDS` given as inputs instead of computed:
        ``("t1w_preproc", "t1w_mask")`` skips N4 and brain extraction (the brain is then
        registered to the template); all four also skip the registration.
    name : str
        Workflow name.

    Inputs
    ------
    t1w
        The raw T1w image.
    template, template_mask, template_probsegs
        Brain-only template T1w, its brain mask and its [CSF, GM, WM] probability maps.
    atlas_dseg, atlas_labels
        Atlas label image in template space and its BIDS dseg.tsv.
    t1w_preproc, t1w_mask, forward_xfm, reverse_xfm
        Only those named in ``precomputed``: a bias-corrected T1w, its brain mask and the
        composite transforms T1w → template → T1w (fMRIPrep's ``desc-preproc_T1w``,
        ``desc-brain_mask`` and ``from-T1w_to-<template>_mode-image_xfm.h5`` + reverse).

    Outputs
    -------
    t1w_valid
        The validated T1w in RAS orientation.
    t1w_preproc, t1w_mask
        N4-corrected T1w (whole head) and its brain mask.
    t1w_dseg, t1w_probsegs
        Tissue classes (1 CSF, 2 GM, 3 WM) and [CSF, GM, WM] probabilities.
    std_t1w, std_mask
        The preprocessed T1w and brain mask resampled into template space.
    forward_xfm, reverse_xfm
        Composite ITK transforms T1w → template and template → T1w.
    atlas_native
        Atlas labels in native space.
    morph_tsv
        One-row table of ROI volumes (mm³).
    mask_meta
        Sidecar fields of the mask: ``BrainExtraction`` (tool, version; deepbet's threshold
        and weights' SHA-256) and ``QualityChecks``
        (:func:`~bidsharmony.interfaces.checks.brain_mask_checks`).
    qc_failed
        One line per failed check (empty when the mask is plausible).
    """
    precomputed = _check_precomputed(precomputed)
    if skull_strip not in SKULL_STRIP_METHODS:
        raise ValueError(f"skull_strip={skull_strip!r}: choose one of {SKULL_STRIP_METHODS}")
    use_deepbet = skull_strip == "deepbet" and not precomputed
    workflow = pe.Workflow(name=name)
    inputnode = pe.Node(
        niu.IdentityInterface(fields=["t1w"] + TEMPLATE_FIELDS + list(precomputed)), name="inputnode"
    )
    outputnode = pe.Node(niu.IdentityInterface(fields=OUTPUT_FIELDS), name="outputnode")
    threaded = {"num_threads": omp_nthreads, "random_seed": random_seed}

    validate = pe.Node(ValidateT1w(), name="validate")
    workflow.connect([(inputnode, validate, [("t1w", "in_file")])])
    if precomputed:
        preproc, brain = _add_precomputed_brain(workflow, inputnode)
    else:
        preproc, brain = _add_brain_extraction(
            workflow, inputnode, validate, use_deepbet=use_deepbet, n4_shrink_factor=n4_shrink_factor,
            reg_quality=reg_quality, threaded=threaded,
        )  # fmt: skip
    if "forward_xfm" in precomputed:
        transforms = _add_precomputed_transforms(workflow, inputnode)
    elif separate_registration or precomputed or use_deepbet:
        # brain extraction's own registration is not there to reuse when it was skipped
        # (precomputed) or did not register (deepbet)
        transforms = _add_registration(workflow, inputnode, brain, reg_quality=reg_quality, threaded=threaded)
    else:
        transforms = brain
    segmentation = _add_segmentation(workflow, inputnode, preproc, brain, transforms, threaded=threaded)
    atlas_to_native, t1w_to_std, mask_to_std = _add_resampling(
        workflow, inputnode, preproc, brain, transforms, omp_nthreads=omp_nthreads
    )
    roi_volumes = pe.Node(ROIVolumes(), name="roi_volumes")

    workflow.connect([
        (atlas_to_native, roi_volumes, [("output_image", "atlas_file")]),
        (segmentation, roi_volumes, [("out_dseg", "tissues_file")]),
        (brain, roi_volumes, [("out_mask", "mask_file")]),
        (inputnode, roi_volumes, [("atlas_labels", "labels_file"), ("t1w", "source_file")]),
        (validate, outputnode, [("out_file", "t1w_valid")]),
        (preproc, outputnode, [("out_file", "t1w_preproc")]),
        (brain, outputnode, [("out_mask", "t1w_mask")]),
        (segmentation, outputnode, [("out_dseg", "t1w_dseg"), ("out_probsegs", "t1w_probsegs")]),
        (t1w_to_std, outputnode, [("output_image", "std_t1w")]),
        (mask_to_std, outputnode, [("output_image", "std_mask")]),
        (transforms, outputnode, [
            ("forward_transform", "forward_xfm"),
            ("reverse_transform", "reverse_xfm"),
        ]),
        (atlas_to_native, outputnode, [("output_image", "atlas_native")]),
        (roi_volumes, outputnode, [("out_tsv", "morph_tsv")]),
    ])  # fmt: skip
    _add_mask_checks(
        workflow, preproc, brain, segmentation, outputnode, use_deepbet=use_deepbet, precomputed=precomputed
    )
    return workflow


# The helpers below add nodes to the workflow of init_anat_preproc_wf itself (no sub-workflow),
# so that every node keeps its name and place (``anat_wf.n4``, ``anat_wf.registration``, ...).


def _add_precomputed_brain(workflow, inputnode):
    """The given bias-corrected T1w and brain mask, as ``(preproc, brain)`` nodes."""
    # `preproc.out_file` is the bias-corrected head, `brain` gives out_file/out_mask and
    # `transforms` forward/reverse_transform, as the computed steps do.
    preproc = pe.Node(niu.IdentityInterface(fields=["out_file"]), name="precomputed_t1w")
    brain = pe.Node(
        niu.Function(function=_apply_mask, input_names=["in_file", "mask_file"],
                     output_names=["out_file", "out_mask"]),
        name="precomputed_brain",
    )
    workflow.connect([
        (inputnode, preproc, [("t1w_preproc", "out_file")]),
        (inputnode, brain, [("t1w_preproc", "in_file"), ("t1w_mask", "mask_file")]),
    ])  # fmt: skip
    return preproc, brain


def _add_brain_extraction(workflow, inputnode, validate, *, use_deepbet, n4_shrink_factor, reg_quality, threaded):
    """N4 of the validated T1w, then deepbet or template-based brain extraction: ``(n4, brain)``."""
    omp_nthreads = threaded["num_threads"]
    preproc = pe.Node(
        N4BiasFieldCorrection(shrink_factor=n4_shrink_factor or 0, num_threads=omp_nthreads),
        name="n4", n_procs=omp_nthreads, mem_gb=MEM_GB["n4"],
    )
    if use_deepbet:
        brain = pe.Node(
            DeepBetBrainExtraction(**threaded),
            name="deepbet", n_procs=omp_nthreads, mem_gb=MEM_GB["deepbet"],
        )
        templates = []
    else:
        brain = pe.Node(
            BrainExtraction(reg_quality=reg_quality, **threaded),
            name="brain_extraction", n_procs=omp_nthreads, mem_gb=MEM_GB["brain_extraction"],
        )
        templates = [
            (inputnode, brain, [
                ("template", "template"),
                ("template_mask", "template_mask"),
                ("template_probsegs", "template_probsegs"),
            ]),
        ]  # fmt: skip
    workflow.connect([
        (validate, preproc, [("out_file", "in_file")]),
        (preproc, brain, [("out_file", "in_file")]),
    ] + templates)  # fmt: skip
    return preproc, brain


def _add_precomputed_transforms(workflow, inputnode):
    """The given composite transforms, as a node with forward/reverse_transform."""
    transforms = pe.Node(
        niu.IdentityInterface(fields=["forward_transform", "reverse_transform"]), name="precomputed_xfms"
    )
    workflow.connect([
        (inputnode, transforms, [("forward_xfm", "forward_transform"), ("reverse_xfm", "reverse_transform")]),
    ])  # fmt: skip
    return transforms


def _add_registration(workflow, inputnode, brain, *, reg_quality, threaded):
    """SyN registration of the extracted brain to the template brain (both masks)."""
    omp_nthreads = threaded["num_threads"]
    transforms = pe.Node(
        RegistrationSyN(reg_quality=reg_quality, **threaded),
        name="registration", n_procs=omp_nthreads, mem_gb=MEM_GB["registration"],
    )
    workflow.connect([
        (brain, transforms, [("out_file", "moving"), ("out_mask", "moving_mask")]),
        (inputnode, transforms, [("template", "fixed"), ("template_mask", "fixed_mask")]),
    ])  # fmt: skip
    return transforms


def _resample_node(interpolation, name, omp_nthreads, node=pe.Node, **kwargs):
    """An ApplyTransforms node (``node``: pe.Node or pe.MapNode) with its threads and memory."""
    return node(
        ApplyTransforms(interpolation=interpolation, num_threads=omp_nthreads),
        name=name, n_procs=omp_nthreads, mem_gb=MEM_GB["resample"], **kwargs,
    )  # fmt: skip


def _add_segmentation(workflow, inputnode, preproc, brain, transforms, *, threaded):
    """Atropos on the extracted brain with the template's tissue priors in native space."""
    omp_nthreads = threaded["num_threads"]
    if transforms is brain:
        # brain extraction already resampled the tissue priors through this transform
        priors_to_native, native_priors = brain, "native_probsegs"
    else:
        priors_to_native = _resample_node(
            "linear", "priors_to_native", omp_nthreads, node=pe.MapNode, iterfield=["input_image"]
        )
        native_priors = "output_image"
        workflow.connect([
            (inputnode, priors_to_native, [("template_probsegs", "input_image")]),
            (preproc, priors_to_native, [("out_file", "reference_image")]),
            (transforms, priors_to_native, [(("reverse_transform", _as_list), "transforms")]),
        ])  # fmt: skip
    segmentation = pe.Node(
        AtroposSegmentation(**threaded),
        name="segmentation", n_procs=omp_nthreads, mem_gb=MEM_GB["segmentation"],
    )
    workflow.connect([
        (brain, segmentation, [("out_file", "in_file"), ("out_mask", "mask_file")]),
        (priors_to_native, segmentation, [(native_priors, "prior_probsegs")]),
    ])  # fmt: skip
    return segmentation


def _add_resampling(workflow, inputnode, preproc, brain, transforms, *, omp_nthreads):
    """The atlas into native space, the T1w and its mask into template space: three nodes."""
    # nearest neighbour, not genericLabel: at 1 mm the ROI volumes differ by 0.4 % (median over
    # 135 regions), and genericLabel's per-label interpolation took 18 s instead of 4 s
    atlas_to_native = _resample_node("nearestNeighbor", "atlas_to_native", omp_nthreads)
    t1w_to_std = _resample_node("linear", "t1w_to_std", omp_nthreads)
    mask_to_std = _resample_node("nearestNeighbor", "mask_to_std", omp_nthreads)
    workflow.connect([
        (inputnode, atlas_to_native, [("atlas_dseg", "input_image")]),
        (preproc, atlas_to_native, [("out_file", "reference_image")]),
        (transforms, atlas_to_native, [(("reverse_transform", _as_list), "transforms")]),
        (preproc, t1w_to_std, [("out_file", "input_image")]),
        (inputnode, t1w_to_std, [("template", "reference_image")]),
        (transforms, t1w_to_std, [(("forward_transform", _as_list), "transforms")]),
        (brain, mask_to_std, [("out_mask", "input_image")]),
        (inputnode, mask_to_std, [("template", "reference_image")]),
        (transforms, mask_to_std, [(("forward_transform", _as_list), "transforms")]),
    ])  # fmt: skip
    return atlas_to_native, t1w_to_std, mask_to_std


def _add_mask_checks(workflow, preproc, brain, segmentation, outputnode, *, use_deepbet, precomputed):
    """Plausibility checks of the brain mask, and its sidecar fields, into the outputs."""
    mask_checks = pe.Node(BrainMaskChecks(), name="mask_checks")
    if use_deepbet:
        workflow.connect([(brain, mask_checks, [("provenance", "extractor")])])
    else:
        mask_checks.inputs.extractor = _extractor(precomputed)
    workflow.connect([
        (preproc, mask_checks, [("out_file", "head_file")]),
        (brain, mask_checks, [("out_mask", "mask_file")]),
        (segmentation, mask_checks, [("out_dseg", "dseg_file")]),
        (mask_checks, outputnode, [("mask_meta", "mask_meta"), ("failed", "qc_failed")]),
    ])  # fmt: skip


def _extractor(precomputed) -> dict:
    """``BrainExtraction`` of a mask that deepbet did not make."""
    if precomputed:
        return {"Tool": "precomputed", "Description": "the brain mask given with --derivatives"}
    from importlib import metadata

    return {
        "Tool": "bidsharmony template registration (antspyx)",
        "Version": metadata.version("antspyx"),
        "Description": "head cut to 170 mm below its top, registered to the brain template; "
        "template mask warped back and refined by intensity classes",
    }


def _as_list(value):
    return [value]


def _check_precomputed(precomputed) -> tuple[str, ...]:
    names = tuple(f for f in PRECOMPUTED_FIELDS if f in set(precomputed))
    unknown = set(precomputed) - set(PRECOMPUTED_FIELDS)
    if unknown or names not in ((), PRECOMPUTED_FIELDS[:2], PRECOMPUTED_FIELDS):
        raise ValueError(
            f"precomputed={sorted(precomputed)}: give none, {list(PRECOMPUTED_FIELDS[:2])} or "
            f"all of {list(PRECOMPUTED_FIELDS)}"
        )
    return names


def _apply_mask(in_file, mask_file):
    """Zero the T1w outside the brain mask (the moving image of the template registration)."""
    import os

    import nibabel as nb
    import numpy as np

    image, mask = nb.load(in_file), nb.load(mask_file)
    if image.shape[:3] != mask.shape[:3] or not np.allclose(image.affine, mask.affine, atol=1e-3):
        raise ValueError(f"{mask_file} is not on the grid of {in_file}: the brain mask must match the T1w")
    data = np.asarray(image.dataobj, dtype=np.float32) * (np.asarray(mask.dataobj) > 0)
    out_file = os.path.abspath("t1w_brain.nii.gz")
    nb.Nifti1Image(data, image.affine).to_filename(out_file)
    return out_file, os.path.abspath(mask_file)
