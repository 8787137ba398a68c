"""ROI volumes on label images whose answer is known by construction."""

import nibabel as nb
import numpy as np
import pytest

from bidsharmony.morphometry import feature_columns, read_label_table, roi_volumes, roi_volumes_from_files


def _phantom():
    """Two labelled boxes; label 1 half GM half WM, label 2 all CSF; a voxel is 2 mm³."""
    atlas = np.zeros((10, 10, 10), int)
    atlas[1:5, 1:5, 1:5] = 1  # 64 voxels
    atlas[6:9, 6:9, 6:9] = 2  # 27 voxels
    tissues = np.zeros_like(atlas)
    tissues[1:5, 1:5, 1:3] = 2  # GM: 32 voxels of label 1
    tissues[1:5, 1:5, 3:5] = 3  # WM: 32 voxels
    tissues[6:9, 6:9, 6:9] = 1
    mask = atlas > 0
    return atlas, tissues, mask


def test_volumes_match_hand_count():
    atlas, tissues, mask = _phantom()
    vols = roi_volumes(atlas, tissues, mask, 2.0, {1: "Left_Box", 2: "Right_Box", 3: "Absent"})
    assert vols["volume_Left_Box"] == 128 and vols["gm_Left_Box"] == 64
    assert vols["volume_Right_Box"] == 54 and vols["gm_Right_Box"] == 0
    assert vols["volume_Absent"] == 0
    assert vols["volume_ICV"] == 182 and vols["volume_GM"] == 64 and vols["volume_WM"] == 64
    assert vols["volume_CSF"] == 54 and vols["volume_TotalBrain"] == 128
    assert list(vols) == feature_columns({1: "Left_Box", 2: "Right_Box", 3: "Absent"})


def test_voxels_outside_the_mask_do_not_count():
    atlas, tissues, mask = _phantom()
    mask[1:5, 1:5, 1:2] = False  # drop 16 GM voxels of label 1
    vols = roi_volumes(atlas, tissues, mask, 1.0, {1: "Box"})
    assert vols["volume_Box"] == 48 and vols["gm_Box"] == 16


def test_files_must_share_a_grid(tmp_path):
    atlas, tissues, mask = _phantom()
    affine = np.diag([2.0, 1.0, 1.0, 1.0])
    paths = []
    for name, data, aff in (("a", atlas, affine), ("t", tissues, affine), ("m", mask, affine * 2)):
        path = tmp_path / f"{name}.nii.gz"
        nb.Nifti1Image(data.astype("uint8"), aff).to_filename(path)
        paths.append(path)
    with pytest.raises(ValueError, match="does not share the atlas grid"):
        roi_volumes_from_files(*paths, {1: "Box"})


def test_label_table_needs_index_and_name(tmp_path):
    good = tmp_path / "good.tsv"
    good.write_text("index\tname\n0\tBackground\n4\tLeft_Box\n")
    assert read_label_table(good) == {4: "Left_Box"}
    bad = tmp_path / "bad.tsv"
    bad.write_text("label\tname\n4\tLeft_Box\n")
    with pytest.raises(ValueError, match="'index'"):
        read_label_table(bad)
