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


def with_sub_prefix(labels) -> list[str]:
    """Participant labels as BIDS writes them (``sub-01``), whether or not a table had the prefix."""
    return [p if p.startswith("sub-") else f"sub-{p}" for p in labels]


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
    # a user's --covariates may leave out the prefix, as a --features table may
    participants["participant_id"] = with_sub_prefix(participants["participant_id"])
    from ..harmonize.errors import CovariateError

    refuse_repeated_scans(participants, participants_file, CovariateError,
                          "keep one row per participant (or per participant and session, with a session_id "
                          "column)")
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
        raise BidsharmonyError(f"no T1w sidecar in {folder} to derive the site from; pass --site-column, or "
                               "give a site column in --covariates")
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
    protected: dict = field(default_factory=dict)  # column -> how it is coded for the harmonizers


def read_feature_table(path: Path) -> pd.DataFrame:
    """A user's feature table (TSV or CSV) with ``participant_id`` and optional ``session_id``.

    Raises
    ------
    FeatureError
        When a scan (``participant_id``, and ``session_id`` when given) has more than one row.
    """
    from ..harmonize.errors import FeatureError

    path = Path(path)
    sep = "," if path.suffix.lower() == ".csv" else "\t"
    try:
        table = pd.read_csv(path, sep=sep, dtype={"participant_id": str, "session_id": str}, keep_default_na=False,
                            na_values=["", "n/a", "NaN", "nan", "NA"])
    except (pd.errors.ParserError, UnicodeDecodeError) as err:
        raise BidsharmonyError(f"{path} is not a readable {'CSV' if sep == ',' else 'TSV'} table ({err})") from None
    if "participant_id" not in table.columns:
        raise BidsharmonyError(f"{path} has no participant_id column; add one (e.g. sub-01)")
    if table["participant_id"].isna().any():
        lines = [str(i + 2) for i in table.index[table["participant_id"].isna()][:5]]
        raise FeatureError(f"{path}: participant_id is empty on line(s) {', '.join(lines)}; fill it in or "
                           "drop those rows")
    table["participant_id"] = with_sub_prefix(table["participant_id"])
    if "session_id" not in table.columns:
        table["session_id"] = "n/a"
    table["session_id"] = table["session_id"].fillna("n/a").replace("", "n/a")
    refuse_repeated_scans(table, path, FeatureError,
                          "keep one row per scan (average or drop the repeats), or add a session_id column "
                          "telling the sessions apart")
    return table


def refuse_repeated_scans(table: pd.DataFrame, path: Path, error: type, fix: str) -> None:
    """Raise ``error`` naming the file, the repeated ids and their lines when a scan has several rows.

    A scan is a ``participant_id`` (and ``session_id`` when the table has one); line numbers count
    the header as line 1.
    """
    keys = [c for c in ID_COLUMNS if c in table.columns]
    repeated = table.duplicated(subset=keys, keep=False)
    if not repeated.any():
        return
    described = []
    for key, rows in table[repeated].groupby(keys, sort=False).groups.items():
        key = key if isinstance(key, tuple) else (key,)
        name = " ".join(str(k) for k in key if k != "n/a")
        described.append(f"{name} (lines {', '.join(str(i + 2) for i in rows)})")
    more = f", ... ({len(described)} in all)" if len(described) > 3 else ""
    raise error(f"{path}: {len(described)} scan(s) appear on more than one row: "
                f"{'; '.join(described[:3])}{more}; {fix}")


def scan_labels(ids: pd.DataFrame) -> pd.Index:
    """Row labels naming each scan in messages: ``sub-01``, or ``sub-01 ses-1`` with sessions."""
    labels = [p if s == "n/a" else f"{p} {s}" for p, s in zip(ids["participant_id"], ids["session_id"])]
    return pd.Index(labels, name="scan")


def protected_covariates(covariates: pd.DataFrame, columns, source: Path) -> tuple[pd.DataFrame, dict]:
    """The ``--protect`` columns as numbers the harmonizers model, and how each was coded.

    A numeric column is kept as it is; a column with two distinct values becomes 0/1 (the
    values in sorted order). Anything else is refused, naming the file, the column and the fix.
    """
    out, coding = pd.DataFrame(index=covariates.index), {}
    for column in columns:
        if column not in covariates:
            raise BidsharmonyError(f"--protect {column}: {source} has no column {column!r} (columns: "
                                   f"{', '.join(map(str, covariates.columns))})")
        values = covariates[column]
        missing = values.isna() | values.astype(str).str.strip().isin(["", "n/a"])
        if missing.any():
            rows = covariates.loc[missing, "participant_id"].tolist()[:5]
            raise BidsharmonyError(f"--protect {column}: {source} has no value of {column!r} for "
                                   f"{', '.join(rows)}; fill it in for every scan (or drop those scans)")
        numbers = pd.to_numeric(values, errors="coerce")
        if not numbers.isna().any():
            out[column] = numbers.astype(float)
            coding[column] = "numeric, modelled linearly"
            continue
        levels = sorted(values.astype(str).str.strip().unique())
        if len(levels) != 2:
            raise BidsharmonyError(f"--protect {column}: {source} gives {len(levels)} values of {column!r} "
                                   f"({', '.join(levels[:5])}); give a number or a column with two values "
                                   "(one 0/1 column per group for more groups)")
        out[column] = (values.astype(str).str.strip() == levels[1]).astype(float)
        coding[column] = {levels[0]: 0, levels[1]: 1}
    return out, coding


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


def _harmonizable(features: pd.DataFrame, drop_non_positive: bool) -> tuple[pd.DataFrame, list[str]]:
    """Keep the columns that vary (and, with ``drop_non_positive``, are positive); list the others."""
    keep = [c for c in features if features[c].nunique() > 1 and (not drop_non_positive or (features[c] > 0).all())]
    return features[keep], [c for c in features.columns if c not in keep]


def load_group_data(config, require_positive: bool = True) -> GroupData:
    """Features and covariates of every scan, from ROI tables or ``--features``.

    Every frame is indexed by the scan (``sub-01``, ``sub-01 ses-1``; for the participant
    level's ROI tables the table's file name), so that any error about rows names them.

    A ``--features`` table is checked as the harmonizers check it (one row per scan, numeric
    finite features and, with ``require_positive``, volumes > 0) and refused otherwise, naming
    the rows and columns; of the participant level's ROI tables, features that are zero in some
    scan (a label the atlas lost in a small brain) are set aside and listed in ``excluded``.
    Features constant over the scans are set aside in both cases.
    """
    from ..harmonize.validation import feature_array

    if config.features:
        table = read_feature_table(config.features)
        ids = table[list(ID_COLUMNS)]
        labels = scan_labels(ids)
        feature_table = table.drop(columns=[c for c in table.columns if c in ID_COLUMNS or c in COVARIATE_COLUMNS])
        source_files, sources = None, [str(config.features)]
    else:
        table = collect_roi_tables(config.output_dir, config.atlas_name)
        ids = table[list(ID_COLUMNS)]
        labels = pd.Index([Path(f).name for f in table["source_file"]], name="scan")
        feature_table = table[[c for c in table.columns if c.startswith(("volume_", "gm_"))]]
        source_files = table["source_file"]
        sources = [f"bids::{Path(f).relative_to(config.output_dir).as_posix()}" for f in source_files]
    feature_table = feature_table.set_axis(labels)
    # the harmonizers' own checks, up front: nothing is collected or fitted from a table they refuse
    feature_array(feature_table, require_positive=require_positive and bool(config.features))
    covariates = collect_covariates(config.bids_dir, ids, config.site_column, config.covariates)
    source = config.covariates or Path(config.bids_dir) / "participants.tsv"
    protected, coding = protected_covariates(covariates, getattr(config, "protect", ()), source)
    covariates = _numeric_covariates(covariates, source)
    covariates = pd.concat([covariates.drop(columns=list(protected.columns), errors="ignore"), protected], axis=1)
    features, excluded = _harmonizable(feature_table, drop_non_positive=not config.features)
    return GroupData(
        ids=ids.set_axis(labels),
        covariates=covariates.set_axis(labels),
        features=features,
        source_files=None if source_files is None else source_files.set_axis(labels),
        sources=sources,
        excluded=excluded,
        protected=coding,
    )
