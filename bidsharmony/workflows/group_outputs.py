"""The group level's derivatives: feature tables, images and their JSON sidecars.

Every file is written atomically (a crash never leaves half a TSV or NIfTI under its final
name), and every sidecar starts with ``GeneratedBy``; models are written by the harmonizers'
own ``save``.
"""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from ..utils.derivatives import derivative_bids_uri, generated_by
from ..utils.io import atomic_path, atomic_write_json


def write_table(table: pd.DataFrame, path: Path, meta: dict) -> Path:
    """Write a TSV and its JSON sidecar atomically."""
    with atomic_path(path) as tmp:
        table.to_csv(tmp, sep="\t", index=False, na_rep="n/a")
    sidecar = path.with_name(path.name[: -len(".tsv")] + ".json")
    atomic_write_json(sidecar, {"GeneratedBy": generated_by(), **meta})
    return path


def write_image(data, like, path: Path, meta: dict) -> Path:
    """Write a float32 NIfTI on the grid of ``like`` and its JSON sidecar, both atomically."""
    import nibabel as nb
    import numpy as np

    header = like.header.copy()
    header.set_data_dtype(np.float32)
    header.set_slope_inter(None, None)  # float data: the source's int16 scaling must not apply
    img = nb.Nifti1Image(np.asarray(data, dtype=np.float32), like.affine, header)
    with atomic_path(path) as tmp:
        img.to_filename(tmp)
    sidecar = path.with_name(path.name[: -len(".nii.gz")] + ".json")
    atomic_write_json(sidecar, {"GeneratedBy": generated_by(), **meta})
    return path


def desc_label(method: str) -> str:
    """A BIDS ``desc`` label for a method name (``flow-scm`` → ``flowscm``)."""
    return "".join(c for c in method if c.isalnum())


def table_name(config, desc: str) -> str:
    prefix = "" if config.features else f"atlas-{config.atlas_name}_"
    return f"{prefix}desc-{desc}_morph.tsv"


def write_per_scan(config, group, harmonized, desc, meta) -> list[Path]:
    """Per-scan harmonized TSVs beside the participant level's ROI tables."""
    written = []
    for index, source in group.source_files.items():
        path = Path(source)
        out = path.with_name(path.name.replace("_desc-volume_morph.tsv", f"_desc-{desc}_morph.tsv"))
        row = pd.concat([group.ids.loc[[index]], harmonized.loc[[index]]], axis=1)
        sources = [derivative_bids_uri(path.relative_to(config.output_dir))]
        written.append(write_table(row, out, {**meta, "Sources": sources}))
    return written


def model_reference(config, model_dir) -> str:
    """A BIDS URI of a model inside the output dataset, else its absolute path."""
    model_dir = Path(model_dir).absolute()
    if config.output_dir in model_dir.parents:
        return derivative_bids_uri(model_dir.relative_to(config.output_dir))
    return str(model_dir)
