"""Three-class tissue segmentation (Atropos via antspyx), classes ordered by T1w intensity.

Threads and seed: see :mod:`bidsharmony.interfaces._common`.
"""

from __future__ import annotations

import os
from pathlib import Path

import nibabel as nb
import numpy as np
from nipype.interfaces.base import File, InputMultiObject, OutputMultiObject, SimpleInterface, TraitedSpec
from nipype.interfaces.base import isdefined, traits

from ._antspy import run_antspyx
from ._common import _like, _read_float, _save, _stem, _ThreadedInputSpec, _to_numpy_on


def atropos_files(
    in_file,
    mask_file,
    out_dseg,
    out_probsegs,
    prior_probsegs=None,
    prior_weight=0.25,
    mrf_smoothing=0.1,
    iterations=5,
) -> dict:
    """Three-class Atropos segmentation, classes ordered CSF < GM < WM by T1w intensity.

    Parameters
    ----------
    in_file, mask_file : str
        Brain T1w image and brain mask.
    out_dseg : str
        Hard labels (uint8): 0 background, 1 CSF, 2 GM, 3 WM.
    out_probsegs : list of str
        Three output files for the [CSF, GM, WM] posteriors (float32).
    prior_probsegs : list of str, optional
        [CSF, GM, WM] prior probability images on the grid of ``in_file``; without them
        Atropos starts from k-means.
    prior_weight : float
        Weight of the priors in the posterior (0: initialisation only).
    mrf_smoothing : float
        Markov random field weight (1-voxel neighbourhood).
    iterations : int
        EM iterations.

    Returns
    -------
    dict
        ``out_dseg`` and ``out_probsegs``.
    """
    import ants

    reference = nb.load(os.fspath(in_file))
    image = _read_float(in_file)
    mask = _read_float(mask_file)
    mask = ants.threshold_image(mask, 0.5, 1e12, 1, 0)
    if prior_probsegs:
        if len(prior_probsegs) != 3:
            raise ValueError(f"prior_probsegs must be [CSF, GM, WM], got {len(prior_probsegs)} files")
        init = [_read_float(p) for p in prior_probsegs]
    else:
        init = "KMeans[3]"
    result = ants.atropos(
        a=image,
        x=mask,
        i=init,
        m=f"[{mrf_smoothing},1x1x1]",
        c=f"[{int(iterations)},0]",
        priorweight=float(prior_weight) if prior_probsegs else 0.0,
        # -r 0: Atropos' internal generator starts from a constant seed. By default it is
        # seeded from the clock (measured: posteriors differ by up to 0.03 between two
        # identical calls); ANTS_RANDOM_SEED does not reach it.
        r=0,
    )
    labels = _to_numpy_on(in_file, result["segmentation"]).astype(np.int64)
    probs = [_to_numpy_on(in_file, p) for p in result["probabilityimages"]]
    t1 = np.asarray(reference.dataobj, dtype=np.float32)
    dseg, probs = _order_classes_by_intensity(t1, labels, probs)
    _save(_like(reference, dseg, np.uint8), out_dseg)
    for prob, path in zip(probs, out_probsegs):
        _save(_like(reference, prob, np.float32), path)
    return {"out_dseg": out_dseg, "out_probsegs": list(out_probsegs)}


def _order_classes_by_intensity(t1: np.ndarray, labels: np.ndarray, probs: list[np.ndarray]):
    """Relabel Atropos classes 1..3 so that their median T1w intensity increases.

    Atropos orders k-means classes by intensity, but with priors the order is the priors'
    order, and a prior set given in another order (or a T2-like contrast) would silently
    swap GM and WM; sorting here makes 1 CSF, 2 GM, 3 WM hold whatever Atropos returned.
    """
    present = [c for c in (1, 2, 3)]
    medians = [float(np.median(t1[labels == c])) if np.any(labels == c) else np.inf for c in present]
    order = np.argsort(medians, kind="stable")  # order[k] = index of the class that becomes k+1
    dseg = np.zeros(labels.shape, dtype=np.uint8)
    for new, old_index in enumerate(order, start=1):
        dseg[labels == present[old_index]] = new
    return dseg, [np.clip(probs[i], 0, 1).astype(np.float32) for i in order]


class _AtroposInputSpec(_ThreadedInputSpec):
    in_file = File(exists=True, mandatory=True, desc="brain T1w (skull-stripped or not; only the mask counts)")
    mask_file = File(exists=True, mandatory=True, desc="brain mask")
    prior_probsegs = InputMultiObject(File(exists=True), desc="[CSF, GM, WM] priors in native space")
    prior_weight = traits.Float(0.25, usedefault=True, desc="weight of the priors (0: initialisation only)")
    mrf_smoothing = traits.Float(0.1, usedefault=True, desc="MRF weight")
    iterations = traits.Int(5, usedefault=True, desc="EM iterations")


class _AtroposOutputSpec(TraitedSpec):
    out_dseg = File(exists=True, desc="uint8 labels: 0 background, 1 CSF, 2 GM, 3 WM")
    out_probsegs = OutputMultiObject(File(exists=True), desc="[CSF, GM, WM] posteriors (float32)")


class AtroposSegmentation(SimpleInterface):
    """Three-class tissue segmentation (Atropos via antspyx); see :func:`atropos_files`."""

    input_spec = _AtroposInputSpec
    output_spec = _AtroposOutputSpec

    def _run_interface(self, runtime):
        inputs = self.inputs
        cwd = Path(runtime.cwd)
        stem = _stem(inputs.in_file)
        priors = list(inputs.prior_probsegs) if isdefined(inputs.prior_probsegs) else None
        result = run_antspyx(
            atropos_files,
            num_threads=inputs.num_threads,
            seed=inputs.random_seed,
            workdir=cwd,
            in_file=inputs.in_file,
            mask_file=inputs.mask_file,
            out_dseg=str(cwd / f"{stem}_dseg.nii.gz"),
            out_probsegs=[str(cwd / f"{stem}_label-{t}_probseg.nii.gz") for t in ("CSF", "GM", "WM")],
            prior_probsegs=priors,
            prior_weight=inputs.prior_weight,
            mrf_smoothing=inputs.mrf_smoothing,
            iterations=inputs.iterations,
        )
        self._results.update(result)
        return runtime
