"""The image harmonizers' input: every template-space T1w of the participant level.

The participant level writes ``sub-<label>[/ses-<label>]/anat/*_space-<template>[_res-<n>]
_desc-preproc_T1w.nii.gz`` and its ``_desc-brain_mask`` beside it; this module gathers them,
checks that they share one grid, and joins them with each scan's covariates.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from ..errors import BidsharmonyError, MissingInputError
from .group import collect_covariates

_PREPROC = "_desc-preproc_T1w.nii.gz"
_MASK = "_desc-brain_mask.nii.gz"


@dataclass
class GroupImages:
    """Template-space scans (an :class:`~bidsharmony.harmonize.image_base.ImageSet`) and their files."""

    scans: object
    images: list[Path]
    masks: list[Path]
    header: object


def collect_template_images(output_dir: Path, template: str) -> pd.DataFrame:
    """``participant_id, session_id, image, mask`` of every template-space preprocessed T1w."""
    output_dir = Path(output_dir)
    pattern = f"sub-*/**/anat/sub-*_space-{template}_*desc-preproc_T1w.nii.gz"
    rows = []
    for image in sorted(output_dir.glob(pattern)):
        mask = image.with_name(image.name[: -len(_PREPROC)] + _MASK)
        if not mask.is_file():
            raise MissingInputError(f"{image} has no brain mask {mask.name} beside it; re-run the participant level")
        entities = dict(re.findall(r"(sub|ses)-([a-zA-Z0-9]+)", image.name))
        rows.append({
            "participant_id": f"sub-{entities['sub']}",
            "session_id": f"ses-{entities['ses']}" if "ses" in entities else "n/a",
            "image": image, "mask": mask,
        })
    if not rows:
        raise MissingInputError(
            f"no template-space images ({pattern}) under {output_dir}: run the participant level "
            f"with --output-spaces {template} first"
        )
    table = pd.DataFrame(rows)
    duplicated = table.duplicated(["participant_id", "session_id"], keep=False)
    if duplicated.any():
        names = ", ".join(p.name for p in table.loc[duplicated, "image"][:3])
        raise BidsharmonyError(
            f"several template-space T1w per scan ({names}); select one with --bids-filter-file "
            "at the participant level, or move the extra ones away"
        )
    return table


def _load(path: Path, affine, shape) -> tuple[np.ndarray, object]:
    import nibabel as nb

    try:
        img = nb.load(path)
        data = np.asarray(img.dataobj, dtype=np.float32)
    except Exception as err:  # nibabel raises many types for a damaged file
        raise BidsharmonyError(f"cannot read {path} ({type(err).__name__}); re-run the participant level") from None
    if affine is not None and (data.shape != shape or not np.allclose(img.affine, affine, atol=1e-3)):
        raise BidsharmonyError(
            f"{path} is on another grid ({data.shape}) than the first scan ({shape}); run every "
            "participant with the same --output-spaces (template and resolution)"
        )
    return data, img


def load_group_images(config) -> GroupImages:
    """Read every template-space scan with its mask and covariates (age numeric when given)."""
    from ..harmonize.image_base import ImageSet

    table = collect_template_images(config.output_dir, config.template)
    ids = table[["participant_id", "session_id"]]
    covariates = collect_covariates(config.bids_dir, ids, config.site_column, config.covariates)
    if "age" in covariates:
        covariates["age"] = pd.to_numeric(covariates["age"], errors="coerce")
    covariates["site"] = covariates["site"].astype(str)
    images, masks = [], []
    affine = shape = header = None
    for image_file, mask_file in zip(table["image"], table["mask"]):
        image, img = _load(image_file, affine, shape)
        if affine is None:
            affine, shape, header = img.affine, image.shape, img.header
        mask, _ = _load(mask_file, affine, shape)
        images.append(image)
        masks.append(mask > 0)
    scans = ImageSet(images, masks, covariates, affine)
    scans.validate()
    return GroupImages(scans, list(table["image"]), list(table["mask"]), header)
