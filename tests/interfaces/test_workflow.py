"""The interfaces inside a Nipype workflow: inputs hash, a re-run comes from the cache."""

from __future__ import annotations

from pathlib import Path

import nibabel as nb
import numpy as np
from nipype.pipeline import engine as pe

from bidsharmony.interfaces.ants import N4BiasFieldCorrection
from bidsharmony.interfaces.images import ValidateT1w


def _workflow(base_dir, t1w, num_threads=1, shrink_factor=4):
    workflow = pe.Workflow(name="two_nodes", base_dir=str(base_dir))
    validate = pe.Node(ValidateT1w(in_file=t1w), name="validate")
    n4 = pe.Node(N4BiasFieldCorrection(shrink_factor=shrink_factor, num_threads=num_threads), name="n4")
    workflow.connect(validate, "out_file", n4, "in_file")
    return workflow


def _n4_output(base_dir) -> Path:
    return next((Path(base_dir) / "two_nodes" / "n4").glob("*_N4.nii.gz"))


def test_two_node_workflow_runs_and_reruns_from_cache(tmp_path, head):
    _workflow(tmp_path, head.t1w).run(plugin="MultiProc", plugin_args={"n_procs": 2})
    output = _n4_output(tmp_path)
    first = output.stat().st_mtime_ns
    corrected = nb.load(output)
    assert nb.aff2axcodes(corrected.affine) == ("R", "A", "S")
    assert np.isfinite(corrected.get_fdata()).all()

    # same inputs: nothing recomputed; num_threads is not hashed (it changes nothing)
    _workflow(tmp_path, head.t1w, num_threads=2).run(plugin="Linear")
    assert _n4_output(tmp_path).stat().st_mtime_ns == first

    # a parameter that changes the result invalidates the cache
    _workflow(tmp_path, head.t1w, shrink_factor=3).run(plugin="Linear")
    assert _n4_output(tmp_path).stat().st_mtime_ns != first
