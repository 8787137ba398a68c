"""Shared by the integration tests: bidsharmony as separate processes, output comparisons."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest
from filelock import FileLock

# Files every processed T1w without sessions gets in ``sub-<label>/anat/`` (4 mm run).
EXPECTED_SUFFIXES = (
    "desc-preproc_T1w.nii.gz",
    "desc-brain_mask.nii.gz",
    "dseg.nii.gz",
    "label-GM_probseg.nii.gz",
    "space-MNI152NLin2009aSym_desc-preproc_T1w.nii.gz",
    "space-MNI152NLin2009aSym_desc-brain_mask.nii.gz",
    "from-T1w_to-MNI152NLin2009aSym_mode-image_xfm.h5",
    "from-MNI152NLin2009aSym_to-T1w_mode-image_xfm.h5",
    "atlas-Neuromorphometrics_dseg.nii.gz",
    "atlas-Neuromorphometrics_desc-volume_morph.tsv",
)
PARTICIPANT_OPTIONS = (
    "--output-spaces", "MNI152NLin2009aSym:res-4", "--reg-quality", "fast", "--random-seed", "5",
)


def process_env(templateflow_home: Path | None = None, threads: int = 1) -> dict:
    """The environment of a bidsharmony subprocess: offline, single-threaded unless told."""
    env = dict(os.environ)
    env.update({
        "NIPYPE_NO_ET": "1",
        "OMP_NUM_THREADS": str(threads),
        "ITK_GLOBAL_DEFAULT_NUMBER_OF_THREADS": str(threads),
        "PYTHONUNBUFFERED": "1",
    })
    if templateflow_home is not None:
        env["TEMPLATEFLOW_HOME"] = str(templateflow_home)
    # the scripts call `bidsharmony`: make the one of this interpreter's environment first
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"
    return env


def bidsharmony_command(*args) -> list[str]:
    return [sys.executable, "-m", "bidsharmony", *(str(a) for a in args)]


def run_bidsharmony(*args, env: dict, timeout: float = 600) -> subprocess.CompletedProcess:
    return subprocess.run(bidsharmony_command(*args), env=env, capture_output=True, text=True, timeout=timeout)


def bids_validator_errors(dataset: Path) -> list[dict]:
    """The errors the BIDS schema validator finds in ``dataset`` (raw or derivative).

    Runs ``bids-validator-deno --format json DATASET`` (PyPI's packaging of the current
    validator, pinned in requirements.txt). It uses the schema bundled with it, so it needs
    no network; ``DatasetType`` in ``dataset_description.json`` selects the derivative
    rules. A missing executable fails the test rather than skipping it: CI installs it.

    Parameters
    ----------
    dataset : pathlib.Path
        Folder holding a ``dataset_description.json``.

    Returns
    -------
    list of dict
        The validator's issues of severity ``error`` (``code``, ``subCode``, ``location``...).
    """
    executable = shutil.which("bids-validator-deno", path=process_env()["PATH"])
    if executable is None:
        pytest.fail("bids-validator-deno not found: install requirements.txt (pip install bids-validator-deno)")
    env = {**process_env(), "DENO_NO_UPDATE_CHECK": "1"}
    result = subprocess.run([executable, "--format", "json", str(dataset)], env=env,
                            capture_output=True, text=True, timeout=300)
    if not result.stdout.strip():  # no report at all: the validator itself failed
        pytest.fail(f"bids-validator-deno exited {result.returncode} without a report: {result.stderr[-2000:]}")
    issues = json.loads(result.stdout)["issues"]["issues"]
    return [issue for issue in issues if issue["severity"] == "error"]


def format_issues(issues: list[dict]) -> str:
    """One line per issue: code, sub-code (e.g. the sidecar key) and file."""
    return "\n".join(" ".join(filter(None, (i["code"], i.get("subCode"), i.get("location")))) for i in issues)


def missing_outputs(output_dir: Path, subjects) -> list[str]:
    """Expected participant outputs (and their sidecars) absent from ``output_dir``."""
    missing = []
    for label in subjects:
        anat = output_dir / f"sub-{label}" / "anat"
        for suffix in EXPECTED_SUFFIXES:
            for name in (f"sub-{label}_{suffix}", f"sub-{label}_{suffix.split('.')[0]}.json"):
                if not (anat / name).is_file():
                    missing.append(f"sub-{label}/anat/{name}")
    return missing


def roi_tables(output_dir: Path) -> dict[str, pd.DataFrame]:
    """Every ROI-volume table under ``output_dir``, by path relative to it."""
    return {
        p.relative_to(output_dir).as_posix(): pd.read_csv(p, sep="\t")
        for p in sorted(output_dir.glob("sub-*/**/anat/*_desc-volume_morph.tsv"))
    }


def build_once(tmp_path_factory, name: str, build) -> Path:
    """Run ``build(folder)`` once per test session and return the folder it filled.

    pytest-xdist (``make test`` runs ``-n 2``) spreads one module's tests over workers, and a
    module-scoped fixture would then run its minutes of processing once per worker. Under
    xdist the workers share the session's temporary root: the first worker builds there
    under a file lock, the others wait and reuse its result.
    """
    if os.getenv("PYTEST_XDIST_WORKER") is None:
        folder = tmp_path_factory.mktemp(name)
        build(folder)
        return folder
    folder = tmp_path_factory.getbasetemp().parent / name
    with FileLock(f"{folder}.lock"):
        if not (folder / ".built").is_file():
            if folder.exists():  # a worker failed or skipped half-way: start again
                shutil.rmtree(folder)
            folder.mkdir()
            build(folder)
            (folder / ".built").touch()
    return folder
