"""Finding another pipeline's preprocessing to reuse (``--derivatives``).

fMRIPrep and sMRIPrep (and bidsharmony itself) name a T1w's anatomical outputs
``sub-<label>[_ses-<label>]_desc-preproc_T1w.nii.gz``, ``..._desc-brain_mask.nii.gz`` and
``..._from-T1w_to-<template>_mode-image_xfm.h5`` (+ ``from-<template>_to-T1w``). When one
T1w per subject (or session) was processed, the acquisition and run entities are dropped;
when sessions were merged, the outputs sit in ``sub-<label>/anat`` without a session.
"""

from __future__ import annotations

import os
from pathlib import Path

from ..errors import MissingInputError
from .derivatives import SOURCE_ENTITIES, parse_entities

_EXTENSIONS = (".nii.gz", ".nii")


def _candidates(root: Path, source: dict) -> list[tuple[Path, str]]:
    """(folder, file-name prefix) pairs to look in, most specific first."""
    subject = f"sub-{source['sub']}"
    session = f"ses-{source['ses']}" if "ses" in source else None
    full = "_".join(f"{k}-{source[k]}" for k in SOURCE_ENTITIES if k in source)
    pairs = []
    if session:
        folder = root / subject / session / "anat"
        pairs += [(folder, full), (folder, f"{subject}_{session}")]
    pairs += [(root / subject / "anat", full), (root / subject / "anat", subject)]
    return list(dict.fromkeys(pairs))  # drop repeats, keep order


def _first_image(folder: Path, stem: str) -> Path | None:
    for extension in _EXTENSIONS:
        if (folder / f"{stem}{extension}").is_file():
            return folder / f"{stem}{extension}"
    return None


def find_precomputed(derivatives, source_file: str | os.PathLike, template: str) -> dict[str, str]:
    """Existing preprocessing of ``source_file`` in the ``derivatives`` folders.

    Parameters
    ----------
    derivatives : list of path
        Derivatives datasets (e.g. fMRIPrep's output folder), searched in order.
    source_file : path
        The raw T1w.
    template : str
        The registration template; transforms to another template are not reused.

    Returns
    -------
    dict
        ``{}`` when nothing usable was found; ``{"t1w_preproc", "t1w_mask"}`` when a
        preprocessed T1w and its brain mask were; plus ``{"forward_xfm", "reverse_xfm"}``
        when both transforms to ``template`` sit beside them. Keys are the names of
        :data:`bidsharmony.workflows.anatomical.PRECOMPUTED_FIELDS`.

    Raises
    ------
    MissingInputError
        When a derivatives folder does not exist.
    """
    source = parse_entities(source_file)
    for root in map(Path, derivatives):
        if not root.is_dir():
            raise MissingInputError(f"--derivatives {root} does not exist; pass the folder of an fMRIPrep/sMRIPrep run")
        for folder, prefix in _candidates(root, source):
            preproc = _first_image(folder, f"{prefix}_desc-preproc_T1w")
            mask = _first_image(folder, f"{prefix}_desc-brain_mask")
            if preproc is None or mask is None:
                continue
            found = {"t1w_preproc": str(preproc), "t1w_mask": str(mask)}
            forward = folder / f"{prefix}_from-T1w_to-{template}_mode-image_xfm.h5"
            reverse = folder / f"{prefix}_from-{template}_to-T1w_mode-image_xfm.h5"
            if forward.is_file() and reverse.is_file():
                found.update(forward_xfm=str(forward), reverse_xfm=str(reverse))
            return found
    return {}
