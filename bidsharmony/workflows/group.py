"""The group level's input: one row per scan of ROI features joined with covariates.

Site comes from ``--site-column`` (a column of the subject's ``sessions.tsv`` when present,
else of ``participants.tsv``) or, when no column is given, from the scanner fields of the
T1w JSON sidecar, so datasets without a site column still harmonize by scanner.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
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


def collect_covariates(
    bids_dir: Path, scans: pd.DataFrame, site_column: str | None = None, covariates_file: Path | None = None
) -> pd.DataFrame:
    """Age, sex and site for each scan (rows of ``scans``: participant_id, session_id).

    Covariates come from ``covariates_file`` when given (a row per participant, or per
    participant and session), else from the dataset's participants.tsv and sessions.tsv.
    """
    bids_dir = Path(bids_dir)
    participants_file = Path(covariates_file) if covariates_file else bids_dir / "participants.tsv"
    if not participants_file.is_file():
        raise MissingInputError(
            f"{participants_file} is missing: the group level needs age, sex and site per "
            "participant (or pass --covariates)"
        )
    participants = _read_tsv(participants_file)
    if "participant_id" not in participants.columns:
        raise BidsharmonyError(f"{participants_file} has no participant_id column; add it")
    if "session_id" in participants.columns:  # one row per scan: index by both
        participants["participant_id"] = participants["participant_id"] + "|" + participants["session_id"]
        scans = scans.assign(participant_id=scans["participant_id"] + "|" + scans["session_id"])
    participants = participants.set_index("participant_id")
    rows = []
    for subject, session in zip(scans["participant_id"], scans["session_id"]):
        if subject not in participants.index:
            raise BidsharmonyError(f"{subject} has features but no row in {participants_file}; add it")
        row = participants.loc[subject].to_dict()
        subject = subject.split("|")[0]
        sessions_file = bids_dir / subject / f"{subject}_sessions.tsv"
        if session != "n/a" and sessions_file.is_file():
            sessions = _read_tsv(sessions_file).set_index("session_id")
            if session in sessions.index:
                row.update({k: v for k, v in sessions.loc[session].to_dict().items() if v not in ("", "n/a")})
        if site_column or "site" in row and covariates_file:
            site_column = site_column or "site"
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


COVARIATE_COLUMNS = ("site", "age", "sex", "diagnosis")


@dataclass
class GroupData:
    """The group level's input, one row per scan, all frames sharing one index."""

    ids: pd.DataFrame
    covariates: pd.DataFrame
    features: pd.DataFrame
    source_files: pd.Series | None = None
    sources: list[str] = field(default_factory=list)
    excluded: list[str] = field(default_factory=list)


def read_feature_table(path: Path) -> pd.DataFrame:
    """A user's feature table (TSV or CSV) with ``participant_id`` and optional ``session_id``."""
    path = Path(path)
    sep = "," if path.suffix.lower() == ".csv" else "\t"
    try:
        table = pd.read_csv(path, sep=sep, dtype={"participant_id": str, "session_id": str}, keep_default_na=False, na_values=["", "NaN", "nan", "NA"])
    except (pd.errors.ParserError, UnicodeDecodeError) as err:
        raise BidsharmonyError(f"{path} is not a readable {'CSV' if sep == ',' else 'TSV'} table ({err})") from None
    if "participant_id" not in table.columns:
        raise BidsharmonyError(f"{path} has no participant_id column; add one (e.g. sub-01)")
    table["participant_id"] = [p if p.startswith("sub-") else f"sub-{p}" for p in table["participant_id"]]
    if "session_id" not in table.columns:
        table["session_id"] = "n/a"
    table["session_id"] = table["session_id"].replace("", "n/a")
    return table


def _numeric_covariates(covariates: pd.DataFrame, source: Path) -> pd.DataFrame:
    if "age" not in covariates:
        raise BidsharmonyError(f"{source} has no age column; add one (age in years of every participant)")
    age = pd.to_numeric(covariates["age"], errors="coerce")
    if age.isna().any():
        bad = covariates.loc[age.isna(), "participant_id"].tolist()[:5]
        raise BidsharmonyError(
            f"{source}: age is missing or not a number for {', '.join(bad)}; "
            "give age in years for every participant"
        )
    out = covariates[[c for c in COVARIATE_COLUMNS if c in covariates]].copy()
    out["age"] = age.astype(float)
    out["site"] = out["site"].astype(str)
    return out


def _harmonizable(features: pd.DataFrame) -> tuple[pd.DataFrame, list[str]]:
    """Keep numeric columns that are positive and vary; list the others."""
    numeric = features.apply(pd.to_numeric, errors="coerce")
    keep = [c for c in numeric if (numeric[c] > 0).all() and numeric[c].nunique() > 1]
    return numeric[keep], [c for c in features.columns if c not in keep]


def load_group_data(config) -> GroupData:
    """Features and covariates of every scan, from ROI tables or ``--features``."""
    if config.features:
        table = read_feature_table(config.features)
        ids = table[list(ID_COLUMNS)]
        feature_table = table.drop(columns=[c for c in table.columns if c in ID_COLUMNS or c in COVARIATE_COLUMNS])
        source_files, sources = None, [str(config.features)]
    else:
        table = collect_roi_tables(config.output_dir, config.atlas_name)
        ids = table[list(ID_COLUMNS)]
        feature_table = table[[c for c in table.columns if c.startswith(("volume_", "gm_"))]]
        source_files = table["source_file"]
        sources = [f"bids::{Path(f).relative_to(config.output_dir).as_posix()}" for f in source_files]
    nan_columns = [c for c in feature_table if feature_table[c].isna().any()]
    if nan_columns:
        raise BidsharmonyError(
            f"features with missing values: {', '.join(nan_columns[:5])}; fill or drop them before harmonizing"
        )
    covariates = collect_covariates(config.bids_dir, ids, config.site_column, config.covariates)
    covariates = _numeric_covariates(covariates, config.covariates or Path(config.bids_dir) / "participants.tsv")
    features, excluded = _harmonizable(feature_table)
    return GroupData(
        ids=ids.reset_index(drop=True),
        covariates=covariates.reset_index(drop=True),
        features=features.reset_index(drop=True),
        source_files=None if source_files is None else source_files.reset_index(drop=True),
        sources=sources,
        excluded=excluded,
    )
