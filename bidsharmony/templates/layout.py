"""What the offline cache holds: template and atlas names, file names, and whose folder it is.

Shared by the cache builder (:mod:`.cache`) and the run-time look-ups (:mod:`.lookup`).
"""

from __future__ import annotations

import json
import os
from pathlib import Path

from ..errors import UsageError

TEMPLATE_SYM = "MNI152NLin2009aSym"
TEMPLATE_ASYM = "MNI152NLin2009cAsym"
ATLAS = "Neuromorphometrics"
OFFLINE_TEMPLATES = (TEMPLATE_SYM, TEMPLATE_ASYM)
DEFAULT_RESOLUTIONS = (1, 2)
#: Tissue order of ``template_inputs()["template_probsegs"]`` (the dseg order of morphometry).
PROBSEG_LABELS = ("CSF", "GM", "WM")
_FIX = "run `bidsharmony-templateflow DIR` then `export TEMPLATEFLOW_HOME=DIR`"
_GENERATOR = "bidsharmony"


def _res(resolution: int) -> str:
    return f"res-{resolution:02d}"


def _image_files(template: str, resolutions) -> dict[str, tuple[int, str]]:
    """``{file name: (resolution, kind)}`` of the images of one offline template."""
    kinds = ["desc-brain_T1w", "desc-brain_mask"]
    if template == TEMPLATE_SYM:
        kinds += [f"label-{t}_probseg" for t in PROBSEG_LABELS] + [f"atlas-{ATLAS}_dseg"]
    return {
        f"tpl-{template}_{_res(r)}_{kind}.nii.gz": (r, kind)
        for r in resolutions
        for kind in kinds
    }


def _text_files(template: str) -> list[str]:
    names = ["template_description.json", f"tpl-{template}_desc-brain_T1w.json",
             f"tpl-{template}_desc-brain_mask.json"]
    if template == TEMPLATE_SYM:
        names += [f"tpl-{template}_label-{t}_probseg.json" for t in PROBSEG_LABELS]
        names += [f"tpl-{template}_atlas-{ATLAS}_dseg.tsv", f"tpl-{template}_atlas-{ATLAS}_dseg.json"]
    return names


def expected_files(home: str | os.PathLike, resolutions=DEFAULT_RESOLUTIONS) -> list[Path]:
    """Every file :func:`populate_offline_cache` writes for ``resolutions``."""
    home = Path(home)
    out = []
    for template in OFFLINE_TEMPLATES:
        folder = home / f"tpl-{template}"
        out += [folder / n for n in _text_files(template)]
        out += [folder / n for n in _image_files(template, resolutions)]
    return out


def _complete(path: Path) -> bool:
    return path.is_file() and path.stat().st_size > 0


def _is_ours(folder: Path) -> bool:
    """May bidsharmony write into this ``tpl-*`` folder?

    Yes if it does not exist, is empty, or its ``template_description.json`` names
    bidsharmony in ``GeneratedBy``. A folder without a description is ours unless it holds
    TemplateFlow's zero-byte placeholders (its stub skeleton); it is then foreign.
    """
    description = folder / "template_description.json"
    if not description.is_file():
        if not folder.is_dir():
            return True
        return not any(p.name.startswith("tpl-") and p.stat().st_size == 0 for p in folder.iterdir())
    try:
        generated = json.loads(description.read_text()).get("GeneratedBy", [])
    except (json.JSONDecodeError, OSError, AttributeError):
        return False
    return any(isinstance(g, dict) and g.get("Name") == _GENERATOR for g in generated)


def _check_resolutions(resolutions) -> tuple[int, ...]:
    out = tuple(sorted({int(r) for r in resolutions}))
    if not out or any(r < 1 or r > 4 for r in out):
        raise UsageError(f"template resolutions must be whole millimetres 1-4, got {list(resolutions)}")
    return out
