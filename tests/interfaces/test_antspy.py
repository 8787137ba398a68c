"""Running antspyx with a thread count: in this process when it already asks ITK for that
count, in a subprocess otherwise; errors come back as they were raised."""

from __future__ import annotations

import os

import nibabel as nb
import numpy as np
import pytest

from bidsharmony.errors import InputDataError
from bidsharmony.interfaces import _antspy
from bidsharmony.interfaces.ants import ApplyTransforms, apply_transforms_files
from bidsharmony.interfaces.images import validate_t1w


def test_seed_zero_is_not_passed_to_ants_as_zero():
    # ANTs takes 0 as "seed from the clock"
    assert _antspy.ants_seed(0) != 0
    assert len({_antspy.ants_seed(s) for s in range(100)}) == 100


def test_other_thread_count_runs_in_a_subprocess_with_the_same_result(tmp_path, anat):
    assert os.environ[_antspy.ITK_THREADS_VAR] == "1"  # set by tests/conftest.py
    results = {}
    for threads in (1, 2):
        folder = tmp_path / f"threads{threads}"
        folder.mkdir()
        out = ApplyTransforms(
            input_image=anat.n4, reference_image=anat.n4, transforms=[anat.forward_transform, anat.reverse_transform],
            num_threads=threads,
        ).run(cwd=str(folder)).outputs.output_image  # fmt: skip
        results[threads] = nb.load(out).get_fdata()
        logged = (folder / "antspyx_apply_transforms_files.log").exists()
        assert logged == (threads == 2)  # only the subprocess writes a log
        assert not list(folder.glob(".antspyx-*"))  # scratch files are cleaned up
    assert np.allclose(results[1], results[2], atol=1e-3)


def test_user_errors_keep_their_class_across_the_subprocess(tmp_path):
    bad = tmp_path / "sub-01_T1w.nii.gz"
    nb.Nifti1Image(np.full((10, 10, 10), np.nan, np.float32), np.eye(4)).to_filename(bad)
    with pytest.raises(InputDataError, match="sub-01_T1w.nii.gz: has 1000 NaN"):
        _antspy.run_antspyx(validate_t1w, num_threads=2, workdir=tmp_path, path=str(bad))


def test_other_errors_carry_the_child_traceback(tmp_path, anat):
    with pytest.raises(RuntimeError, match="(?s)failed in its antspyx subprocess.*invert flags"):
        _antspy.run_antspyx(
            apply_transforms_files, num_threads=2, workdir=tmp_path, input_image=anat.n4,
            reference_image=anat.n4, transforms=[anat.forward_transform],
            output_image=str(tmp_path / "x.nii.gz"), invert_transform_flags=[True, False],
        )  # fmt: skip


def test_environment_is_restored_after_an_in_process_call(tmp_path):
    before = os.environ.get(_antspy.ANTS_SEED_VAR)
    seen = _antspy.run_antspyx(_seed_seen, num_threads=1, seed=41, workdir=tmp_path)
    assert seen == str(_antspy.ants_seed(41))
    assert os.environ.get(_antspy.ANTS_SEED_VAR) == before


def _seed_seen():
    return os.environ[_antspy.ANTS_SEED_VAR]
