"""The group level's input: one row per scan of ROI features joined with covariates.

Site comes from ``--site-column`` (a column of the subject's ``sessions.tsv`` when present,
else of ``participants.tsv``) or, when no column is given, from the scanner fields of the
T1w JSON sidecar, so datasets without a site column still harmonize by scanner.
"""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd

from ..errors import BidsharmonyError, MissingInputError

SCANNER_FIELDS = ("Manufacturer", "ManufacturersModelName", "MagneticFieldStrength", "InstitutionName")
ID_COLUMNS = ("participant_id", "session_id")


def collect_roi_tables(output_dir: Path, atlas: str | None = None) -> pd.DataFrame:
    """Concatenate the participant level's ``*_desc-volume_morph.tsv`` files."""
    pattern = f"sub-*/**/anat/*atlas-{atlas}_desc-volume_morph.tsv" if atlas else "sub-*/**/anat/*_desc-volume_morph.tsv"
    files = sorted(Path(output_dir).glob(pattern))
    if not files:
        raise MissingInputError(
            f"no ROI tables ({pattern}) under {output_dir}: run the participant level first, "
            "or give an existing table with --features"
        )
    tables = [pd.read_csv(f, sep="\t", dtype={"participant_id": str, "session_id": str}) for f in files]
    table = pd.concat(tables, ignore_index=True)
    table["session_id"] = table["session_id"].fillna("n/a")
    table["source_file"] = [str(f) for f in files]
    return table


def _read_tsv(path: Path) -> pd.DataFrame:
    return pd.read_csv(path, sep="\t", dtype=str, keep_default_na=False)


def scanner_site(sidecar: Path) -> str:
    """A site name made of the scanner fields of a T1w JSON sidecar."""
    try:
        meta = json.loads(Path(sidecar).read_text())
    except (OSError, json.JSONDecodeError) as err:
        raise BidsharmonyError(
            f"cannot derive the site from {sidecar} ({err}); pass --site-column naming a "
            "participants.tsv column"
        ) from None
    values = [str(meta[f]) for f in SCANNER_FIELDS if meta.get(f) not in (None, "")]
    if not values:
        raise BidsharmonyError(
            f"{sidecar} has none of {', '.join(SCANNER_FIELDS)}: pass --site-column naming a "
            "participants.tsv column"
        )
    return " ".join(values)


def collect_covariates(bids_dir: Path, scans: pd.DataFrame, site_column: str | None = None) -> pd.DataFrame:
    """Age, sex and site for each scan (rows of ``scans``: participant_id, session_id)."""
    bids_dir = Path(bids_dir)
    participants_file = bids_dir / "participants.tsv"
    if not participants_file.is_file():
        raise MissingInputError(
            f"{participants_file} is missing: the group level needs age, sex and site per "
            "participant (or pass --covariates)"
        )
    participants = _read_tsv(participants_file).set_index("participant_id")
    rows = []
    for subject, session in zip(scans["participant_id"], scans["session_id"]):
        if subject not in participants.index:
            raise BidsharmonyError(f"{subject} has outputs but no row in {participants_file}; add it")
        row = participants.loc[subject].to_dict()
        sessions_file = bids_dir / subject / f"{subject}_sessions.tsv"
        if session != "n/a" and sessions_file.is_file():
            sessions = _read_tsv(sessions_file).set_index("session_id")
            if session in sessions.index:
                row.update({k: v for k, v in sessions.loc[session].to_dict().items() if v not in ("", "n/a")})
        if site_column:
            if site_column not in row:
                raise BidsharmonyError(
                    f"--site-column {site_column!r} is not a column of {participants_file} "
                    f"(columns: {', '.join(participants.columns)})"
                )
            site = row[site_column]
        else:
            site = scanner_site(_t1w_sidecar(bids_dir, subject, session))
        rows.append({"participant_id": subject, "session_id": session, **row, "site": site})
    return pd.DataFrame(rows)


def _t1w_sidecar(bids_dir: Path, subject: str, session: str) -> Path:
    folder = bids_dir / subject / (session if session != "n/a" else "") / "anat"
    sidecars = sorted(folder.glob(f"{subject}*_T1w.json"))
    if not sidecars:
        raise BidsharmonyError(f"no T1w sidecar in {folder} to derive the site from; pass --site-column")
    return sidecars[0]


def build_group_table(output_dir: Path, bids_dir: Path, site_column=None, atlas=None) -> pd.DataFrame:
    """ROI features with covariates, one row per scan, keyed by participant and session."""
    features = collect_roi_tables(output_dir, atlas)
    covariates = collect_covariates(bids_dir, features[list(ID_COLUMNS)], site_column)
    return covariates.merge(features, on=list(ID_COLUMNS), validate="one_to_one")

