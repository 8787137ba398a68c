"""Bad paths: not a dataset, outputs in or through the input, unwritable outputs, odd names.

Each refusal is a BIDS-App exit code and one line naming the path and the fix, with the input
dataset byte-identical afterwards. Paths with spaces and non-ASCII characters must simply work.
Covered elsewhere (not repeated): a missing bids_dir (tests/cli/test_run.py::
test_missing_input_is_66), an empty folder (test_not_bids_is_16), the output folder inside the
input (test_output_inside_input_is_refused), an unknown participant label
(test_unknown_participant_is_18).
"""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import nibabel as nb
import numpy as np
import pandas as pd
import pytest

from bidsharmony.errors import EXIT_BIDS_INVALID, EXIT_OK, EXIT_USAGE
from reliability_helpers import assert_one_line_error, checksums, group_argv, run_cli, write_group_inputs


@pytest.fixture
def bids(tmp_path) -> Path:
    """A minimal valid BIDS dataset (one 4 mm T1w); these cases never read the image."""
    root = tmp_path / "bids"
    anat = root / "sub-01" / "anat"
    anat.mkdir(parents=True)
    (root / "dataset_description.json").write_text('{"Name": "paths", "BIDSVersion": "1.9.0"}')
    image = np.random.default_rng(0).uniform(1, 100, (12, 12, 12)).astype(np.float32)
    nb.Nifti1Image(image, np.diag([4.0, 4.0, 4.0, 1.0])).to_filename(anat / "sub-01_T1w.nii.gz")
    return root


def _refused(argv, bids, capsys, code, *needles):
    before = checksums(bids)
    got, _, err = run_cli(argv, capsys)
    assert got == code, err
    line = assert_one_line_error(err, *needles)
    assert checksums(bids) == before
    return line


def test_folder_of_loose_images_is_not_bids(tmp_path, capsys):
    scans = tmp_path / "scans"
    scans.mkdir()
    nb.Nifti1Image(np.ones((9, 9, 9), np.float32), np.eye(4)).to_filename(scans / "T1_MPRAGE.nii.gz")
    _refused([scans, tmp_path / "out", "participant"], scans, capsys, EXIT_BIDS_INVALID,
             str(scans / "dataset_description.json"), "point at the dataset root")


def test_work_folder_inside_the_input_is_refused(bids, tmp_path, capsys):
    _refused([bids, tmp_path / "out", "participant", "-w", bids / "work"], bids, capsys, EXIT_USAGE,
             "work folder", "inside the input dataset", "choose a work folder outside it")
    assert not (bids / "work").exists()


def test_output_folder_reached_through_a_symlink_into_the_input_is_refused(bids, tmp_path, capsys):
    (bids / "derivatives").mkdir()
    link = tmp_path / "results"
    link.symlink_to(bids / "derivatives", target_is_directory=True)
    _refused([bids, link / "bidsharmony", "participant"], bids, capsys, EXIT_USAGE, "inside the input dataset")


def test_output_folder_that_is_a_file_is_refused(bids, tmp_path, capsys):
    out = tmp_path / "out"
    out.write_text("not a folder")
    _refused([bids, out, "participant"], bids, capsys, EXIT_USAGE, str(out), "existing file", "choose a folder")
    assert out.read_text() == "not a folder"


@pytest.fixture
def read_only(tmp_path):
    """A folder this process cannot write into, even as root (then made immutable)."""
    folder = tmp_path / "read_only"
    folder.mkdir()
    folder.chmod(0o555)
    immutable = os.geteuid() == 0 and shutil.which("chattr") is not None
    if immutable and subprocess.run(["chattr", "+i", str(folder)], capture_output=True).returncode != 0:
        immutable = False
    try:
        try:
            (folder / "probe").touch()
        except OSError:
            pass
        else:
            (folder / "probe").unlink()
            pytest.skip("cannot make a folder read-only here (root without chattr +i)")
        yield folder
    finally:
        if immutable:
            subprocess.run(["chattr", "-i", str(folder)], check=True)
        folder.chmod(0o755)


@pytest.mark.parametrize("inside", [False, True], ids=["output_is_read_only", "parent_is_read_only"])
def test_read_only_output_folder_is_refused_up_front(bids, read_only, capsys, inside):
    out = read_only / "out" if inside else read_only
    _refused([bids, out, "participant"], bids, capsys, EXIT_USAGE, str(out), "cannot write", "writable")


def test_unicode_and_spaces_in_every_path_work(tmp_path, capsys):
    """Group level end to end (fast); the participant level runs in such a path in the slow
    crash-and-resume test (test_reliability_resume.py)."""
    root = tmp_path / "Études cliniques" / "données 2024 ñ"
    bids, features, table = write_group_inputs(root)
    renamed = features.with_name("volumes ROI – été.tsv")
    features.rename(renamed)
    out = root / "dérivés avec espace"
    before = checksums(bids)
    code, _, err = run_cli(group_argv(bids, out, renamed, "--harmonizer", "combat", "-w", root / "trabajo ü"),
                           capsys)
    assert code == EXIT_OK, err
    harmonized = pd.read_csv(out / "group" / "desc-combat_morph.tsv", sep="\t")
    assert len(harmonized) == len(table.features)
    assert (out / "group" / "models" / "combat" / "manifest.json").is_file()
    assert checksums(bids) == before


def test_unicode_path_in_an_error_is_still_one_line(tmp_path, capsys):
    folder = tmp_path / "données brutes ü"
    folder.mkdir()
    _refused([folder, tmp_path / "sortie", "participant"], folder, capsys, EXIT_BIDS_INVALID, "données brutes ü")
