"""BIDS-Derivatives naming, URIs, the dataset description and atomic writes."""

import json
import os

import pytest

from bidsharmony.utils.derivatives import (
    derivative_path,
    generated_by,
    parse_entities,
    raw_bids_uri,
    write_dataset_description,
)
from bidsharmony.utils.io import atomic_path, atomic_write_json


def test_derivative_names_keep_source_entities_in_bids_order():
    source = "/data/sub-01/ses-B/anat/sub-01_ses-B_acq-mp_run-2_T1w.nii.gz"
    assert parse_entities(source) == {"sub": "01", "ses": "B", "acq": "mp", "run": "2", "suffix": "T1w", "extension": ".nii.gz"}
    path = derivative_path(source, space="MNI152NLin2009aSym", desc="preproc")
    assert path.as_posix() == "sub-01/ses-B/anat/sub-01_ses-B_acq-mp_run-2_space-MNI152NLin2009aSym_desc-preproc_T1w.nii.gz"
    xfm = derivative_path(source, suffix="xfm", extension=".h5", mode="image", to="MNI", **{"from": "T1w"})
    assert xfm.name == "sub-01_ses-B_acq-mp_run-2_from-T1w_to-MNI_mode-image_xfm.h5"
    with pytest.raises(ValueError, match="unknown derivative entities"):
        derivative_path(source, colour="red")


def test_raw_bids_uri(tmp_path):
    assert raw_bids_uri(tmp_path / "sub-01" / "anat" / "sub-01_T1w.nii.gz", tmp_path) == "bids:raw:sub-01/anat/sub-01_T1w.nii.gz"


def test_dataset_description_is_a_valid_derivative(tmp_path):
    bids = tmp_path / "bids"
    bids.mkdir()
    (bids / "dataset_description.json").write_text(json.dumps({"Name": "Study", "BIDSVersion": "1.9.0"}))
    path = write_dataset_description(tmp_path / "out", bids)
    description = json.loads(path.read_text())
    assert description["DatasetType"] == "derivative"
    assert description["GeneratedBy"][0]["Name"] == "bidsharmony"
    assert description["DatasetLinks"]["raw"] == bids.absolute().as_uri()
    mtime = path.stat().st_mtime_ns
    write_dataset_description(tmp_path / "out", bids)  # identical content: left alone
    assert path.stat().st_mtime_ns == mtime


def test_generated_by_lists_every_package_as_bids_provenance():
    """Not ``SoftwareVersions``: BIDS types it a string and means the scanner's software."""
    entries = generated_by()
    assert entries[0]["Name"] == "bidsharmony" and entries[0]["CodeURL"].startswith("https://")
    assert {"python", "nipype", "antspyx"} <= {e["Name"] for e in entries}
    assert all(isinstance(e["Version"], str) for e in entries)


def test_atomic_write_leaves_nothing_on_error(tmp_path):
    target = tmp_path / "table.tsv"
    with pytest.raises(RuntimeError):
        with atomic_path(target) as tmp:
            tmp.write_text("half")
            raise RuntimeError("crash mid-write")
    assert not target.exists() and os.listdir(tmp_path) == []
    atomic_write_json(target.with_suffix(".json"), {"a": 1})
    assert json.loads(target.with_suffix(".json").read_text()) == {"a": 1}
