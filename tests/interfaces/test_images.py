"""T1w validation: each bad file is refused with one line naming it; good files become RAS."""

from __future__ import annotations

import gzip

import nibabel as nb
import numpy as np
import pytest

from bidsharmony.errors import InputDataError
from bidsharmony.interfaces.images import ValidateT1w, validate_t1w


def _head_like(shape=(20, 24, 18), seed=0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    data = rng.uniform(10, 100, shape).astype(np.float32)
    data[5:15, 6:18, 4:14] += 200  # something that is not constant
    return data


def _save(tmp_path, name, data, affine=None) -> str:
    path = tmp_path / name
    nb.Nifti1Image(data, np.diag([2.0, 2.0, 2.0, 1.0]) if affine is None else affine).to_filename(path)
    return str(path)


def _truncated(tmp_path) -> str:
    good = _save(tmp_path, "good.nii.gz", _head_like())
    raw = open(good, "rb").read()
    path = tmp_path / "sub-01_truncated_T1w.nii.gz"
    path.write_bytes(raw[: len(raw) // 2])
    return str(path)


def _corrupt_gzip(tmp_path) -> str:
    path = tmp_path / "sub-01_corrupt_T1w.nii.gz"
    payload = bytearray(gzip.compress(b"\0" * 4000))
    payload[20:40] = b"x" * 20
    path.write_bytes(bytes(payload))
    return str(path)


def _text_file(tmp_path) -> str:
    path = tmp_path / "sub-01_text_T1w.nii"
    path.write_text("hello")
    return str(path)


def _zero_voxel_size(tmp_path) -> str:
    """An uncompressed NIfTI whose sform has a zero column and pixdim[2] = 0 (bytes patched).

    nibabel refuses to write such a header, so a valid one is written and patched: pixdim
    at byte 76 (float32[8]), qform_code/sform_code at 252/254 (int16), srow_y at 296.
    """
    path = tmp_path / "sub-01_zerovox_T1w.nii"
    nb.Nifti1Image(_head_like(), np.diag([2.0, 2.0, 2.0, 1.0])).to_filename(path)
    raw = bytearray(path.read_bytes())
    raw[84:88] = np.float32(0).tobytes()
    raw[252:256] = np.array([0, 1], dtype="<i2").tobytes()
    raw[296:312] = np.zeros(4, dtype="<f4").tobytes()
    path.write_bytes(bytes(raw))
    return str(path)


def _no_orientation(tmp_path) -> str:
    """qform_code = sform_code = 0 and pixdim 0 (nibabel reads such a file as 1 mm LAS)."""
    path = tmp_path / "sub-01_noorient_T1w.nii"
    nb.Nifti1Image(_head_like(), np.diag([2.0, 2.0, 2.0, 1.0])).to_filename(path)
    raw = bytearray(path.read_bytes())
    raw[80:92] = np.zeros(3, dtype="<f4").tobytes()
    raw[252:256] = np.zeros(2, dtype="<i2").tobytes()
    path.write_bytes(bytes(raw))
    return str(path)


def _sheared():
    affine = np.diag([2.0, 2.0, 2.0, 1.0])
    affine[0, 1] = 0.3  # x depends on j: voxel axes 8.5 deg from orthogonal
    return affine


def _singular():
    affine = np.diag([2.0, 2.0, 2.0, 1.0])
    affine[:3, 1] = affine[:3, 0]
    return affine


def _file(name, data, affine=None):
    """A maker of one bad file, for the table below."""
    return lambda tmp_path: _save(tmp_path, name, data, affine)


_IMAGE = _head_like()
BAD_FILES = {
    "truncated": (_truncated, "truncated or corrupt"),
    "corrupt_gzip": (_corrupt_gzip, "truncated or corrupt"),
    "4d": (_file("sub-01_4d_T1w.nii.gz", np.stack([_IMAGE] * 3, axis=-1)), "3 volumes"),
    "2d": (_file("sub-01_2d_T1w.nii.gz", _IMAGE[..., :1]), "slices"),
    "nan": (_file("sub-01_nan_T1w.nii.gz", np.where(_IMAGE > 250, np.nan, _IMAGE)), "NaN"),
    "inf": (_file("sub-01_inf_T1w.nii.gz", np.where(_IMAGE > 250, np.inf, _IMAGE)), "NaN or infinite"),
    "empty": (_file("sub-01_empty_T1w.nii.gz", np.zeros((20, 24, 18), np.float32)), "empty"),
    "constant": (_file("sub-01_const_T1w.nii.gz", np.full((20, 24, 18), 7, np.int16)), "empty"),
    "zero_voxel": (_zero_voxel_size, "voxel size"),
    "no_orientation": (_no_orientation, "no orientation"),
    "huge_voxel": (_file("sub-01_bigvox_T1w.nii.gz", _IMAGE, np.diag([2.0, 12.0, 2.0, 1.0])), "voxel size"),
    "tiny_voxel": (_file("sub-01_tinyvox_T1w.nii.gz", _IMAGE, np.diag([0.1, 1.0, 1.0, 1.0])), "voxel size"),
    "sheared": (_file("sub-01_shear_T1w.nii.gz", _IMAGE, _sheared()), "sheared"),
    "singular": (_file("sub-01_singular_T1w.nii.gz", _IMAGE, _singular()), "sheared or singular"),
    "not_nifti": (_text_file, "cannot be read"),
    "missing": (lambda p: str(p / "sub-01_missing_T1w.nii.gz"), "not found"),
}


@pytest.mark.parametrize("case", sorted(BAD_FILES))
def test_bad_files_are_refused_with_one_line_naming_the_file(tmp_path, case):
    make, expected = BAD_FILES[case]
    path = make(tmp_path)
    with pytest.raises(InputDataError) as info:
        validate_t1w(path)
    message = str(info.value)
    assert "\n" not in message
    assert message.startswith(path.split("/")[-1] + ":"), message
    assert expected in message
    assert ";" in message  # problem; fix


def test_bad_file_inside_the_interface_raises_the_same_error(tmp_path):
    path = _save(tmp_path, "sub-01_nan_T1w.nii.gz", np.full((20, 24, 18), np.nan, np.float32))
    with pytest.raises(InputDataError, match="sub-01_nan_T1w.nii.gz: has .* NaN"):
        ValidateT1w(in_file=path).run(cwd=str(tmp_path))


def test_las_image_is_reoriented_to_ras_keeping_world_positions(tmp_path):
    data = _head_like(seed=3)
    las = np.array([[-1.5, 0, 0, 40.0], [0, 1.2, 0, -30.0], [0, 0, 2.0, -20.0], [0, 0, 0, 1]])
    path = _save(tmp_path, "sub-01_T1w.nii.gz", data.astype(np.int16), las)
    assert nb.aff2axcodes(nb.load(path).affine) == ("L", "A", "S")

    result = ValidateT1w(in_file=path).run(cwd=str(tmp_path))
    out = nb.load(result.outputs.out_file)
    assert nb.aff2axcodes(out.affine) == ("R", "A", "S")
    assert out.get_data_dtype() == np.float32
    assert np.allclose(out.header.get_zooms()[:3], (1.5, 1.2, 2.0))
    # every output voxel holds the input value found at the same world position
    ijk_out = np.indices(out.shape).reshape(3, -1)
    world = out.affine[:3, :3] @ ijk_out + out.affine[:3, 3:]
    ijk_in = np.rint(np.linalg.solve(las[:3, :3], world - las[:3, 3:])).astype(int)
    original = data.astype(np.int16).astype(np.float32)
    assert np.array_equal(out.get_fdata().reshape(-1), original[tuple(ijk_in)])
    # qform and sform agree, so ITK and nibabel read the same grid
    assert np.allclose(out.get_qform(), out.get_sform())
    report = open(result.outputs.out_report).read()
    assert "LAS -> RAS" in report


def test_4d_with_one_volume_is_squeezed_and_reported(tmp_path):
    path = _save(tmp_path, "sub-01_T1w.nii.gz", _head_like()[..., None])
    result = ValidateT1w(in_file=path).run(cwd=str(tmp_path))
    assert nb.load(result.outputs.out_file).shape == (20, 24, 18)
    assert "squeezed" in open(result.outputs.out_report).read()


def test_rounding_level_non_orthogonality_is_removed(tmp_path):
    affine = np.diag([1.0, 1.0, 1.0, 1.0])
    affine[0, 1] = 2e-4
    path = _save(tmp_path, "sub-01_T1w.nii.gz", _head_like(), affine)
    notes = []
    img = validate_t1w(path, notes)
    directions = img.affine[:3, :3] / np.linalg.norm(img.affine[:3, :3], axis=0)
    assert np.allclose(directions.T @ directions, np.eye(3), atol=1e-9)
    assert any("non-orthogonality" in n for n in notes)


def test_scaled_integer_data_keeps_its_values(tmp_path):
    img = nb.Nifti1Image(_head_like().astype(np.int16), np.eye(4))
    img.header.set_slope_inter(0.5, 10)
    path = tmp_path / "sub-01_T1w.nii.gz"
    img.to_filename(path)
    out = validate_t1w(path)
    assert np.allclose(out.get_fdata(), nb.load(path).get_fdata())
