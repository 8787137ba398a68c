"""bidsharmony inside other pipelines, and other pipelines' preprocessing inside bidsharmony.

One subject at 4 mm is processed once; its own outputs, copied into an fMRIPrep-style
derivatives folder (``sub-<label>/anat/sub-<label>_desc-preproc_T1w.nii.gz``, brain mask and
the two template transforms), are then

* reused by ``bidsharmony ... participant --derivatives FOLDER`` (N4, brain extraction and
  registration skipped; tissues and ROI volumes still computed), and
* fed to ``init_anat_preproc_wf`` inside a parent Nipype workflow whose own node reads the
  ROI table, as an fMRIPrep-like pipeline would import it.

Both must give the ROI volumes of the full run. About a minute on 2 cores.

The first run reads its templates from a cache made read-only (``chmod -R a-w``), as in a
container image, and must write nothing into it nor into the installed package.
"""

import json
import os
import shutil
import stat
from pathlib import Path

import pandas as pd
import pytest
from nipype.interfaces import utility as niu
from nipype.pipeline import engine as pe

import bidsharmony
from bidsharmony.cli.run import main
from bidsharmony.datasets.synthetic import make_dataset
from bidsharmony.templates import populate_offline_cache, template_inputs, use_templateflow_home
from bidsharmony.workflows.anatomical import PRECOMPUTED_FIELDS, TEMPLATE_FIELDS, init_anat_preproc_wf
from integration_helpers import PARTICIPANT_OPTIONS, build_once, missing_outputs

LABEL = "001"
TEMPLATE = "MNI152NLin2009aSym"
# the fMRIPrep names of the outputs this test reuses, by precomputed field
FMRIPREP_NAMES = {
    "t1w_preproc": f"sub-{LABEL}_desc-preproc_T1w.nii.gz",
    "t1w_mask": f"sub-{LABEL}_desc-brain_mask.nii.gz",
    "forward_xfm": f"sub-{LABEL}_from-T1w_to-{TEMPLATE}_mode-image_xfm.h5",
    "reverse_xfm": f"sub-{LABEL}_from-{TEMPLATE}_to-T1w_mode-image_xfm.h5",
}
MORPH = f"sub-{LABEL}/anat/sub-{LABEL}_atlas-Neuromorphometrics_desc-volume_morph.tsv"


def _run(argv):
    with pytest.raises(SystemExit) as exc:
        main([str(a) for a in argv])
    return exc.value.code


def _snapshot(folder: Path) -> dict[str, list]:
    """Every file under ``folder`` but bytecode caches: size, modification time and mode.

    Files only: a folder's time changes when Python adds a ``__pycache__`` to it.
    """
    return {
        p.relative_to(folder).as_posix(): [p.stat().st_size, p.stat().st_mtime_ns, p.stat().st_mode]
        for p in sorted(folder.rglob("*"))
        if p.is_file() and "__pycache__" not in p.parts
    }


def _read_only_templates(root: Path) -> Path:
    templates = populate_offline_cache(root / "templateflow", resolutions=(4,))
    for path in [*templates.rglob("*"), templates]:
        path.chmod(path.stat().st_mode & ~(stat.S_IWUSR | stat.S_IWGRP | stat.S_IWOTH))
    return templates


def _build(root):
    dataset = make_dataset(root / "data", n_subjects=1, n_sites=1, resolution=4.0, seed=5, n_traveling=0)
    out = root / "out"
    templates = _read_only_templates(root)
    package = Path(bidsharmony.__file__).parent
    before = {"templates": _snapshot(templates), "package": _snapshot(package)}
    argv = [dataset.bids_dir, out, "participant", "-w", root / "work", "--templateflow-home", templates,
            *PARTICIPANT_OPTIONS]
    previous_home = os.environ["TEMPLATEFLOW_HOME"]
    try:
        assert _run(argv) == 0
    finally:  # the run switched this process' TemplateFlow home; later tests need theirs
        use_templateflow_home(previous_home)
    after = {"templates": _snapshot(templates), "package": _snapshot(package)}
    (root / "snapshots.json").write_text(json.dumps({"before": before, "after": after}))
    # An fMRIPrep-style derivatives dataset made of the run's own outputs.
    fmriprep = root / "fmriprep"
    (fmriprep / f"sub-{LABEL}" / "anat").mkdir(parents=True)
    (fmriprep / "dataset_description.json").write_text(json.dumps({
        "Name": "fMRIPrep-style outputs", "BIDSVersion": "1.9.0", "DatasetType": "derivative",
        "GeneratedBy": [{"Name": "fMRIPrep"}],
    }))
    anat = out / f"sub-{LABEL}" / "anat"
    for name in FMRIPREP_NAMES.values():
        shutil.copyfile(anat / name, fmriprep / f"sub-{LABEL}" / "anat" / name)


@pytest.fixture(scope="module")
def first_run(tmp_path_factory):
    root = build_once(tmp_path_factory, "pipeline_integration", _build)
    return root / "data" / "bids", root, root / "out", root / "fmriprep"


def test_nothing_is_written_into_the_template_cache_or_the_package(first_run):
    """The chmod stops a non-root user only; the snapshots catch a write by root too."""
    snapshots = json.loads((first_run[1] / "snapshots.json").read_text())
    for place in ("templates", "package"):
        before, after = snapshots["before"][place], snapshots["after"][place]
        added, removed = sorted(set(after) - set(before)), sorted(set(before) - set(after))
        changed = sorted(k for k in set(before) & set(after) if before[k] != after[k])
        assert not (added or removed or changed), f"{place}: added {added}, removed {removed}, changed {changed}"
    assert snapshots["before"]["templates"], "the template cache was empty"


def test_derivatives_are_reused_instead_of_recomputed(first_run):
    bids_dir, root, out, fmriprep = first_run
    reused_out, work = root / "reused_out", root / "reused_work"
    argv = [bids_dir, reused_out, "participant", "-w", work, "--derivatives", fmriprep, *PARTICIPANT_OPTIONS]
    assert _run(argv) == 0
    assert missing_outputs(reused_out, [LABEL]) == []
    node_dirs = {p.name for p in work.rglob("*") if p.is_dir()}
    assert {"precomputed_brain", "segmentation", "roi_volumes"}  # identity nodes leave no folder <= node_dirs
    assert not node_dirs & {"n4", "brain_extraction", "registration"}, "preprocessing was recomputed"
    pd.testing.assert_frame_equal(pd.read_csv(reused_out / MORPH, sep="\t"), pd.read_csv(out / MORPH, sep="\t"))
    sidecar = json.loads((reused_out / MORPH.replace(".tsv", ".json")).read_text())
    assert sorted(Path(p).name for p in sidecar["PrecomputedInputs"]) == sorted(FMRIPREP_NAMES.values())


def test_transforms_to_another_template_are_recomputed(first_run):
    """fMRIPrep's default template differs from bidsharmony's: only the T1w and mask are reused."""
    bids_dir, root, out, fmriprep = first_run
    other = root / "fmriprep_2009c"
    shutil.copytree(fmriprep, other)
    for xfm in (other / f"sub-{LABEL}" / "anat").glob("*_xfm.h5"):
        xfm.rename(xfm.with_name(xfm.name.replace(TEMPLATE, "MNI152NLin2009cAsym")))
    reused_out, work = root / "partial_out", root / "partial_work"
    argv = [bids_dir, reused_out, "participant", "-w", work, "--derivatives", other, *PARTICIPANT_OPTIONS]
    assert _run(argv) == 0
    assert missing_outputs(reused_out, [LABEL]) == []
    node_dirs = {p.name for p in work.rglob("*") if p.is_dir()}
    assert "registration" in node_dirs and not node_dirs & {"n4", "brain_extraction"}
    full, partial = (pd.read_csv(o / MORPH, sep="\t").iloc[0] for o in (out, reused_out))
    assert partial["volume_ICV"] == full["volume_ICV"]  # the same brain mask
    regions = [c for c in full.index if c.startswith("volume_") and full[c] > 5000]
    relative = ((partial[regions] - full[regions]).abs() / full[regions]).astype(float)
    # a second SyN of the same brain: regional volumes move a little, not by a misalignment
    assert relative.median() < 0.1, relative.sort_values().tail().to_dict()


def _icv(morph_tsv):
    import pandas as pd

    return float(pd.read_csv(morph_tsv, sep="\t")["volume_ICV"].iloc[0])


def test_parent_workflow_imports_and_connects_the_anatomical_workflow(first_run):
    bids_dir, root, out, fmriprep = first_run
    inputs, _ = template_inputs(TEMPLATE, 4, "Neuromorphometrics")
    parent = pe.Workflow(name="parent_wf", base_dir=str(root / "parent_work"))
    anat_wf = init_anat_preproc_wf(precomputed=PRECOMPUTED_FIELDS, name="bidsharmony_anat_wf")
    anat_wf.inputs.inputnode.t1w = str(bids_dir / f"sub-{LABEL}" / "anat" / f"sub-{LABEL}_T1w.nii.gz")
    for field in TEMPLATE_FIELDS:
        setattr(anat_wf.inputs.inputnode, field, inputs[field])
    # the parent's own "fMRIPrep" outputs arrive through a node of the parent
    fmriprep_outputs = pe.Node(niu.IdentityInterface(fields=list(PRECOMPUTED_FIELDS)), name="fmriprep_outputs")
    for field, name in FMRIPREP_NAMES.items():
        setattr(fmriprep_outputs.inputs, field, str(fmriprep / f"sub-{LABEL}" / "anat" / name))
    icv = pe.Node(niu.Function(function=_icv, input_names=["morph_tsv"], output_names=["icv"]), name="icv")
    parent.connect([
        (fmriprep_outputs, anat_wf, [(f, f"inputnode.{f}") for f in PRECOMPUTED_FIELDS]),
        (anat_wf, icv, [("outputnode.morph_tsv", "morph_tsv")]),
    ])  # fmt: skip
    graph = parent.write_graph(graph2use="colored", format="dot", simple_form=True)
    assert Path(graph).is_file()
    names = {node.fullname for node in parent._get_all_nodes()}
    assert "bidsharmony_anat_wf.segmentation" in names and "bidsharmony_anat_wf.n4" not in names

    result = parent.run(plugin="Linear")
    icv_node = next(n for n in result.nodes() if n.name == "icv")
    expected = pd.read_csv(out / MORPH, sep="\t")["volume_ICV"].iloc[0]
    assert icv_node.result.outputs.icv == pytest.approx(expected, rel=1e-9)
