"""Bad input at the participant level: a BIDS-App exit code, one clear line, input untouched.

Every case copies a tiny synthetic dataset (two subjects at 4 mm), damages it the way real
datasets are damaged, runs ``bidsharmony <bids> <out> participant`` in this process and
asserts (1) the exit code, (2) exactly one ``bidsharmony: error:`` line on stderr that names
the offending file and says what to do, with no traceback, and (3) every file of the input
dataset byte-identical afterwards. All cases stop before any Nipype node runs (seconds each).

The image checks themselves (each bad header/voxel case against ``validate_t1w``) are unit
tested in tests/interfaces/test_images.py; here they are driven through the command line.
"""

from __future__ import annotations

import gzip
import json
import shutil
from pathlib import Path

import nibabel as nb
import numpy as np
import pytest

from bidsharmony.datasets.synthetic import make_dataset
from bidsharmony.errors import EXIT_BIDS_INVALID, EXIT_ERROR, EXIT_NO_DATA, EXIT_USAGE
from reliability_helpers import assert_one_line_error, checksums, run_cli

T1W = "sub-001/anat/sub-001_T1w.nii.gz"


@pytest.fixture(scope="module")
def dataset(tmp_path_factory) -> Path:
    """A valid two-subject, two-site BIDS dataset at 4 mm (made once per module)."""
    root = tmp_path_factory.mktemp("reliability_inputs")
    return make_dataset(root, n_subjects=2, n_sites=2, resolution=4.0, seed=11, n_traveling=0).bids_dir


@pytest.fixture
def bids(dataset, tmp_path) -> Path:
    """A private copy of the dataset that a case may damage."""
    return Path(shutil.copytree(dataset, tmp_path / "bids"))


def _resave(bids: Path, transform) -> str:
    """Rewrite sub-001's T1w as ``transform(data, affine) -> (data, affine)``; return its name."""
    img = nb.load(bids / T1W)
    data, affine = transform(np.asanyarray(img.dataobj).astype(np.float32), img.affine.copy())
    nb.Nifti1Image(data, affine).to_filename(bids / T1W)
    return Path(T1W).name


def _truncate(bids: Path) -> str:
    path = bids / T1W
    raw = path.read_bytes()
    path.write_bytes(raw[: len(raw) // 2])
    return path.name


def _corrupt_gzip(bids: Path) -> str:
    path = bids / T1W
    raw = bytearray(path.read_bytes())
    raw[len(raw) // 3: len(raw) // 3 + 64] = b"\xff" * 64  # garbage inside the deflate stream
    path.write_bytes(bytes(raw))
    return path.name


def _not_gzip(bids: Path) -> str:
    (bids / T1W).write_bytes(gzip.compress(b"this is a DICOM export log, not an image\n" * 20))
    return Path(T1W).name


def _four_d(data, affine):
    return np.stack([data, data * 1.01], axis=-1), affine


def _two_d(data, affine):
    return data[:, :, data.shape[2] // 2: data.shape[2] // 2 + 1], affine


def _nan(data, affine):
    data[data > np.percentile(data, 99)] = np.nan
    return data, affine


def _inf(data, affine):
    data[0, 0, 0] = np.inf
    return data, affine


def _empty(data, affine):
    return np.zeros_like(data), affine


def _huge_voxel(data, affine):
    affine[:3, 2] *= 5.0  # 20 mm slices: a header written in cm, or pixdim garbage
    return data, affine


def _sheared(data, affine):
    affine[:3, 1] += 0.4 * affine[:3, 0]  # a gantry tilt left in the affine, not resliced
    return data, affine


def _image_case(transform):
    return lambda bids: _resave(bids, transform)


def _remove_description(bids: Path) -> str:
    (bids / "dataset_description.json").unlink()
    return "dataset_description.json"


def _broken_description(bids: Path) -> str:
    (bids / "dataset_description.json").write_text('{"Name": "tiny", "BIDSVersion": ')
    return "dataset_description.json"


def _no_t1w(bids: Path) -> str:
    """Only T2w images: valid BIDS, nothing for a T1w pipeline."""
    for t1w in sorted(bids.glob("sub-*/anat/*_T1w.*")):
        t1w.rename(t1w.with_name(t1w.name.replace("_T1w", "_T2w")))
    return "no T1w image"


def _t1w_elsewhere(bids: Path) -> str:
    """The T1w files exist but in the wrong folder (func/) and are not picked up."""
    for t1w in sorted(bids.glob("sub-*/anat/*_T1w.*")):
        target = t1w.parent.parent / "func" / t1w.name
        target.parent.mkdir(exist_ok=True)
        t1w.rename(target)
    return "sub-001/func/sub-001_T1w.nii.gz"


# case: (damage(bids) -> text naming the file, exit code, words of the fix)
CASES = {
    "missing_dataset_description": (_remove_description, EXIT_BIDS_INVALID, ("add a dataset_description.json",)),
    "broken_dataset_description": (_broken_description, EXIT_BIDS_INVALID, ("not valid JSON", "fix the file")),
    "no_t1w": (_no_t1w, EXIT_NO_DATA, ("--participant-label",)),
    "t1w_in_wrong_folder": (_t1w_elsewhere, EXIT_BIDS_INVALID, ("rename", "--skip-bids-validation")),
    "truncated_nifti": (_truncate, EXIT_ERROR, ("truncated or corrupt", "again")),
    "corrupt_gzip": (_corrupt_gzip, EXIT_ERROR, ("truncated or corrupt", "again")),
    "not_an_image": (_not_gzip, EXIT_ERROR, ("cannot be read", "again")),
    "4d_image": (_image_case(_four_d), EXIT_ERROR, ("2 volumes", "keep one volume")),
    "2d_image": (_image_case(_two_d), EXIT_ERROR, ("slices", "provide a whole-brain 3D")),
    "nan_voxels": (_image_case(_nan), EXIT_ERROR, ("NaN", "replace them")),
    "inf_voxels": (_image_case(_inf), EXIT_ERROR, ("infinite", "replace them")),
    "empty_image": (_image_case(_empty), EXIT_ERROR, ("empty", "re-export")),
    "absurd_voxel_size": (_image_case(_huge_voxel), EXIT_ERROR, ("voxel size", "fix pixdim")),
    "non_orthogonal_affine": (_image_case(_sheared), EXIT_ERROR, ("sheared", "reslice")),
}


@pytest.mark.parametrize("case", sorted(CASES))
def test_bad_input_is_refused_with_one_line_and_left_untouched(case, bids, tmp_path, capsys):
    damage, expected_code, fix = CASES[case]
    named = damage(bids)
    before = checksums(bids)
    code, _, err = run_cli([bids, tmp_path / "out", "participant", "-w", tmp_path / "work"], capsys)
    assert code == expected_code, err
    assert_one_line_error(err, named, *fix)
    assert checksums(bids) == before
    # Refused before any processing: the work folder holds no Nipype workflow folder.
    assert not (tmp_path / "work").exists() or not any((tmp_path / "work").iterdir())


def test_garbage_inside_the_gzip_stream_is_caught_by_the_t1w_check(bids):
    """nibabel alone decodes such a file into noise (it never reads the gzip trailer).

    Without the stream check the noise image passes validation and stalls the brain
    extraction's registration for minutes, so this case is also checked directly, in
    milliseconds, instead of only through the command line above.
    """
    from bidsharmony.errors import InputDataError
    from bidsharmony.interfaces.images import validate_t1w

    _corrupt_gzip(bids)
    with pytest.raises(InputDataError, match="sub-001_T1w.nii.gz: cannot be read as NIfTI"):
        validate_t1w(bids / T1W)
