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


def truncated_outputs(folder: Path) -> list[str]:
    """Outputs under ``folder`` that do not load whole, and temporary files left behind.

    Every ``.nii.gz``/``.nii`` must load with all voxels, every ``.json`` parse, every ``.tsv``
    read as a table with at least one row; names of ``atomic_path`` temporaries
    (``.<name>.<random>.tmp<suffixes>``) must be gone.
    """
    bad = []
    for path in sorted(Path(folder).rglob("*")):
        if not path.is_file() or "work" in path.relative_to(folder).parts[:1]:
            continue
        rel = path.relative_to(folder).as_posix()
        if ".tmp" in path.name:
            bad.append(f"{rel} (temporary file left behind)")
            continue
        try:
            if path.name.endswith((".nii.gz", ".nii")):
                nb.load(path).get_fdata()
            elif path.suffix == ".json":
                json.loads(path.read_text())
            elif path.suffix == ".tsv":
                if pd.read_csv(path, sep="\t").empty:
                    bad.append(f"{rel} (no rows)")
        except Exception as err:  # noqa: BLE001 - any failure to read is what is looked for
            bad.append(f"{rel} ({type(err).__name__})")
    return bad
