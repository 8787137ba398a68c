"""Sanity checks of a brain mask on a constructed head whose true answer is known.

The head is an ellipsoid of 'scalp' 180 mm tall with a 'neck' cylinder below it, at 2 mm;
the brain is an ellipsoid of about 1,400 mL under the top of the head. Each wrong mask
below is one of the failures seen on real scans (the template registered onto the neck,
a brain cut by the field of view, a mask a fraction of a brain).
"""

from __future__ import annotations

import json

import nibabel as nb
import numpy as np
import pytest

from bidsharmony.interfaces.checks import BrainMaskChecks, brain_mask_checks, failed_checks

SPACING = 2.0


def _ellipsoid(shape, centre_mm, radii_mm):
    grid = np.indices(shape).astype(float) * SPACING
    return sum(((g - c) / r) ** 2 for g, c, r in zip(grid, centre_mm, radii_mm)) <= 1


@pytest.fixture()
def head(tmp_path):
    shape = (100, 120, 130)  # 200 x 240 x 260 mm; the top of the head at z = 250 mm
    head = _ellipsoid(shape, (100, 120, 160), (80, 100, 90))
    grid = np.indices(shape) * SPACING
    head |= ((grid[0] - 100) ** 2 + (grid[1] - 120) ** 2 <= 45**2) & (grid[2] < 160)  # neck
    brain = _ellipsoid(shape, (100, 120, 175), (65, 80, 64))  # 4/3 pi abc = 1,394 mL
    rng = np.random.default_rng(0)
    t1w = np.where(head, 100.0, 0.0) + np.where(brain, 50.0, 0.0) + rng.normal(0, 2, shape)
    affine = np.diag([SPACING, SPACING, SPACING, 1.0])

    def save(name, data, dtype):
        path = tmp_path / name
        nb.Nifti1Image(data.astype(dtype), affine).to_filename(path)
        return str(path)

    return save("t1w.nii.gz", t1w, np.float32), brain, save


def test_a_brain_under_the_vertex_passes(head):
    t1w, brain, save = head
    checks = brain_mask_checks(t1w, save("mask.nii.gz", brain, np.uint8))
    assert checks["BrainVolume"]["Value"] == pytest.approx(1394, rel=0.02)
    assert checks["VertexGap"]["Value"] == pytest.approx(250 - 239, abs=2 * SPACING)
    assert checks["CentreOffset"]["Value"] < 2 * SPACING
    assert failed_checks(checks) == []


def test_a_mask_on_the_neck_fails_even_at_a_brain_volume(head):
    t1w, brain, save = head
    neck = np.roll(brain, -50, axis=2)  # 100 mm lower (no wrap): volume unchanged, position wrong
    checks = brain_mask_checks(t1w, save("neck.nii.gz", neck, np.uint8))
    assert checks["BrainVolume"]["Passed"]
    assert not checks["VertexGap"]["Passed"] and checks["VertexGap"]["Value"] > 100
    assert [line.split()[0] for line in failed_checks(checks)] == ["VertexGap"]


def test_small_and_cut_masks_fail(head):
    t1w, brain, save = head
    small = brain & (np.indices(brain.shape)[0] < 55)  # one hemisphere and a bit
    assert "BrainVolume" in " ".join(failed_checks(brain_mask_checks(t1w, save("small.nii.gz", small, np.uint8))))
    cut = brain.copy()
    cut[:20] = False
    cut[20] |= brain[20]  # a mask that runs into the image's left face
    cut = np.roll(cut, -20, axis=0)
    checks = brain_mask_checks(t1w, save("cut.nii.gz", cut, np.uint8))
    assert not checks["BorderFraction"]["Passed"]


def test_tissue_shares_are_checked(head):
    t1w, brain, save = head
    dseg = np.where(brain, 3, 0)
    dseg[brain & (np.indices(brain.shape)[2] > 200)] = 2
    checks = brain_mask_checks(t1w, save("mask.nii.gz", brain, np.uint8), save("dseg.nii.gz", dseg, np.uint8))
    gm = np.count_nonzero(dseg == 2) / np.count_nonzero(dseg)
    assert checks["GMFraction"]["Value"] == pytest.approx(gm, abs=1e-4)
    assert checks["GMFraction"]["Passed"] == (0.30 <= gm <= 0.75)
    all_csf = np.where(brain, 1, 0)
    checks = brain_mask_checks(t1w, save("mask.nii.gz", brain, np.uint8), save("csf.nii.gz", all_csf, np.uint8))
    assert not checks["CSFFraction"]["Passed"] and not checks["GMFraction"]["Passed"]


def test_interface_gives_sidecar_fields(head, tmp_path):
    t1w, brain, save = head
    neck = np.roll(brain, -50, axis=2)
    out = BrainMaskChecks(
        head_file=t1w, mask_file=save("neck.nii.gz", neck, np.uint8), extractor={"Tool": "test"}
    ).run(cwd=str(tmp_path)).outputs
    assert out.mask_meta["QualityChecks"]["Passed"] is False
    assert out.mask_meta["BrainExtraction"] == {"Tool": "test"}
    assert len(out.failed) == 1 and out.failed[0].startswith("VertexGap")
    json.dumps(out.mask_meta)  # goes into a JSON sidecar
