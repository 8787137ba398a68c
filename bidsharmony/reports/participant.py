"""Per-subject HTML report: QC figures, what was written, and a citation boilerplate."""

from __future__ import annotations

import html
from pathlib import Path

from ..utils.derivatives import software_versions
from ..utils.io import atomic_write_text

_FIGURES = (
    ("brain", "Brain mask", "The red contour should follow the brain surface: no skull or scalp inside, no cortex cut off."),
    ("reg", "Registration to the template", "Template white-matter edges (green) should sit on the subject's white-matter boundary."),
    ("dseg", "Tissue segmentation", "Blue: brain (GM+WM) boundary; yellow: white matter. Check that the classes follow the anatomy."),
)

_STYLE = """
body { font-family: sans-serif; max-width: 1200px; margin: auto; color: #222; }
h1 { border-bottom: 2px solid #444; } h2 { margin-top: 2em; }
img { width: 100%; } .note { color: #555; } code, pre { background: #f4f4f4; }
pre { white-space: pre-wrap; padding: 1em; }
tr.fail td { color: #b00; font-weight: bold; } td, th { padding: 0 0.8em; text-align: left; }
"""


def boilerplate(config) -> str:
    """A methods paragraph for papers, with the settings of this run."""
    v = software_versions()
    return (
        f"Anatomical images were preprocessed with bidsharmony {v['bidsharmony']} "
        f"(Nipype {v.get('nipype', '?')}, ANTsPy {v.get('antspyx', '?')}). Each T1-weighted "
        "image was reoriented to RAS and corrected for intensity non-uniformity with N4 "
        + (f"(shrink factor {config.n4_shrink_factor}). " if config.n4_shrink_factor
           else "(fitted on a grid of at least 6 mm). ")
        + _skull_strip_sentence(config)
        + "Brain tissue was "
        "segmented into CSF, grey and white matter with Atropos, using the template's tissue "
        f"probability maps as priors. The {config.atlas_name} atlas was warped to native space "
        "with nearest-neighbour interpolation, and regional volumes (mm³) were measured on hard labels "
        f"inside the brain mask. Random seed: {config.random_seed}."
    )


def _skull_strip_sentence(config) -> str:
    """How the brain was extracted and registered, for :func:`boilerplate`."""
    registration = (
        "(rigid, affine, then symmetric normalization, SyN, with Mattes mutual information; "
        f"'{config.reg_quality}' iterations)"
    )
    if getattr(config, "skull_strip", "ants") == "deepbet":
        from importlib import metadata

        return (
            f"The brain was extracted with deepbet {metadata.version('deepbet')} (convolutional "
            "neural networks, CPU, threshold 0.5). The extracted brain was registered to the "
            f"brain template {config.template} (res-{config.template_resolution}) {registration}; "
            "this registration maps the image to the template for spatial normalization and the "
            "atlas to native space. "
        )
    return (
        "The brain was extracted by registering "
        f"the image to the brain template {config.template} (res-{config.template_resolution}) "
        "and warping the template's brain mask back, refined by a tissue classification. The "
        f"same registration {registration} maps the image to the "
        "template for spatial normalization and the atlas to native space. "
    )


def _mask_sidecar(output_dir: Path, t1w) -> Path | None:
    """The ``desc-brain_mask.json`` written for the raw T1w ``t1w``, if there is one."""
    name = Path(t1w).name.split(".")[0]
    prefix = name[: -len("_T1w")] if name.endswith("_T1w") else name
    subject = prefix.split("_")[0]
    return next(iter(sorted(Path(output_dir).glob(f"{subject}/**/anat/{prefix}_desc-brain_mask.json"))), None)


def mask_quality(output_dir, t1w) -> list[str]:
    """Failed sanity checks of the brain mask of ``t1w`` (empty: all passed), from its sidecar."""
    import json

    from ..interfaces.checks import failed_checks

    sidecar = _mask_sidecar(Path(output_dir), t1w)
    if sidecar is None:
        return [f"no brain mask written for {Path(t1w).name}"]
    checks = json.loads(sidecar.read_text()).get("QualityChecks", {})
    return failed_checks({k: v for k, v in checks.items() if isinstance(v, dict)})


def _checks_table(sidecar: Path) -> str:
    """HTML table of a mask sidecar's ``BrainExtraction`` and ``QualityChecks``."""
    import json

    meta = json.loads(sidecar.read_text())
    checks = {k: v for k, v in meta.get("QualityChecks", {}).items() if isinstance(v, dict)}
    rows = "".join(
        f"<tr class='{'ok' if r['Passed'] else 'fail'}'><td>{html.escape(k)}</td><td>{r['Value']:g}</td>"
        f"<td>{html.escape(r['Expected'])}</td><td>{'pass' if r['Passed'] else 'FAILED'}</td></tr>"
        for k, r in checks.items()
    )
    tool = meta.get("BrainExtraction", {})
    made = " ".join(str(tool[k]) for k in ("Tool", "Version") if k in tool)
    return (
        f"<h3>Brain mask checks</h3><p class='note'>Mask made by {html.escape(made)}. A failed "
        "check makes every volume of this scan suspect: look at the mask figure.</p>"
        f"<table><tr><th>check</th><th>value</th><th>expected</th><th></th></tr>{rows}</table>"
    )


def write_subject_report(config, subject: str) -> Path:
    """Write ``<output_dir>/sub-<subject>.html`` from the figures found for the subject."""
    out_dir = Path(config.output_dir)
    figures = sorted(out_dir.glob(f"sub-{subject}/**/figures/*.png"))
    sections = []
    for scan in sorted({_scan_name(f) for f in figures}):
        items = []
        for key, title, note in _FIGURES:
            for fig in figures:
                if _scan_name(fig) == scan and f"_desc-{key}_" in fig.name:
                    rel = fig.relative_to(out_dir).as_posix()
                    items.append(f"<h3>{title}</h3><p class='note'>{note}</p><img src='{rel}' alt='{title}'>")
        sidecar = next(iter(sorted(out_dir.glob(f"sub-{subject}/**/anat/{scan}_desc-brain_mask.json"))), None)
        if sidecar is not None:
            items.insert(0, _checks_table(sidecar))
        sections.append(f"<h2>{html.escape(scan)}</h2>" + "".join(items))
    tables = sorted(out_dir.glob(f"sub-{subject}/**/anat/*_morph.tsv"))
    outputs = "".join(f"<li><code>{t.relative_to(out_dir).as_posix()}</code></li>" for t in tables)
    page = (
        f"<!DOCTYPE html><html><head><meta charset='utf-8'><title>sub-{subject}</title>"
        f"<style>{_STYLE}</style></head><body><h1>bidsharmony report: sub-{subject}</h1>"
        + "".join(sections)
        + f"<h2>ROI volume tables</h2><ul>{outputs}</ul>"
        + f"<h2>Methods</h2><pre>{html.escape(boilerplate(config))}</pre>"
        + "</body></html>"
    )
    return atomic_write_text(out_dir / f"sub-{subject}.html", page)


def write_subject_reports(config, subjects) -> list[Path]:
    """One report per subject."""
    return [write_subject_report(config, subject) for subject in subjects]


def _scan_name(figure: Path) -> str:
    """The scan a figure belongs to: its name without the desc entity and suffix."""
    parts = figure.name.split("_")
    return "_".join(p for p in parts[:-1] if not p.startswith("desc-"))
