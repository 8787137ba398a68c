"""Shared by the reliability battery: in-process CLI runs, one-line error checks, checksums."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import nibabel as nb
import pandas as pd
import pytest

from bidsharmony.cli.run import main

ERROR_PREFIX = "bidsharmony: error: "


def checksums(folder: Path) -> dict[str, str]:
    """SHA-256 of every file (and the names of empty folders) below ``folder``, by relative path."""
    folder = Path(folder)
    sums = {}
    for path in sorted(folder.rglob("*")):
        rel = path.relative_to(folder).as_posix()
        if path.is_symlink():
            sums[rel] = f"symlink:{path.readlink()}"
        elif path.is_file():
            sums[rel] = hashlib.sha256(path.read_bytes()).hexdigest()
        elif path.is_dir() and not any(path.iterdir()):
            sums[rel] = "empty dir"
    return sums


def run_cli(argv, capsys) -> tuple[int, str, str]:
    """Run ``bidsharmony`` in this process; return (exit code, stdout, stderr)."""
    with pytest.raises(SystemExit) as exc:
        main([str(a) for a in argv])
    captured = capsys.readouterr()
    return exc.value.code, captured.out, captured.err


def assert_one_line_error(stderr: str, *needles: str) -> str:
    """The error is exactly one ``bidsharmony: error:`` line holding every needle; return it."""
    lines = [line for line in stderr.splitlines() if line.strip()]
    assert len(lines) == 1, f"expected one line on stderr, got:\n{stderr}"
    line = lines[0]
    assert line.startswith(ERROR_PREFIX), line
    assert "Traceback" not in stderr and "(traceback in" not in line, f"an unexpected crash: {line}"
    for needle in needles:
        assert needle in line, f"{needle!r} not in {line!r}"
    return line


def unreadable_outputs(folder: Path) -> list[str]:
    """Outputs under ``folder`` (work folder excluded) that do not load whole.

    Every ``.nii.gz``/``.nii`` must load with all its voxels, every ``.json`` parse, every
    ``.tsv`` read as a table with a row. A visible name holding ``.tmp`` counts as a
    leftover that looks like an output.
    """
    bad = []
    for path in sorted(Path(folder).rglob("*")):
        rel = path.relative_to(folder)
        if not path.is_file() or rel.parts[0] == "work" or any(p.startswith(".") for p in rel.parts):
            continue
        if ".tmp" in path.name:
            bad.append(f"{rel.as_posix()} (temporary file under a visible name)")
            continue
        try:
            if path.name.endswith((".nii.gz", ".nii")):
                nb.load(path).get_fdata()
            elif path.suffix == ".json":
                json.loads(path.read_text())
            elif path.suffix == ".tsv" and pd.read_csv(path, sep="\t").empty:
                bad.append(f"{rel.as_posix()} (no rows)")
        except Exception as err:  # noqa: BLE001 - any failure to read is what is looked for
            bad.append(f"{rel.as_posix()} ({type(err).__name__})")
    return bad


def hidden_temporaries(folder: Path) -> list[str]:
    """``atomic_path`` temporaries (``.<name>.<random>.tmp<suffixes>``) left under ``folder``."""
    return sorted(p.relative_to(folder).as_posix() for p in Path(folder).rglob(".*.tmp*")
                  if "work" not in p.relative_to(folder).parts[:1])


def write_group_inputs(root: Path, n_per_site=12, n_sites: int = 3, seed: int = 2):
    """A features-only dataset for the group level: ``participants.tsv`` and ``features.tsv``.

    ``root/bids`` holds ``dataset_description.json`` and ``participants.tsv`` (age, sex,
    site per participant); ``root/features.tsv`` the ROI-like features of the same
    participants. Returns ``(bids_dir, features_file, table)`` where ``table`` is the
    :class:`~bidsharmony.datasets.tabular.FeatureTable` they were written from.
    """
    from bidsharmony.datasets.tabular import make_feature_table

    table = make_feature_table(n_per_site=n_per_site, n_sites=n_sites, n_features=4, seed=seed,
                               nonlinear_effect=0.0)
    bids = Path(root) / "bids"
    bids.mkdir(parents=True)
    (bids / "dataset_description.json").write_text(json.dumps({"Name": "features only", "BIDSVersion": "1.9.0"}))
    ids = pd.Index(table.features.index, name="participant_id")
    table.covariates.set_axis(ids).reset_index()[["participant_id", "age", "sex", "site"]].to_csv(
        bids / "participants.tsv", sep="\t", index=False)
    features = Path(root) / "features.tsv"
    table.features.set_axis(ids).reset_index().to_csv(features, sep="\t", index=False)
    return bids, features, table


def group_argv(bids: Path, out: Path, features: Path, *extra) -> list:
    """The group level on ``features`` with covariates from the dataset's participants.tsv."""
    return [bids, out, "group", "--skip-bids-validation", "--features", features, "--site-column", "site",
            "--min-site-size", "5", *extra]
