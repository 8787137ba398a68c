"""Deep-learning brain extraction with deepbet (``--skull-strip deepbet``).

`deepbet <https://github.com/wwu-mmll/deepbet>`_ (Fisch et al. 2024, MIT licence) segments
the brain with two TorchScript U-Nets shipped inside its wheel: a coarse one at 128³ that
finds the brain's bounding box, and a fine one run on that box resampled to 256³. Its
post-processing keeps the largest connected component and fills holes. This module calls
the installed package (:class:`deepbet.BrainExtraction`); it copies none of its code.

The interface runs in the current process on the CPU: torch's intra-op thread count can be
set per call (unlike ITK's, see :mod:`bidsharmony.interfaces._antspy`), so ``num_threads``
is applied and restored around the call, with deterministic algorithms and a fixed seed.
The network has no dropout or sampling at inference; the seed is set only so that nothing
random can slip in.

The ``provenance`` output (tool, version, threshold, SHA-256 of the weights) is what the
participant level writes into the sidecars of the brain mask and the preprocessed T1w.
"""

from __future__ import annotations

import hashlib
import os
from functools import lru_cache
from importlib import metadata
from pathlib import Path

import nibabel as nb
import numpy as np
from nipype.interfaces.base import (
    BaseInterfaceInputSpec,
    File,
    SimpleInterface,
    TraitedSpec,
    traits,
)

from ..errors import BidsharmonyError

#: deepbet's own default probability threshold of the brain class
DEEPBET_THRESHOLD = 0.5
DEEPBET_WEIGHTS = ("model.pt", "bbox_model.pt")


def deepbet_weights() -> dict[str, Path]:
    """The weight files the installed deepbet loads, by file name.

    deepbet 1.0.2 installs them as ``<site-packages>/data/models/`` (its ``DATA_PATH``),
    beside the package rather than inside it.
    """
    from deepbet.utils import DATA_PATH

    return {name: Path(DATA_PATH) / "models" / name for name in DEEPBET_WEIGHTS}


@lru_cache(maxsize=None)
def _sha256(path: str, size: int, mtime_ns: int) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def sha256_of(path) -> str:
    """SHA-256 of a file (cached per path, size and modification time)."""
    stat = os.stat(path)
    return _sha256(os.fspath(path), stat.st_size, stat.st_mtime_ns)


def deepbet_provenance(threshold: float = DEEPBET_THRESHOLD, n_dilate: int = 0) -> dict:
    """What identifies a deepbet brain mask: tool, version, settings and weights.

    Returns
    -------
    dict
        ``Tool``, ``Version``, ``Threshold``, ``NDilate``, ``Device`` and ``WeightsSHA256``
        (one entry per weight file).
    """
    weights = deepbet_weights()
    missing = [str(p) for p in weights.values() if not p.is_file()]
    if missing:
        raise BidsharmonyError(
            f"deepbet's weights are missing ({', '.join(missing)}): reinstall it with "
            "'pip install --force-reinstall --no-deps deepbet==1.0.2'"
        )
    return {
        "Tool": "deepbet",
        "Version": metadata.version("deepbet"),
        "Threshold": float(threshold),
        "NDilate": int(n_dilate),
        "Device": "cpu",
        "WeightsSHA256": {name: sha256_of(path) for name, path in weights.items()},
    }


def _torch_settings(num_threads: int, seed: int):
    """Set torch's threads, seed and determinism; return a function that restores them."""
    import torch

    saved = (torch.get_num_threads(), torch.are_deterministic_algorithms_enabled())
    torch.set_num_threads(max(1, int(num_threads)))
    torch.use_deterministic_algorithms(True)
    torch.manual_seed(int(seed))

    def restore():
        torch.set_num_threads(saved[0])
        torch.use_deterministic_algorithms(saved[1])

    return restore


def deepbet_files(
    in_file,
    out_file,
    out_mask,
    threshold=DEEPBET_THRESHOLD,
    n_dilate=0,
    num_threads=1,
    random_seed=0,
) -> dict:
    """Brain mask and skull-stripped image of one T1w with deepbet (CPU).

    Parameters
    ----------
    in_file : str
        The (N4-corrected) whole-head T1w, 3D.
    out_file, out_mask : str
        Where to write the brain (float32, zero outside the mask) and the mask (uint8 0/1).
        Both are on the grid of ``in_file`` with its affine (qform and sform).
    threshold : float
        Brain-probability threshold of deepbet's fine network (its default: 0.5).
    n_dilate : int
        Voxel layers deepbet adds to (> 0) or removes from (< 0) the mask.
    num_threads : int
        torch intra-op threads for the call.
    random_seed : int
        torch seed (inference has no randomness; set for safety).

    Returns
    -------
    dict
        ``out_file``, ``out_mask``, ``provenance`` (:func:`deepbet_provenance`) and
        ``brain_volume_ml``.
    """
    from deepbet import BrainExtraction as DeepBetExtraction

    from ._common import _like, _save

    reference = nb.load(os.fspath(in_file))
    if len(reference.shape) != 3:
        raise BidsharmonyError(f"{in_file}: deepbet brain extraction needs a 3D image, got shape {reference.shape}")
    provenance = deepbet_provenance(threshold, n_dilate)
    restore = _torch_settings(num_threads, random_seed)
    try:
        extractor = DeepBetExtraction(no_gpu=True)
        # deepbet reorients to RAS internally and returns images in the input's voxel order;
        # with no output paths it writes nothing
        _, mask_img, _ = extractor.run(reference, threshold=float(threshold), n_dilate=int(n_dilate))
    except AssertionError as err:  # deepbet's checks (e.g. no foreground for its bounding box)
        raise BidsharmonyError(f"{in_file}: deepbet brain extraction failed: {err}") from err
    finally:
        restore()
    mask = np.asarray(mask_img.dataobj) > 0
    if mask.shape != reference.shape:
        raise RuntimeError(f"deepbet returned a mask of shape {mask.shape} for {in_file} {reference.shape}")
    if not mask.any():
        raise BidsharmonyError(f"{in_file}: deepbet found no brain (empty mask)")
    data = np.asarray(reference.dataobj, dtype=np.float32)
    _save(_like(reference, mask, np.uint8), out_mask)
    _save(_like(reference, data * mask, np.float32), out_file)
    volume = float(mask.sum() * np.prod(reference.header.get_zooms()[:3]) / 1000)
    return {"out_file": out_file, "out_mask": out_mask, "provenance": provenance, "brain_volume_ml": volume}


class _DeepBetInputSpec(BaseInterfaceInputSpec):
    in_file = File(exists=True, mandatory=True, desc="N4-corrected whole-head T1w")
    threshold = traits.Range(
        0.0, 1.0, DEEPBET_THRESHOLD, usedefault=True, exclude_low=True, exclude_high=True,
        desc="brain-probability threshold (deepbet's default 0.5)",
    )  # fmt: skip
    n_dilate = traits.Int(0, usedefault=True, desc="voxel layers to add (>0) or remove (<0)")
    num_threads = traits.Int(1, usedefault=True, nohash=True, desc="torch intra-op threads for this call")
    random_seed = traits.Int(0, usedefault=True, desc="torch seed (inference is not random)")


class _DeepBetOutputSpec(TraitedSpec):
    out_file = File(exists=True, desc="skull-stripped T1w (float32, zero outside the brain)")
    out_mask = File(exists=True, desc="brain mask (uint8 0/1) on the input's grid")
    provenance = traits.Dict(desc="tool, version, threshold and SHA-256 of the weights, for sidecars")
    brain_volume_ml = traits.Float(desc="volume of the mask (mL)")


class DeepBetBrainExtraction(SimpleInterface):
    """Brain extraction with deepbet's networks on the CPU; see :func:`deepbet_files`.

    Same ``out_file``/``out_mask`` as :class:`~bidsharmony.interfaces.ants.BrainExtraction`,
    but no transform to the template: register the brain separately
    (:class:`~bidsharmony.interfaces.ants.RegistrationSyN`).
    """

    input_spec = _DeepBetInputSpec
    output_spec = _DeepBetOutputSpec

    def _run_interface(self, runtime):
        from ._common import _stem

        inputs = self.inputs
        stem = _stem(inputs.in_file)
        cwd = Path(runtime.cwd)
        self._results.update(
            deepbet_files(
                in_file=inputs.in_file,
                out_file=str(cwd / f"{stem}_brain.nii.gz"),
                out_mask=str(cwd / f"{stem}_brainmask.nii.gz"),
                threshold=inputs.threshold,
                n_dilate=inputs.n_dilate,
                num_threads=inputs.num_threads,
                random_seed=inputs.random_seed,
            )
        )
        return runtime
