"""Finding fMRIPrep/sMRIPrep outputs to reuse: naming variants and what counts as usable."""

import pytest

from bidsharmony.errors import MissingInputError
from bidsharmony.utils.precomputed import find_precomputed

TEMPLATE = "MNI152NLin2009aSym"


def _touch(root, rel):
    path = root / rel
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(b"x")
    return str(path)


def _fmriprep_set(root, folder, prefix, template=TEMPLATE):
    return {
        "t1w_preproc": _touch(root, f"{folder}/{prefix}_desc-preproc_T1w.nii.gz"),
        "t1w_mask": _touch(root, f"{folder}/{prefix}_desc-brain_mask.nii.gz"),
        "forward_xfm": _touch(root, f"{folder}/{prefix}_from-T1w_to-{template}_mode-image_xfm.h5"),
        "reverse_xfm": _touch(root, f"{folder}/{prefix}_from-{template}_to-T1w_mode-image_xfm.h5"),
    }


def test_session_outputs_are_preferred_over_subject_level_ones(tmp_path):
    subject_level = _fmriprep_set(tmp_path, "sub-01/anat", "sub-01")
    session_level = _fmriprep_set(tmp_path, "sub-01/ses-A/anat", "sub-01_ses-A")
    assert find_precomputed([tmp_path], "sub-01/ses-A/anat/sub-01_ses-A_run-1_T1w.nii.gz", TEMPLATE) == session_level
    # another session has no outputs of its own: the subject-level (merged) anatomy is used
    assert find_precomputed([tmp_path], "sub-01/ses-B/anat/sub-01_ses-B_T1w.nii.gz", TEMPLATE) == subject_level


def test_run_specific_outputs_win_and_nothing_is_found_for_another_subject(tmp_path):
    _fmriprep_set(tmp_path, "sub-01/anat", "sub-01")
    run2 = _fmriprep_set(tmp_path, "sub-01/anat", "sub-01_run-2")
    assert find_precomputed([tmp_path], "sub-01_run-2_T1w.nii.gz", TEMPLATE) == run2
    assert find_precomputed([tmp_path], "sub-02_T1w.nii.gz", TEMPLATE) == {}


def test_transforms_to_another_template_are_not_reused(tmp_path):
    found = _fmriprep_set(tmp_path, "sub-01/anat", "sub-01", template="MNI152NLin2009cAsym")
    reused = find_precomputed([tmp_path], "sub-01_T1w.nii.gz", TEMPLATE)
    assert reused == {k: found[k] for k in ("t1w_preproc", "t1w_mask")}


def test_a_preprocessed_t1w_without_its_mask_is_not_used(tmp_path):
    _touch(tmp_path, "sub-01/anat/sub-01_desc-preproc_T1w.nii.gz")
    assert find_precomputed([tmp_path], "sub-01_T1w.nii.gz", TEMPLATE) == {}


def test_folders_are_searched_in_order(tmp_path):
    first, second = tmp_path / "smriprep", tmp_path / "fmriprep"
    _fmriprep_set(second, "sub-01/anat", "sub-01")
    expected = _fmriprep_set(first, "sub-01/anat", "sub-01")
    assert find_precomputed([first, second], "sub-01_T1w.nii.gz", TEMPLATE) == expected


def test_missing_folder_is_a_one_line_error(tmp_path):
    with pytest.raises(MissingInputError, match="--derivatives .* does not exist"):
        find_precomputed([tmp_path / "nowhere"], "sub-01_T1w.nii.gz", TEMPLATE)
