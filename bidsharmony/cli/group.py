"""Running the group level: collect ROI features and covariates, then harmonize."""

from __future__ import annotations

import logging
from pathlib import Path

from ..utils.derivatives import software_versions
from ..utils.io import atomic_path, atomic_write_json

LOGGER = logging.getLogger("bidsharmony")


def write_table(table, path: Path, meta: dict) -> Path:
    """Write a TSV and its sidecar atomically."""
    with atomic_path(path) as tmp:
        table.to_csv(tmp, sep="\t", index=False, na_rep="n/a")
    atomic_write_json(path.with_suffix(".json"), {"SoftwareVersions": software_versions(), **meta})
    return path


def run_group(config) -> list[Path]:
    """Build the group table and write it (and harmonized tables, when asked)."""
    from ..workflows.group import build_group_table

    table = build_group_table(config.output_dir, config.bids_dir, config.site_column, config.atlas_name)
    out_dir = config.output_dir / "group"
    written = [
        write_table(
            table.drop(columns=["source_file"]),
            out_dir / f"atlas-{config.atlas_name}_desc-raw_morph.tsv",
            {
                "Description": "ROI volumes of every scan with covariates, before harmonization",
                "Units": "mm^3",
                "Sources": [f"bids::{Path(f).relative_to(config.output_dir).as_posix()}" for f in table["source_file"]],
                "RandomSeed": config.random_seed,
            },
        )
    ]
    sites = table["site"].value_counts().to_dict()
    LOGGER.info("Group table: %d scans from %d sites %s → %s", len(table), len(sites), sites, written[0])
    if not config.harmonizer:
        LOGGER.info("No --harmonizer given: wrote the collected table only.")
    return written
