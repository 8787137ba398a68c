"""Writing the participant level's outputs: one ``init_ds_*_wf`` per output type.

Each workflow takes the raw T1w as ``source_file`` (it names the outputs and becomes the
``bids:raw:`` entry of their ``Sources``) and writes through
:class:`~bidsharmony.interfaces.derivatives.DerivativesDataSink`.
"""

from __future__ import annotations

from nipype.interfaces import utility as niu
from nipype.pipeline import engine as pe

from ..interfaces.derivatives import DerivativesDataSink
from ..morphometry import TISSUE_LABELS

DEFAULT_MEMORY_MIN_GB = 0.01
TISSUE_ORDER = [TISSUE_LABELS[i] for i in sorted(TISSUE_LABELS)]  # CSF, GM, WM


def derivatives_sink(name, *, output_dir, bids_dir, meta=None, **entities):
    return pe.Node(
        DerivativesDataSink(
            base_directory=str(output_dir), bids_dir=str(bids_dir), meta_dict=meta or {}, **entities
        ),
        name=name,
        run_without_submitting=True,
        # run again even when cached: an output deleted since the last run is written again
        # (an unchanged one is left as it is, see DerivativesDataSink)
        overwrite=True,
        mem_gb=DEFAULT_MEMORY_MIN_GB,
    )


def init_ds_anat_native_wf(*, output_dir, bids_dir, parameters: dict, name="ds_anat_native_wf"):
    """Native-space T1w, brain mask, tissue dseg and [CSF, GM, WM] probseg.

    The input ``mask_meta`` (computed by the workflow: how the mask was made and its quality
    checks) is added to the sidecars of the mask and the preprocessed T1w.
    """
    workflow = pe.Workflow(name=name)
    inputnode = pe.Node(
        niu.IdentityInterface(
            fields=["source_file", "t1w_preproc", "t1w_mask", "t1w_dseg", "t1w_probsegs", "mask_meta"]
        ),
        name="inputnode",
    )
    common = {"output_dir": output_dir, "bids_dir": bids_dir}
    # BIDS requires SkullStripped on preprocessed T1w: bidsharmony's keep the whole head.
    preproc_meta = {"SkullStripped": False, **parameters}
    ds_t1w = derivatives_sink("ds_t1w", desc="preproc", suffix="T1w", meta=preproc_meta, **common)
    ds_mask = derivatives_sink("ds_mask", desc="brain", suffix="mask", meta={"Type": "Brain", **parameters}, **common)
    ds_dseg = derivatives_sink("ds_dseg", suffix="dseg", meta={"Labels": {str(k): v for k, v in TISSUE_LABELS.items()}, **parameters}, **common)
    workflow.connect([
        (inputnode, ds_t1w, [("source_file", "source_file"), ("t1w_preproc", "in_file")]),
        (inputnode, ds_mask, [("source_file", "source_file"), ("t1w_mask", "in_file")]),
        (inputnode, ds_dseg, [("source_file", "source_file"), ("t1w_dseg", "in_file")]),
    ])  # fmt: skip
    for sink in (ds_t1w, ds_mask):
        _add_computed_meta(workflow, inputnode, "mask_meta", sink)
    for index, tissue in enumerate(TISSUE_ORDER):
        ds_probseg = derivatives_sink(f"ds_probseg_{tissue.lower()}", label=tissue, suffix="probseg", meta=parameters, **common)
        workflow.connect([
            (inputnode, ds_probseg, [
                ("source_file", "source_file"),
                (("t1w_probsegs", _pick, index), "in_file"),
            ]),
        ])  # fmt: skip
    return workflow


def init_ds_template_wf(*, output_dir, bids_dir, template: str, parameters: dict, name="ds_template_wf"):
    """Template-space T1w and mask, and the transforms between T1w and template."""
    workflow = pe.Workflow(name=name)
    inputnode = pe.Node(
        niu.IdentityInterface(fields=["source_file", "std_t1w", "std_mask", "forward_xfm", "reverse_xfm"]),
        name="inputnode",
    )
    common = {"output_dir": output_dir, "bids_dir": bids_dir}
    # A standard TemplateFlow identifier in `space-` needs no SpatialReference (BIDS 1.9).
    spatial = {"Template": template, **parameters}
    sinks = {
        "std_t1w": derivatives_sink(
            "ds_std_t1w", space=template, desc="preproc", suffix="T1w", meta={"SkullStripped": False, **spatial}, **common
        ),
        "std_mask": derivatives_sink("ds_std_mask", space=template, desc="brain", suffix="mask", meta={"Type": "Brain", **spatial}, **common),
        "forward_xfm": derivatives_sink(
            "ds_forward_xfm", from_="T1w", to=template, mode="image", suffix="xfm", extension=".h5",
            meta={"Type": "composite ITK transform (ANTs)", **parameters}, **common,
        ),
        "reverse_xfm": derivatives_sink(
            "ds_reverse_xfm", from_=template, to="T1w", mode="image", suffix="xfm", extension=".h5",
            meta={"Type": "composite ITK transform (ANTs)", **parameters}, **common,
        ),
    }
    for field, sink in sinks.items():
        workflow.connect([(inputnode, sink, [("source_file", "source_file"), (field, "in_file")])])
    return workflow


def init_ds_morphometry_wf(*, output_dir, bids_dir, atlas: str, atlas_meta: dict, parameters: dict, name="ds_morphometry_wf"):
    """Native-space atlas labels and the ROI-volume table."""
    workflow = pe.Workflow(name=name)
    inputnode = pe.Node(
        niu.IdentityInterface(fields=["source_file", "atlas_native", "morph_tsv", "mask_meta"]), name="inputnode"
    )
    common = {"output_dir": output_dir, "bids_dir": bids_dir}
    # No root atlas-<label>_description.json (BIDS 1.11 recommends one): bids-validator 3.0.2
    # reports it as SIDECAR_WITHOUT_DATAFILE, an error, while its absence is a warning.
    ds_atlas = derivatives_sink("ds_atlas", atlas=atlas, suffix="dseg", meta={**atlas_meta, **parameters}, **common)
    morph_meta = {
        "Units": "mm^3",
        "Description": "Volumes on hard labels inside the brain mask: volume_<label> all voxels of "
        "the label, gm_<label> its grey-matter voxels, volume_ICV the brain mask; see "
        "bidsharmony.morphometry. QualityChecks: the brain mask's (a failed check makes "
        "every volume suspect).",
        **atlas_meta,
        **parameters,
    }
    ds_morph = derivatives_sink("ds_morph", atlas=atlas, desc="volume", suffix="morph", extension=".tsv", meta=morph_meta, **common)
    workflow.connect([
        (inputnode, ds_atlas, [("source_file", "source_file"), ("atlas_native", "in_file")]),
        (inputnode, ds_morph, [("source_file", "source_file"), ("morph_tsv", "in_file")]),
    ])  # fmt: skip
    _add_computed_meta(workflow, inputnode, "mask_meta", ds_morph)
    return workflow


def _add_computed_meta(workflow, inputnode, field, sink):
    """Feed ``sink`` its fixed sidecar fields updated with the dict ``inputnode.<field>``."""
    merge = pe.Node(
        niu.Function(function=_merged_meta, input_names=["base", "extra"], output_names=["meta"]),
        name=f"{sink.name}_meta", run_without_submitting=True, mem_gb=DEFAULT_MEMORY_MIN_GB,
    )
    merge.inputs.base = dict(sink.inputs.meta_dict)
    workflow.connect([
        (inputnode, merge, [(field, "extra")]),
        (merge, sink, [("meta", "meta_dict")]),
    ])  # fmt: skip


def _merged_meta(base, extra=None):
    """``base`` sidecar fields updated with ``extra`` (a dict computed by the workflow)."""
    return {**base, **(extra or {})}


def _pick(files, index):
    return files[index]
