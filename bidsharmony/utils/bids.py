"""Reading the input BIDS dataset: validation and T1w selection (never writing to it)."""

from __future__ import annotations

import json
import os
from pathlib import Path

from ..errors import BIDSInvalidError, MissingInputError, NoDataSelectedError, UsageError

# Folders a raw dataset may hold that the file-name validator does not judge.
_UNJUDGED_FOLDERS = {"derivatives", "sourcedata", "code", "stimuli"}


def read_dataset_description(bids_dir: Path) -> dict:
    """Return the parsed ``dataset_description.json`` or raise a one-line error."""
    path = Path(bids_dir) / "dataset_description.json"
    if not path.is_file():
        raise BIDSInvalidError(
            f"{path} is missing: {bids_dir} is not a BIDS dataset (add a "
            "dataset_description.json with Name and BIDSVersion, or point at the dataset root)"
        )
    try:
        description = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise BIDSInvalidError(f"{path} is not valid JSON ({err}); fix the file") from None
    if not isinstance(description, dict) or "Name" not in description:
        raise BIDSInvalidError(f"{path} must be a JSON object with at least 'Name' and 'BIDSVersion'")
    return description


def _bidsignore_patterns(bids_dir: Path) -> list[str]:
    path = bids_dir / ".bidsignore"
    if not path.is_file():
        return []
    return [line.strip() for line in path.read_text().splitlines() if line.strip() and not line.startswith("#")]


def validate_bids(bids_dir: Path, max_listed: int = 3, require_subjects: bool = True, exempt=()) -> None:
    """Check the dataset root and every file name against the BIDS specification.

    Uses the ``bids_validator`` package that ships with PyBIDS (file names and folder
    structure); content-level validation is the npm ``bids-validator``'s job.

    Parameters
    ----------
    bids_dir : path-like
        The dataset root.
    max_listed : int
        Invalid file names named in the error.
    require_subjects : bool
        Refuse a dataset without ``sub-<label>`` folders (the group level on tables given with
        ``--features``/``--covariates`` needs none).
    exempt : sequence of path-like
        Files not judged by name (the tables given on the command line, wherever they are).

    Raises
    ------
    BIDSInvalidError
        Naming the first offending files and the fix.
    """
    import fnmatch

    from bids_validator import BIDSValidator

    bids_dir = Path(bids_dir)
    read_dataset_description(bids_dir)
    validator = BIDSValidator()
    ignored = _bidsignore_patterns(bids_dir)
    resolved_root = bids_dir.resolve()
    exempted = {Path(p).resolve() for p in exempt if p}
    exempted = {p.relative_to(resolved_root).as_posix() for p in exempted if resolved_root in p.parents}
    invalid = []
    for root, dirs, files in os.walk(bids_dir):
        rel_root = Path(root).relative_to(bids_dir)
        if rel_root == Path("."):
            dirs[:] = [d for d in dirs if d not in _UNJUDGED_FOLDERS and not d.startswith(".")]
        for name in files:
            rel = (rel_root / name).as_posix()
            if name.startswith(".") or rel in exempted or any(
                    fnmatch.fnmatch(rel, p.strip("/")) or rel.startswith(p.strip("/") + "/") for p in ignored):
                continue
            if not validator.is_bids("/" + rel):
                invalid.append(rel)
    if invalid:
        listed = ", ".join(sorted(invalid)[:max_listed])
        more = f" and {len(invalid) - max_listed} more" if len(invalid) > max_listed else ""
        raise BIDSInvalidError(
            f"{bids_dir}: file names are not valid BIDS: {listed}{more} (rename them, list "
            "them in .bidsignore, or pass --skip-bids-validation)"
        )
    if require_subjects and not any(p.name.startswith("sub-") and p.is_dir() for p in bids_dir.iterdir()):
        raise BIDSInvalidError(f"{bids_dir} holds no sub-<label> folder: there is nothing to process (the "
                               "group level on existing tables, --features/--covariates, needs none)")


def check_paths(bids_dir: Path, output_dir: Path, work_dir: Path | None = None) -> None:
    """Refuse a missing input and outputs that would be written into the input dataset."""
    bids_dir, output_dir = Path(bids_dir).resolve(), Path(output_dir).resolve()
    if not bids_dir.exists():
        raise MissingInputError(f"the input dataset {bids_dir} does not exist; check the bids_dir argument")
    if not bids_dir.is_dir():
        raise MissingInputError(f"the input dataset {bids_dir} is not a folder; pass the dataset root")
    for kind, path in (("output", output_dir), ("work", work_dir)):
        if path is None:
            continue
        path = Path(path).resolve()
        if path == bids_dir or bids_dir in path.parents:
            raise UsageError(
                f"the {kind} folder {path} is inside the input dataset {bids_dir}; bidsharmony "
                f"never writes into its input: choose a {kind} folder outside it"
            )


def check_writable(output_dir: Path, work_dir: Path | None = None) -> None:
    """Create the output (and work) folder and prove a file can be written in it.

    Run after the input checks, so a refused dataset leaves no empty output folder. A
    probe file is created and removed: permission bits alone do not tell (root ignores
    them; read-only mounts, full quotas and immutable folders do not show in them).

    Raises
    ------
    UsageError
        Naming the folder, why it cannot be written, and the fix.
    """
    import tempfile

    for kind, path in (("output", output_dir), ("work", work_dir)):
        if path is None:
            continue
        path = Path(path)
        if path.exists() and not path.is_dir():
            raise UsageError(f"the {kind} folder {path} is an existing file; choose a folder path")
        try:
            path.mkdir(parents=True, exist_ok=True)
            with tempfile.TemporaryFile(dir=path, prefix=".bidsharmony-write-test-"):
                pass
        except OSError as err:
            raise UsageError(
                f"cannot write to the {kind} folder {path} ({err.strerror or type(err).__name__}); "
                f"choose a writable {kind} folder or fix its permissions"
            ) from None


def load_layout(bids_dir: Path):
    """Index the dataset with PyBIDS, read-only (no database written into it)."""
    from bids import BIDSLayout

    return BIDSLayout(str(bids_dir), validate=False, derivatives=False)


def select_t1w(layout, participant_label=(), session_label=(), bids_filters=None) -> list[str]:
    """Return the T1w images the filters select, sorted.

    Raises
    ------
    NoDataSelectedError
        When a requested participant does not exist or the filters select nothing.
    """
    subjects = set(layout.get_subjects())
    unknown = sorted(set(participant_label) - subjects)
    if unknown:
        raise NoDataSelectedError(
            f"participant(s) {', '.join('sub-' + s for s in unknown)} not found in "
            f"{layout.root}; available: {', '.join('sub-' + s for s in sorted(subjects)[:10])}"
        )
    query = {"datatype": "anat", "suffix": "T1w", "extension": [".nii", ".nii.gz"]}
    query.update((bids_filters or {}).get("t1w", {}))
    if participant_label:
        query["subject"] = list(participant_label)
    if session_label:
        query["session"] = list(session_label)
    files = sorted(layout.get(return_type="file", **query))
    if not files:
        described = ", ".join(f"{k}={v}" for k, v in query.items() if k not in ("datatype", "extension"))
        raise NoDataSelectedError(
            f"no T1w image in {layout.root} matches {described}; check --participant-label, "
            "--session-label and --bids-filter-file"
        )
    return files
