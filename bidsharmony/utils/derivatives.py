"""BIDS-Derivatives naming, sidecars and the dataset description.

Plain functions, so the Nipype sink (:mod:`bidsharmony.interfaces.derivatives`), the group
level and the harmonizers all name and describe files the same way.
"""

from __future__ import annotations

import json
import os
import platform
from importlib import metadata
from pathlib import Path

from .._version import __version__
from .io import atomic_write_json

# Entities that identify the source scan, in BIDS order; derivative entities follow them.
SOURCE_ENTITIES = ("sub", "ses", "task", "acq", "ce", "rec", "run")
DERIVATIVE_ENTITIES = ("space", "res", "atlas", "from", "to", "mode", "label", "desc")
RAW_DATASET_NAME = "raw"
CODE_URL = "https://github.com/bidsharmony/bidsharmony"
_VERSIONED_PACKAGES = ("bidsharmony", "antspyx", "nipype", "nibabel", "numpy", "torch", "nflows", "templateflow")


def parse_entities(path: str | os.PathLike) -> dict[str, str]:
    """Split a BIDS file name into ``{entity: value}``, plus ``suffix`` and ``extension``.

    >>> parse_entities("sub-01/ses-A/anat/sub-01_ses-A_run-1_T1w.nii.gz")
    {'sub': '01', 'ses': 'A', 'run': '1', 'suffix': 'T1w', 'extension': '.nii.gz'}
    """
    name = Path(path).name
    stem, dot, rest = name.partition(".")
    parts = stem.split("_")
    entities = dict(part.split("-", 1) for part in parts[:-1] if "-" in part)
    entities["suffix"] = parts[-1]
    entities["extension"] = dot + rest
    return entities


def derivative_path(source_file: str | os.PathLike, datatype: str = "anat", **entities) -> Path:
    """Relative path of a derivative of ``source_file``.

    ``entities`` gives the derivative entities (``space``, ``desc``...), ``suffix`` and
    ``extension``; the source's subject, session, acquisition and run are kept.

    >>> str(derivative_path("sub-01_ses-A_T1w.nii.gz", desc="brain", suffix="mask"))
    'sub-01/ses-A/anat/sub-01_ses-A_desc-brain_mask.nii.gz'
    """
    source = parse_entities(source_file)
    suffix = entities.pop("suffix", source["suffix"])
    extension = entities.pop("extension", source["extension"])
    unknown = set(entities) - set(DERIVATIVE_ENTITIES)
    if unknown:
        raise ValueError(f"unknown derivative entities: {sorted(unknown)}")
    parts = [f"{key}-{source[key]}" for key in SOURCE_ENTITIES if key in source]
    parts += [f"{key}-{entities[key]}" for key in DERIVATIVE_ENTITIES if entities.get(key)]
    folder = Path(f"sub-{source['sub']}")
    if "ses" in source:
        folder /= f"ses-{source['ses']}"
    return folder / datatype / ("_".join(parts + [suffix]) + extension)


def raw_bids_uri(source_file: str | os.PathLike, bids_dir: str | os.PathLike) -> str:
    """``bids:raw:<path>`` URI of a file of the input dataset (see DatasetLinks)."""
    rel = Path(os.path.abspath(source_file)).relative_to(Path(os.path.abspath(bids_dir)))
    return f"bids:{RAW_DATASET_NAME}:{rel.as_posix()}"


def derivative_bids_uri(rel_path: str | os.PathLike) -> str:
    """``bids::<path>`` URI of a file of this derivatives dataset."""
    return f"bids::{Path(rel_path).as_posix()}"


def software_versions() -> dict[str, str]:
    """Versions of the packages whose behaviour shapes the outputs."""
    versions = {"python": platform.python_version()}
    for package in _VERSIONED_PACKAGES:
        try:
            versions[package] = metadata.version(package)
        except metadata.PackageNotFoundError:
            continue
    versions["bidsharmony"] = __version__
    return versions


def generated_by() -> list[dict[str, str]]:
    """Provenance of one derivative file: bidsharmony, then the packages that shaped it.

    BIDS reserves ``SoftwareVersions`` (a string) for the scanner's software, which raw
    sidecars carry, so the pipeline's versions go in a list shaped like the ``GeneratedBy``
    of ``dataset_description.json`` (``Name``, ``Version``, ``CodeURL``), one entry a package.
    """
    versions = software_versions()
    entries = [{"Name": "bidsharmony", "Version": versions.pop("bidsharmony"), "CodeURL": CODE_URL}]
    return entries + [{"Name": name, "Version": version} for name, version in versions.items()]


def dataset_description(bids_dir: str | os.PathLike, container: dict | None = None) -> dict:
    """The ``dataset_description.json`` of bidsharmony's derivatives."""
    bids_dir = Path(bids_dir).absolute()
    try:
        source_name = json.loads((bids_dir / "dataset_description.json").read_text()).get("Name", "")
    except (OSError, json.JSONDecodeError):
        source_name = ""
    generated_by = {"Name": "bidsharmony", "Version": __version__, "CodeURL": CODE_URL}
    if container:
        generated_by["Container"] = container
    return {
        "Name": f"bidsharmony derivatives of {source_name}".strip(),
        "BIDSVersion": "1.9.0",
        "DatasetType": "derivative",
        "GeneratedBy": [generated_by],
        "SourceDatasets": [{"URL": bids_dir.as_uri()}],
        "DatasetLinks": {RAW_DATASET_NAME: bids_dir.as_uri()},
        "HowToAcknowledge": "Cite bidsharmony and the methods listed in the report's boilerplate.",
    }


def container_info() -> dict | None:
    """Describe the container this process runs in, when it is one."""
    if os.getenv("APPTAINER_CONTAINER") or os.getenv("SINGULARITY_CONTAINER"):
        return {"Type": "apptainer", "Tag": os.getenv("APPTAINER_NAME") or os.getenv("SINGULARITY_NAME")}
    if Path("/.dockerenv").exists() or os.getenv("BIDSHARMONY_CONTAINER") == "docker":
        # the image sets BIDSHARMONY_IMAGE to the name it was built under
        return {"Type": "docker", "Tag": os.getenv("BIDSHARMONY_IMAGE") or f"bidsharmony/bidsharmony:{__version__}"}
    return None


def write_dataset_description(output_dir: str | os.PathLike, bids_dir: str | os.PathLike) -> Path:
    """Write the derivatives' ``dataset_description.json`` (atomic; safe for job arrays).

    Concurrent jobs write identical content with an atomic rename, so whichever lands last,
    the file is whole and valid.
    """
    description = dataset_description(bids_dir, container_info())
    path = Path(output_dir) / "dataset_description.json"
    if path.exists():
        try:
            if json.loads(path.read_text()) == json.loads(json.dumps(description, default=str)):
                return path
        except (OSError, json.JSONDecodeError):
            pass
    return atomic_write_json(path, description)


# What the BIDS validator must not judge. The validator matches directories without a
# trailing slash, hence "sub-*/figures" rather than "figures/".
BIDSIGNORE = (
    "# Not BIDS: run logs, the work folder, group-level results and the HTML reports.",
    "logs/",
    "work/",
    "group/",
    "*.html",
    "# QC figures (fMRIPrep-style sub-<label>/figures/): no BIDS datatype for them.",
    "sub-*/figures",
    "sub-*/ses-*/figures",
    "# Not in BIDS 1.11 yet: ROI tables (_morph.tsv) and transforms (_xfm.h5, BEP014),",
    "# with their JSON sidecars.",
    "*_morph.tsv",
    "*_morph.json",
    "*_xfm.h5",
    "*_xfm.json",
)


def write_bidsignore(output_dir: str | os.PathLike) -> Path:
    """Write the derivatives' ``.bidsignore`` (:data:`BIDSIGNORE`; atomic, skipped when identical)."""
    from .io import atomic_write_text

    path = Path(output_dir) / ".bidsignore"
    text = "\n".join(BIDSIGNORE) + "\n"
    if path.is_file() and path.read_text() == text:
        return path
    return atomic_write_text(path, text)
