"""The participant level: one sub-workflow per subject, one anatomical pipeline per T1w."""

from __future__ import annotations

import logging
import math
from collections import defaultdict
from pathlib import Path

from nipype.interfaces import utility as niu
from nipype.pipeline import engine as pe

from ..interfaces.reportlets import MaskContourReport, RegistrationReport, SegmentationReport
from ..utils.derivatives import SOURCE_ENTITIES, parse_entities
from ..utils.precomputed import find_precomputed
from .anatomical import TEMPLATE_FIELDS, init_anat_preproc_wf
from .outputs import (
    derivatives_sink,
    init_ds_anat_native_wf,
    init_ds_morphometry_wf,
    init_ds_template_wf,
)

LOGGER = logging.getLogger("bidsharmony")


def init_bidsharmony_wf(*, config, t1w_files, template_inputs: dict, atlas_meta: dict, name="bidsharmony_wf"):
    """Top-level participant workflow over the selected T1w images.

    Parameters
    ----------
    config : :class:`bidsharmony.config.Config`
        Run settings.
    t1w_files : list of str
        Selected raw T1w images.
    template_inputs : dict
        Files of the template and atlas (see :func:`bidsharmony.templates.template_inputs`).
    atlas_meta : dict
        The atlas' licence and citation, copied into the outputs' sidecars.
    """
    workflow = pe.Workflow(name=name, base_dir=str(config.work_dir))
    by_subject = defaultdict(list)
    for path in t1w_files:
        by_subject[parse_entities(path)["sub"]].append(path)
    for subject, files in sorted(by_subject.items()):
        workflow.add_nodes([
            init_single_subject_wf(
                subject_id=subject,
                t1w_files=sorted(files),
                config=config,
                template_inputs=template_inputs,
                atlas_meta=atlas_meta,
                name=f"sub_{subject}_wf",
            )
        ])
    return workflow


def run_parameters(config) -> dict:
    """The settings that shape the participant outputs, recorded in every sidecar."""
    return {
        "RandomSeed": config.random_seed,
        "RegistrationQuality": config.reg_quality,
        "N4ShrinkFactor": config.n4_shrink_factor,
        "SkullStrip": config.skull_strip,
        "Template": config.template,
        "TemplateResolution": config.template_resolution,
        "Atlas": config.atlas_name,
    }


def init_single_subject_wf(*, subject_id, t1w_files, config, template_inputs, atlas_meta, name):
    """Preprocess every T1w of one subject (one pipeline per session/run) and write outputs."""
    workflow = pe.Workflow(name=name)
    sink_args = {"output_dir": config.output_dir, "bids_dir": config.bids_dir}
    for t1w in t1w_files:
        entities = parse_entities(t1w)
        # every entity that names an output, so that rec-raw and rec-norm get workflows of their own
        tag = "_".join(f"{k}_{entities[k]}" for k in SOURCE_ENTITIES[1:] if k in entities) or "single"
        precomputed = find_precomputed(config.derivatives, t1w, config.template) if config.derivatives else {}
        anat_wf = init_anat_preproc_wf(
            reg_quality=config.reg_quality,
            n4_shrink_factor=config.n4_shrink_factor,
            omp_nthreads=config.omp_nthreads,
            random_seed=config.random_seed,
            skull_strip=config.skull_strip,
            precomputed=tuple(precomputed),
            name=f"anat_{tag}_wf",
        )
        anat_wf.inputs.inputnode.t1w = t1w
        for field in TEMPLATE_FIELDS:
            setattr(anat_wf.inputs.inputnode, field, template_inputs[field])
        for field, path in precomputed.items():
            setattr(anat_wf.inputs.inputnode, field, path)
        parameters = run_parameters(config)
        if precomputed:
            LOGGER.info("%s: reusing %s", Path(t1w).name, ", ".join(Path(p).name for p in precomputed.values()))
            parameters["PrecomputedInputs"] = sorted(precomputed.values())  # provenance in every sidecar
            parameters["SkullStrip"] = "precomputed"  # the given brain mask is used as it is

        source = pe.Node(niu.IdentityInterface(fields=["source_file"]), name=f"source_{tag}")
        source.inputs.source_file = t1w
        ds_native = init_ds_anat_native_wf(parameters=parameters, name=f"ds_native_{tag}_wf", **sink_args)
        ds_template = init_ds_template_wf(
            template=config.template, parameters=parameters, name=f"ds_template_{tag}_wf", **sink_args
        )
        ds_morph = init_ds_morphometry_wf(
            atlas=config.atlas_name, atlas_meta=atlas_meta, parameters=parameters,
            name=f"ds_morph_{tag}_wf", **sink_args,
        )
        workflow.connect([
            (source, ds_native, [("source_file", "inputnode.source_file")]),
            (source, ds_template, [("source_file", "inputnode.source_file")]),
            (source, ds_morph, [("source_file", "inputnode.source_file")]),
            (anat_wf, ds_native, [
                ("outputnode.t1w_preproc", "inputnode.t1w_preproc"),
                ("outputnode.t1w_mask", "inputnode.t1w_mask"),
                ("outputnode.t1w_dseg", "inputnode.t1w_dseg"),
                ("outputnode.t1w_probsegs", "inputnode.t1w_probsegs"),
                ("outputnode.mask_meta", "inputnode.mask_meta"),
            ]),
            (anat_wf, ds_template, [
                ("outputnode.std_t1w", "inputnode.std_t1w"),
                ("outputnode.std_mask", "inputnode.std_mask"),
                ("outputnode.forward_xfm", "inputnode.forward_xfm"),
                ("outputnode.reverse_xfm", "inputnode.reverse_xfm"),
            ]),
            (anat_wf, ds_morph, [
                ("outputnode.atlas_native", "inputnode.atlas_native"),
                ("outputnode.morph_tsv", "inputnode.morph_tsv"),
                ("outputnode.mask_meta", "inputnode.mask_meta"),
            ]),
        ])  # fmt: skip
        _connect_reportlets(workflow, anat_wf, source, tag, template_inputs, sink_args)
    return workflow


def _connect_reportlets(workflow, anat_wf, source, tag, template_inputs, sink_args):
    """QC figures written to ``sub-<label>/figures/`` for the HTML report."""
    mask_report = pe.Node(MaskContourReport(), name=f"report_mask_{tag}")
    seg_report = pe.Node(SegmentationReport(), name=f"report_seg_{tag}")
    reg_report = pe.Node(RegistrationReport(), name=f"report_reg_{tag}")
    reg_report.inputs.overlay = template_inputs["template_probsegs"][2]  # template WM edges
    workflow.connect([
        (anat_wf, mask_report, [("outputnode.t1w_preproc", "background"), ("outputnode.t1w_mask", "overlay")]),
        (anat_wf, seg_report, [("outputnode.t1w_preproc", "background"), ("outputnode.t1w_dseg", "overlay")]),
        (anat_wf, reg_report, [("outputnode.std_t1w", "background")]),
    ])  # fmt: skip
    for kind, report in (("brain", mask_report), ("dseg", seg_report), ("reg", reg_report)):
        sink = derivatives_sink(f"ds_report_{kind}_{tag}", datatype="figures", desc=kind, suffix="T1w", extension=".png", **sink_args)
        workflow.connect([
            (source, sink, [("source_file", "source_file")]),
            (report, sink, [("out_report", "in_file")]),
        ])  # fmt: skip


# Nipype plugins that submit each node as an sbatch job and read ``sbatch_args`` per node.
SLURM_PLUGINS = ("SLURM", "SLURMGraph")


def set_batch_resources(workflow, plugin: str) -> int:
    """Size each node's batch job from its own resource estimate.

    Nipype's SLURM plugins pass a node's ``plugin_args["sbatch_args"]`` to ``sbatch`` but do
    not read its ``n_procs``/``mem_gb``; without this every job would get the cluster's
    default CPUs and memory. Nodes that run inside the bidsharmony process
    (``run_without_submitting``) are left alone.

    Parameters
    ----------
    workflow : nipype.pipeline.engine.Workflow
        The workflow about to run.
    plugin : str
        The Nipype plugin name; only :data:`SLURM_PLUGINS` are changed.

    Returns
    -------
    int
        The number of nodes given ``sbatch`` resource requests.
    """
    if plugin not in SLURM_PLUGINS:
        return 0
    sized = 0
    for node in workflow._get_all_nodes():  # noqa: SLF001 - nested nodes, as Nipype runs them
        if node.run_without_submitting:
            continue
        request = f"--cpus-per-task={max(1, int(node.n_procs))} --mem={max(1, math.ceil(node.mem_gb * 1024))}M"
        extra = node.plugin_args.get("sbatch_args", "").strip()
        # Leading space: SLURMGraph appends a node's sbatch_args to the plugin's own without one.
        node.plugin_args = {**node.plugin_args, "sbatch_args": f" {extra} {request}".replace("  ", " ")}
        sized += 1
    return sized
