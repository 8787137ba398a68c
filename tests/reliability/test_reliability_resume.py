"""Crash and resume, determinism and BIDS-Derivatives validity of the participant level (slow).

One subject at 4 mm, in a path with spaces and non-ASCII characters, is processed three
times by separate ``bidsharmony`` processes with the same ``--random-seed``:

* run A, uninterrupted;
* run B, killed with SIGKILL in the middle of a node (as a scheduler's time limit or the
  OOM killer does), then re-run with the same command.

Asserted: at the moment of the kill every visible output loads whole; the re-run exits 0,
re-executes none of the nodes that had finished (Nipype reports them cached; their result
files are untouched) and leaves every output whole; A and B have the same outputs and
identical ROI tables and images; the outputs index as BIDS-Derivatives with PyBIDS
(``validate=True``). About 90 s on 2 cores, hence ``slow``: run by scripts/run_reliability.sh.
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import nibabel as nb
import numpy as np
import pandas as pd
import pytest

from bidsharmony.datasets.synthetic import make_dataset
from reliability_helpers import hidden_temporaries, unreadable_outputs

pytestmark = pytest.mark.slow

OPTIONS = ("--output-spaces", "MNI152NLin2009aSym:res-4", "--reg-quality", "fast", "--random-seed", "5")
# Killed while this node runs: by then N4, brain extraction, registration and the first
# outputs are done, and the node itself takes about a second.
KILL_AT = 'Executing "report_mask_single"'
ROI_TABLE = "sub-001/anat/sub-001_atlas-Neuromorphometrics_desc-volume_morph.tsv"


def _env() -> dict:
    env = dict(os.environ, NIPYPE_NO_ET="1", OMP_NUM_THREADS="1", ITK_GLOBAL_DEFAULT_NUMBER_OF_THREADS="1",
               PYTHONUNBUFFERED="1")
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"
    return env


def _command(bids, out, work) -> list[str]:
    return [sys.executable, "-m", "bidsharmony", str(bids), str(out), "participant", "-w", str(work), *OPTIONS]


def _finished_nodes(work: Path) -> dict[str, int]:
    """Nodes with a result file: node folder name → the result file's mtime (ns)."""
    return {p.parent.name: p.stat().st_mtime_ns for p in work.rglob("result_*.pklz")}


def _map_nodes(work: Path) -> set[str]:
    """MapNodes and their items: Nipype logs no "Cached" line for them (result files tell)."""
    return {p.parent.name for p in work.rglob("mapflow")} | {p.name for p in work.rglob("mapflow/*")}


def _run_and_kill(command, log: Path, timeout: float = 300) -> None:
    """Start ``command``; SIGKILL its process group as soon as the log shows :data:`KILL_AT`."""
    with open(log, "w") as stream:
        process = subprocess.Popen(command, env=_env(), stdout=stream, stderr=subprocess.STDOUT,
                                   start_new_session=True)
    deadline = time.monotonic() + timeout
    try:
        while KILL_AT not in log.read_text():
            if process.poll() is not None:
                pytest.fail(f"the run ended (code {process.returncode}) before {KILL_AT!r}:\n{log.read_text()[-3000:]}")
            if time.monotonic() > deadline:
                pytest.fail(f"{KILL_AT!r} not reached in {timeout} s")
            time.sleep(0.02)
    finally:
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGKILL)
        process.wait()
    assert process.returncode == -signal.SIGKILL


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    root = tmp_path_factory.mktemp("reliability_resume") / "Étude pilote" / "données ü"
    bids = make_dataset(root / "data set", n_subjects=1, n_sites=1, resolution=4.0, seed=5, n_traveling=0).bids_dir
    timings = {}
    started = time.monotonic()
    clean = subprocess.run(_command(bids, root / "out A", root / "work A"), env=_env(), capture_output=True,
                           text=True, timeout=600)
    timings["uninterrupted"] = time.monotonic() - started
    assert clean.returncode == 0, clean.stdout[-3000:] + clean.stderr
    out, work = root / "out B", root / "work B"
    started = time.monotonic()
    _run_and_kill(_command(bids, out, work), root / "killed.log")
    timings["until killed"] = time.monotonic() - started
    at_kill = {"finished": _finished_nodes(work), "unreadable": unreadable_outputs(out),
               "temporaries": hidden_temporaries(out)}
    started = time.monotonic()
    resumed = subprocess.run(_command(bids, out, work), env=_env(), capture_output=True, text=True, timeout=600)
    timings["resumed"] = time.monotonic() - started
    print("timings (s):", {k: round(v, 1) for k, v in timings.items()})
    return {"bids": bids, "clean": root / "out A", "out": out, "work": work, "at_kill": at_kill,
            "resumed": resumed, "timings": timings}


def test_outputs_are_whole_at_the_moment_of_the_kill(runs):
    assert runs["at_kill"]["unreadable"] == []
    assert len(runs["at_kill"]["finished"]) >= 8, "killed too early to test resuming"


def test_resume_completes_reusing_every_finished_node(runs):
    resumed = runs["resumed"]
    assert resumed.returncode == 0, resumed.stdout[-3000:] + resumed.stderr
    log = resumed.stdout
    executed = set(re.findall(r'\[Node\] Executing "([^"]+)"', log))
    cached = {name.rsplit(".", 1)[-1] for name in re.findall(r'\[Node\] Cached "([^"]+)"', log)}
    finished = runs["at_kill"]["finished"]
    assert not executed & set(finished), f"finished before the kill yet executed again: {executed & set(finished)}"
    plain = set(finished) - _map_nodes(runs["work"])
    assert plain <= cached, f"not reported cached: {plain - cached}"
    assert executed, "nothing left to do after the kill: the kill came too late"
    after = _finished_nodes(runs["work"])
    assert {n: after[n] for n in finished} == finished, "result files of finished nodes were rewritten"
    print(f"resume: {len(cached)} node(s) cached, {len(executed)} executed")


def test_resumed_outputs_are_whole_and_nothing_is_left_behind(runs):
    assert unreadable_outputs(runs["out"]) == []
    assert hidden_temporaries(runs["out"]) == []
    assert not list((runs["out"] / "logs").glob("crash-*"))


def _outputs(folder: Path) -> set[str]:
    return {p.relative_to(folder).as_posix() for p in folder.rglob("*")
            if p.is_file() and p.relative_to(folder).parts[0] not in ("logs", "work")}


def test_same_seed_gives_identical_outputs_with_or_without_the_crash(runs):
    clean, out = runs["clean"], runs["out"]
    assert _outputs(clean) == _outputs(out)
    pd.testing.assert_frame_equal(pd.read_csv(clean / ROI_TABLE, sep="\t"), pd.read_csv(out / ROI_TABLE, sep="\t"))
    for image in sorted(p for p in _outputs(clean) if p.endswith(".nii.gz")):
        a, b = nb.load(clean / image), nb.load(out / image)
        assert np.array_equal(a.affine, b.affine), image
        assert np.array_equal(a.get_fdata(), b.get_fdata()), image


def test_outputs_index_as_bids_derivatives(runs):
    """PyBIDS (``validate=True``, the derivatives config) indexes every output with the
    entities of its name.

    Neither the npm ``bids-validator`` (1.15, the one npm serves) nor bidsschematools'
    validator judges derivatives: both apply the raw-data rules and flag every derivative
    file (see RELIABILITY.md). PyBIDS does not read ``.bidsignore``, so logs are indexed too.
    """
    from bids import BIDSLayout

    from bidsharmony.utils.derivatives import parse_entities

    out = runs["out"]
    description = json.loads((out / "dataset_description.json").read_text())
    assert description["DatasetType"] == "derivative" and description["GeneratedBy"][0]["Name"] == "bidsharmony"
    layout = BIDSLayout(str(runs["bids"]), derivatives=str(out), validate=True)
    derivatives = layout.derivatives["bidsharmony"]
    indexed = {Path(f.path).relative_to(out).as_posix(): f for f in derivatives.get()}
    expected = {p for p in _outputs(out) if p.startswith("sub-") and "/figures/" not in p and not p.endswith(".html")}
    assert expected - set(indexed) == set(), "outputs PyBIDS does not index"
    long_names = {"sub": "subject", "ses": "session"}
    for rel in sorted(expected):
        named = {long_names.get(k, k): v for k, v in parse_entities(rel).items()}
        parsed = {k: v for k, v in indexed[rel].get_entities().items() if k != "datatype"}
        assert parsed == named, rel
