"""ROIVolumes: one TSV row that reproduces bidsharmony.morphometry exactly."""

from __future__ import annotations

import shutil

import nibabel as nb
import numpy as np
import pandas as pd
import pytest
from interfaces_scoring import ras_data

from bidsharmony.interfaces.morphometry import ROIVolumes, bids_subject_session
from bidsharmony.morphometry import feature_columns, read_label_table, roi_volumes, voxel_volume


def _row(tsv) -> pd.Series:
    table = pd.read_csv(tsv, sep="\t", keep_default_na=False)
    assert len(table) == 1
    return table.iloc[0]


def test_true_label_images_reproduce_the_true_volumes_exactly(tmp_path, head, template):
    out = ROIVolumes(
        atlas_file=head.atlas, tissues_file=head.dseg, mask_file=head.mask,
        labels_file=template["atlas_labels"], source_file=head.t1w,
    ).run(cwd=str(tmp_path)).outputs.out_tsv  # fmt: skip
    labels = read_label_table(template["atlas_labels"])
    table = pd.read_csv(out, sep="\t", keep_default_na=False)
    assert list(table.columns) == ["participant_id", "session_id"] + feature_columns(labels)
    row = table.iloc[0]
    assert row["participant_id"] == "sub-001"
    assert row["session_id"] == "n/a"
    img = nb.load(head.atlas)
    expected = roi_volumes(
        np.asanyarray(img.dataobj), np.asanyarray(nb.load(head.dseg).dataobj),
        np.asanyarray(nb.load(head.mask).dataobj), voxel_volume(img), labels,
    )  # fmt: skip
    for column in feature_columns(labels):
        assert row[column] == expected[column], column  # exact, not approximately
        assert row[column] == head.truth_volumes[column], column  # the dataset's own truth


def test_session_is_parsed_from_the_source_name(tmp_path, head, template):
    source = tmp_path / "sub-T01_ses-siteB_run-1_T1w.nii.gz"
    shutil.copyfile(head.t1w, source)
    out = ROIVolumes(
        atlas_file=head.atlas, tissues_file=head.dseg, mask_file=head.mask,
        labels_file=template["atlas_labels"], source_file=str(source),
    ).run(cwd=str(tmp_path)).outputs.out_tsv  # fmt: skip
    row = _row(out)
    assert (row["participant_id"], row["session_id"]) == ("sub-T01", "ses-siteB")
    assert out.endswith("sub-T01_ses-siteB_run-1_T1w_desc-volume_morph.tsv")


@pytest.mark.parametrize(
    "name, expected",
    [
        ("sub-01_T1w.nii.gz", ("sub-01", "n/a")),
        ("sub-abc_ses-pre_acq-mprage_T1w.nii", ("sub-abc", "ses-pre")),
        ("/data/sub-02/ses-1/anat/sub-02_ses-1_T1w.nii.gz", ("sub-02", "ses-1")),
    ],
)
def test_bids_entities(name, expected):
    assert bids_subject_session(name) == expected


def test_a_non_bids_name_is_refused():
    with pytest.raises(ValueError, match="no sub-<label>"):
        bids_subject_session("/data/anatomy.nii.gz")


def test_pipeline_outputs_measure_the_icv(tmp_path, anat, head, template):
    """On the interfaces' own outputs (3 mm, 'fast'): ICV and regional volumes near the truth.

    At 3 mm a 3 % ICV error is a mean border shift of a fifth of a voxel; measured -2.7 %
    on this head (the volumes of the issue's 5 % target are measured at 1-2 mm).
    """
    out = ROIVolumes(
        atlas_file=anat.atlas_native, tissues_file=anat.dseg, mask_file=anat.mask,
        labels_file=template["atlas_labels"], source_file=head.t1w,
    ).run(cwd=str(tmp_path)).outputs.out_tsv  # fmt: skip
    row = _row(out)
    truth = head.truth_volumes
    errors = {m: row[f"volume_{m}"] / truth[f"volume_{m}"] - 1 for m in ("ICV", "GM", "WM", "CSF")}
    labels = read_label_table(template["atlas_labels"])
    regional = [abs(row[f"volume_{n}"] / truth[f"volume_{n}"] - 1) for n in labels.values() if truth[f"volume_{n}"] > 0]
    print("relative volume errors at 3 mm:", {k: round(v, 3) for k, v in errors.items()},
          f"median |regional| {np.median(regional):.3f}")  # fmt: skip
    assert abs(errors["ICV"]) < 0.04
    assert np.median(regional) < 0.1
    # the true ICV is the mask of the truth files (same voxel count on the RAS grid)
    assert truth["volume_ICV"] == pytest.approx(np.count_nonzero(ras_data(head.mask)) * voxel_volume(nb.load(head.mask)))
