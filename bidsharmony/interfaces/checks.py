"""Sanity checks of a brain mask and its tissues, which every scan gets.

A wrong brain mask does not crash anything: the template registered onto the neck gives a
"brain" of two litres, and every volume after it is wrong without a word. These checks
compare the mask with what any adult head allows and say which one failed and why; the
participant level writes them into the mask's sidecar (``QualityChecks``), the report and
the final summary, and exits non-zero on a failed check only with ``--fail-on-qc``.

The images are the workflow's RAS copies, so the third voxel axis points up (superior).
"""

from __future__ import annotations

import os

import nibabel as nb
import numpy as np
from nipype.interfaces.base import BaseInterfaceInputSpec, File, SimpleInterface, TraitedSpec, traits

from . import _brainmask

#: Plausible adult brain-mask volume (mL); outside it the mask holds neck or misses brain.
BRAIN_ML_RANGE = (900.0, 2100.0)
#: Largest gap (mm) between the top of the head and the top of the brain (scalp + skull + CSF).
MAX_VERTEX_GAP_MM = 35.0
#: Largest left-right / front-back offset (mm) of the brain's centre from the head's.
MAX_CENTRE_OFFSET_MM = 30.0
#: Largest share of the mask's voxels on the image's faces (the field of view cuts the brain).
MAX_BORDER_FRACTION = 0.001
#: Plausible share of grey matter in GM + WM, and of CSF in the mask.
GM_FRACTION_RANGE = (0.30, 0.75)
MAX_CSF_FRACTION = 0.45


def _check(value, low=None, high=None, unit="") -> dict:
    passed = (low is None or value >= low) and (high is None or value <= high)
    expected = (
        f"{low:g}-{high:g}{unit}" if low is not None and high is not None
        else f"<= {high:g}{unit}" if high is not None else f">= {low:g}{unit}"
    )
    return {"Value": round(float(value), 4), "Expected": expected, "Passed": bool(passed)}


def brain_mask_checks(head_file, mask_file, dseg_file=None) -> dict:
    """Check a brain mask (and tissue classes) against what an adult head allows.

    Parameters
    ----------
    head_file : str
        The bias-corrected whole-head T1w (RAS), on the mask's grid.
    mask_file : str
        Brain mask (non-zero = brain).
    dseg_file : str, optional
        Tissue classes (1 CSF, 2 GM, 3 WM) on the same grid.

    Returns
    -------
    dict
        ``{check name: {"Value", "Expected", "Passed"}}`` for ``BrainVolume`` (mL),
        ``VertexGap`` (mm from the head's top to the mask's top: large when the mask sits on
        the neck), ``CentreOffset`` (mm, left-right/front-back, brain vs head centre),
        ``BorderFraction`` (share of the mask's voxels on the image's faces: the field of
        view cuts the brain), and with ``dseg_file`` ``GMFraction`` and ``CSFFraction``.
    """
    head_img = nb.load(os.fspath(head_file))
    mask = np.asanyarray(nb.load(os.fspath(mask_file)).dataobj) > 0
    spacing = np.asarray(head_img.header.get_zooms()[:3], dtype=float)
    voxel_ml = float(np.prod(spacing)) / 1000.0
    checks = {"BrainVolume": _check(mask.sum() * voxel_ml, *BRAIN_ML_RANGE, unit=" mL")}
    if not mask.any():
        return checks
    head = _brainmask.head_mask(np.asarray(head_img.dataobj, dtype=np.float32), spacing) | mask
    head_top = np.nonzero(head.any(axis=(0, 1)))[0].max()
    mask_top = np.nonzero(mask.any(axis=(0, 1)))[0].max()
    checks["VertexGap"] = _check((head_top - mask_top) * spacing[2], high=MAX_VERTEX_GAP_MM, unit=" mm")
    # the head's centre in the slab the brain occupies, so that a long neck does not move it
    levels = np.nonzero(mask.any(axis=(0, 1)))[0]
    slab = np.zeros_like(head)
    slab[:, :, levels.min() : levels.max() + 1] = head[:, :, levels.min() : levels.max() + 1]
    offset = (np.argwhere(mask)[:, :2].mean(0) - np.argwhere(slab)[:, :2].mean(0)) * spacing[:2]
    checks["CentreOffset"] = _check(np.linalg.norm(offset), high=MAX_CENTRE_OFFSET_MM, unit=" mm")
    faces = np.zeros_like(mask)
    faces[[0, -1], :, :] = faces[:, [0, -1], :] = faces[:, :, [0, -1]] = True
    checks["BorderFraction"] = _check(np.count_nonzero(mask & faces) / mask.sum(), high=MAX_BORDER_FRACTION)
    if dseg_file:
        dseg = np.asanyarray(nb.load(os.fspath(dseg_file)).dataobj)[mask]
        gm, wm, csf = (np.count_nonzero(dseg == k) for k in (2, 3, 1))
        checks["GMFraction"] = _check(gm / max(gm + wm, 1), *GM_FRACTION_RANGE)
        checks["CSFFraction"] = _check(csf / mask.sum(), high=MAX_CSF_FRACTION)
    return checks


def failed_checks(checks: dict) -> list[str]:
    """One line per failed check: ``"BrainVolume 1958 mL (expected 900-2100 mL)"``."""
    return [
        f"{name} {result['Value']:g} (expected {result['Expected']})"
        for name, result in checks.items()
        if not result["Passed"]
    ]


class _BrainMaskChecksInputSpec(BaseInterfaceInputSpec):
    head_file = File(exists=True, mandatory=True, desc="bias-corrected whole-head T1w (RAS)")
    mask_file = File(exists=True, mandatory=True, desc="brain mask on the same grid")
    dseg_file = File(exists=True, desc="tissue classes (1 CSF, 2 GM, 3 WM) on the same grid")
    extractor = traits.Dict(desc="how the mask was made (tool, version, ...), passed on to the sidecar")


class _BrainMaskChecksOutputSpec(TraitedSpec):
    mask_meta = traits.Dict(desc="sidecar fields: BrainExtraction and QualityChecks")
    failed = traits.List(traits.Str, desc="one line per failed check")


class BrainMaskChecks(SimpleInterface):
    """Run :func:`brain_mask_checks`; the sidecar fields of the brain mask as ``mask_meta``."""

    input_spec = _BrainMaskChecksInputSpec
    output_spec = _BrainMaskChecksOutputSpec

    def _run_interface(self, runtime):
        from nipype.interfaces.base import isdefined

        inputs = self.inputs
        dseg = inputs.dseg_file if isdefined(inputs.dseg_file) else None
        checks = brain_mask_checks(inputs.head_file, inputs.mask_file, dseg)
        failed = failed_checks(checks)
        self._results["failed"] = failed
        meta = {"QualityChecks": {"Passed": not failed, **checks}}
        if isdefined(inputs.extractor) and inputs.extractor:
            meta["BrainExtraction"] = dict(inputs.extractor)
        self._results["mask_meta"] = meta
        return runtime
