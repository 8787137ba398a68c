"""Template and atlas look-ups at run time, through TemplateFlow and never downloading."""

from __future__ import annotations

import json
import os
import re
from pathlib import Path

import numpy as np

from ..errors import InputDataError, MissingInputError, UsageError
from ..morphometry import read_label_table
from .cache import ensure_offline_cache
from .home import _loaded_cache, templateflow_home, use_templateflow_home
from .labels import check_label_names
from .layout import _FIX, ATLAS, OFFLINE_TEMPLATES, PROBSEG_LABELS, _complete, _is_ours

_NIFTI_EXTENSIONS = [".nii.gz", ".nii"]


def _describe(template: str, entities: dict) -> str:
    shown = {k: v for k, v in entities.items() if k != "extension"}
    return f"{template} " + " ".join(f"{k}={v}" for k, v in sorted(shown.items()))


def _missing(template: str, entities: dict, home: Path, why: str = "no file matches") -> MissingInputError:
    return MissingInputError(
        f"TemplateFlow template {_describe(template, entities)}: {why} in "
        f"TEMPLATEFLOW_HOME={home} (bidsharmony never downloads); {_FIX}"
    )


def _templateflow_api():
    """``templateflow.api``, imported only once TEMPLATEFLOW_HOME names our home.

    Importing templateflow with an unset TEMPLATEFLOW_HOME writes a stub into ``~/.cache``;
    the variable is set first (bidsharmony's own default if it was unset).
    """
    home = templateflow_home()
    cache = _loaded_cache()
    if os.getenv("TEMPLATEFLOW_HOME") != str(home) or (
        cache is not None and Path(cache.config.root).absolute() != home
    ):
        use_templateflow_home(home)
    from templateflow import api

    return api


def _query(template: str, entities: dict) -> list[Path]:
    """TemplateFlow ``ls`` without any download; missing template folder → error first."""
    home = templateflow_home()
    # An empty or missing home would make templateflow unpack its stub skeleton into it.
    if not (home / f"tpl-{template}").is_dir():
        raise _missing(template, entities, home, f"no tpl-{template} folder")
    api = _templateflow_api()
    try:
        return [Path(p) for p in api.ls(template, **entities)]
    except ValueError as err:  # pybids: unknown entity
        raise UsageError(f"TemplateFlow query {_describe(template, entities)}: {err}") from None


def get_template(template: str, **entities) -> Path:
    """Resolve one template file through ``templateflow.api.get``, never downloading.

    Parameters
    ----------
    template : str
        TemplateFlow identifier, e.g. ``MNI152NLin2009aSym``.
    **entities
        TemplateFlow query entities (``resolution=2, desc="brain", suffix="T1w"``...).
        ``extension`` defaults to NIfTI.

    Returns
    -------
    Path
        The single matching file.

    Raises
    ------
    MissingInputError
        Nothing matches, or the match is an empty placeholder that TemplateFlow would
        download; the message names the query, TEMPLATEFLOW_HOME and the fix.
    UsageError
        The query is ambiguous or uses an unknown entity.
    """
    entities = dict(entities)
    entities.setdefault("extension", _NIFTI_EXTENSIONS)
    home = templateflow_home()
    matches = _query(template, entities)
    if not matches:
        raise _missing(template, entities, home)
    placeholders = [p.name for p in matches if not _complete(p)]
    if placeholders:
        raise _missing(template, entities, home, f"{placeholders[0]} is an empty placeholder")
    if len(matches) > 1:
        raise UsageError(
            f"TemplateFlow query {_describe(template, entities)} is ambiguous in {home}: "
            f"{', '.join(sorted(p.name for p in matches))}; add entities (e.g. resolution, desc)"
        )
    found = _templateflow_api().get(template, **entities)
    return Path(found[0] if isinstance(found, list) else found)


def _atlas_table(template: str, atlas: str, resolution: int) -> Path:
    """The dseg.tsv of a TemplateFlow atlas: resolution-specific first, then shared."""
    home = templateflow_home()
    query = {"atlas": atlas, "suffix": "dseg", "extension": ".tsv"}
    tables = [p for p in _query(template, query) if _complete(p)]
    specific = [p for p in tables if re.search(rf"_res-0*{resolution}_", p.name)]
    shared = [p for p in tables if "_res-" not in p.name]
    for group in (specific, shared):
        if len(group) == 1:
            return group[0]
    raise _missing(template, {**query, "resolution": resolution}, home,
                   "no single label table (dseg.tsv)" if tables else "no label table (dseg.tsv)")


def _looks_like_file(atlas: str) -> bool:
    return os.sep in atlas or "/" in atlas or atlas.endswith((".nii", ".nii.gz"))


def _user_table(image: Path) -> Path:
    """The dseg.tsv beside a user atlas: ``<stem>.tsv`` or the name without ``res-``."""
    stem = image.name[: -len(".nii.gz")] if image.name.endswith(".nii.gz") else image.stem
    candidates = [image.with_name(f"{stem}.tsv"),
                  image.with_name(re.sub(r"_res-[a-zA-Z0-9]+", "", stem) + ".tsv")]
    for candidate in candidates:
        if candidate.is_file():
            return candidate
    raise MissingInputError(
        f"--atlas {image}: no label table beside it; write a BIDS dseg.tsv (columns index, name) "
        f"as {candidates[0].name}"
    )


def _user_atlas(path: Path) -> tuple[Path, Path]:
    """Check a user atlas (NIfTI labels in template space + dseg.tsv) and return it."""
    import nibabel as nb

    path = path.expanduser().absolute()
    if not path.is_file():
        raise MissingInputError(
            f"--atlas {path}: no such file; give an atlas name of the template (e.g. {ATLAS}) or "
            "a NIfTI label image in template space with a BIDS dseg.tsv beside it"
        )
    if not path.name.endswith((".nii", ".nii.gz")):
        raise UsageError(f"--atlas {path}: a label image must be NIfTI (.nii or .nii.gz)")
    try:
        data = np.asanyarray(nb.load(path).dataobj)
    except Exception as err:  # nibabel raises several types for corrupt files
        raise InputDataError(f"--atlas {path}: not a readable NIfTI image ({err})") from None
    data = np.squeeze(data)
    if data.ndim != 3:
        raise InputDataError(f"--atlas {path}: a label image must be 3D, got shape {data.shape}")
    if not np.issubdtype(data.dtype, np.integer) and not np.all(np.mod(data, 1) == 0):
        raise InputDataError(f"--atlas {path}: labels must be whole numbers (this looks like a "
                             "probability map)")
    table = _user_table(path)
    try:
        labels = read_label_table(table)
    except ValueError as err:
        raise InputDataError(str(err)) from None
    check_label_names(labels.values(), table)
    unknown = sorted(set(np.unique(data).astype(int)) - set(labels) - {0})
    if unknown:
        raise InputDataError(f"--atlas {path}: labels {unknown[:10]} are not listed in {table}")
    return path, table


def get_atlas(atlas: str, template: str, resolution: int) -> tuple[Path, Path]:
    """An atlas label image in template space and its BIDS ``dseg.tsv``.

    Parameters
    ----------
    atlas : str
        A TemplateFlow atlas name (``Neuromorphometrics``) or the path of a user NIfTI label
        image in template space, with a dseg.tsv beside it (``<stem>.tsv``, or the name
        without its ``res-`` entity).
    template : str
        TemplateFlow template identifier.
    resolution : int
        TemplateFlow ``res`` index of the label image (ignored for a user file).

    Returns
    -------
    tuple of Path
        ``(dseg image, dseg.tsv)``.
    """
    if _looks_like_file(str(atlas)):
        return _user_atlas(Path(atlas))
    dseg = get_template(template, resolution=resolution, atlas=atlas, suffix="dseg")
    table = _atlas_table(template, atlas, resolution)
    check_label_names(read_label_table(table).values(), table)
    return dseg, table


def atlas_metadata(dseg: Path) -> dict:
    """Licence and citation of an atlas, from its JSON sidecar (TemplateFlow inheritance)."""
    stem = dseg.name.split(".")[0]
    candidates = [dseg.with_name(f"{stem}.json"),
                  dseg.with_name(re.sub(r"_res-[a-zA-Z0-9]+", "", stem) + ".json")]
    for candidate in candidates:
        if candidate.is_file():
            data = json.loads(candidate.read_text())
            keys = ("Name", "License", "HowToAcknowledge", "ReferencesAndLinks", "SpaceNote")
            return {f"Atlas{k}": data[k] for k in keys if k in data}
    return {"AtlasName": stem}


def template_inputs(template: str, resolution: int, atlas: str) -> tuple[dict, dict]:
    """Files the participant workflow needs, and the atlas' licence/citation for sidecars.

    Returns
    -------
    tuple
        ``({"template", "template_mask", "template_probsegs" ([CSF, GM, WM]), "atlas_dseg",
        "atlas_labels"}: str paths, atlas metadata)``.
    """
    home = templateflow_home()
    if template in OFFLINE_TEMPLATES and 1 <= resolution <= 4 and _is_ours(home / f"tpl-{template}"):
        ensure_offline_cache(home, (resolution,))  # offline first: fill our own cache if needed
    common = {"resolution": resolution}
    inputs = {
        "template": get_template(template, desc="brain", suffix="T1w", **common),
        "template_mask": get_template(template, desc="brain", suffix="mask", **common),
        "template_probsegs": [
            str(get_template(template, label=t, suffix="probseg", **common)) for t in PROBSEG_LABELS
        ],
    }
    dseg, table = get_atlas(atlas, template, resolution)
    inputs.update({"atlas_dseg": dseg, "atlas_labels": table})
    out = {k: (v if isinstance(v, list) else str(v)) for k, v in inputs.items()}
    return out, atlas_metadata(Path(dseg))
