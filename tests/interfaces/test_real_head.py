"""Brain extraction on a real head: a Philips Elition X MPRAGE whose field of view reaches the neck.

``tests/data/real/sub-elitionx_desc-4mm_T1w.nii.gz`` (BSD-2, see the LICENSE beside it) is
the development set's neck case at 4 mm. At full resolution deepbet finds 1,569 mL and the
former template-registration path put a 1,958 mL "brain" on the neck (BENCHMARKS.md, "Real
scans"). Measured at 4 mm: deepbet 1,559 mL, 13 s on one thread; the mask's top 16 mm below
the top of the head.
"""

from __future__ import annotations

from pathlib import Path

import nibabel as nb
import numpy as np
import pytest

from bidsharmony.interfaces.checks import brain_mask_checks, failed_checks

pytest.importorskip("deepbet")
REAL_HEAD = Path(__file__).parents[1] / "data" / "real" / "sub-elitionx_desc-4mm_T1w.nii.gz"


@pytest.fixture(scope="module")
def extracted(tmp_path_factory):
    from bidsharmony.interfaces.ants import N4BiasFieldCorrection
    from bidsharmony.interfaces.images import ValidateT1w
    from bidsharmony.interfaces.skullstrip import DeepBetBrainExtraction

    work = tmp_path_factory.mktemp("real_head")
    valid = ValidateT1w(in_file=str(REAL_HEAD)).run(cwd=str(work)).outputs.out_file
    n4 = N4BiasFieldCorrection(in_file=valid).run(cwd=str(work)).outputs.out_file
    return n4, DeepBetBrainExtraction(in_file=n4).run(cwd=str(work)).outputs


@pytest.mark.comparison
def test_deepbet_finds_the_brain_not_the_neck(extracted):
    n4, out = extracted
    checks = brain_mask_checks(n4, out.out_mask)
    assert 1300 <= out.brain_volume_ml <= 1800  # 1,569 mL at 1 mm
    assert failed_checks(checks) == [], checks
    mask = np.asanyarray(nb.load(out.out_mask).dataobj) > 0
    head = nb.load(n4)
    # the field of view runs ~250 mm from the vertex down: the brain is in its upper part
    levels = np.nonzero(mask.any(axis=(0, 1)))[0]
    assert levels.min() > 0.3 * head.shape[2]


def test_a_mask_moved_onto_the_neck_is_flagged(extracted, tmp_path):
    n4, out = extracted
    img = nb.load(out.out_mask)
    mask = np.asanyarray(img.dataobj) > 0
    levels = np.nonzero(mask.any(axis=(0, 1)))[0]
    neck = np.zeros_like(mask)
    shift = levels.min()  # as far down as the image allows, without wrapping round
    neck[:, :, : mask.shape[2] - shift] = mask[:, :, shift:]
    path = tmp_path / "neck_mask.nii.gz"
    nb.Nifti1Image(neck.astype(np.uint8), img.affine).to_filename(path)
    failed = failed_checks(brain_mask_checks(n4, path))
    assert any(line.startswith("VertexGap") for line in failed), failed
