"""The documented job-array path on a real single-node SLURM cluster (slurm-wlm + munge).

``scripts/slurm/local_cluster.sh`` starts munged, slurmctld and slurmd on localhost with
their own key, ports and state in a temporary folder; ``scripts/slurm/submit.sh`` submits
the participant level as a job array of three subjects (4 mm, 'fast') and the group level
with ``--dependency=afterok``. The outputs must be complete and the ROI tables identical to
one local process. Needs root and the Debian packages: otherwise skipped with the reason,
unless ``BIDSHARMONY_REQUIRE_SLURM=1`` (set by ``.ci/run``) turns the skip into a failure.
About two to three minutes on 2 cores.
"""

import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pytest

from bidsharmony.datasets.synthetic import make_dataset
from bidsharmony.templates import ensure_offline_cache
from integration_helpers import (
    PARTICIPANT_OPTIONS,
    build_once,
    missing_outputs,
    process_env,
    roi_tables,
    run_bidsharmony,
)

pytestmark = pytest.mark.slurm

SCRIPTS = Path(__file__).resolve().parents[2] / "scripts" / "slurm"
SUBJECTS = ("001", "002", "003")
TIMEOUT_S = 900


def _unavailable(reason: str):
    print(f"SLURM test not run: {reason}")
    if os.getenv("BIDSHARMONY_REQUIRE_SLURM") == "1":
        pytest.fail(f"BIDSHARMONY_REQUIRE_SLURM=1 but {reason}")
    pytest.skip(reason)


def _start_cluster(folder: Path) -> Path:
    missing = [c for c in ("munged", "slurmctld", "slurmd", "sbatch") if shutil.which(c) is None]
    if missing:
        _unavailable(f"{', '.join(missing)} not installed (apt-get install slurm-wlm munge)")
    if os.geteuid() != 0:
        _unavailable("slurmd must run as root")
    started = subprocess.run(
        ["bash", str(SCRIPTS / "local_cluster.sh"), "start", str(folder)],
        capture_output=True, text=True, timeout=120,
    )
    if started.returncode != 0:
        _unavailable(f"the daemons did not start: {(started.stderr or started.stdout).strip()[-800:]}")
    return folder / "slurm.conf"


def _squeue(env, *job_ids) -> str:
    result = subprocess.run(["squeue", "-h", "-j", ",".join(job_ids), "-o", "%i %T"],
                            env=env, capture_output=True, text=True)
    return result.stdout.strip()


def _job_states(env, job_id) -> list[str]:
    shown = subprocess.run(["scontrol", "-o", "show", "job", job_id], env=env, capture_output=True, text=True)
    return [word.split("=", 1)[1] for word in shown.stdout.split() if word.startswith("JobState=")]


def _build(root: Path) -> None:
    """Submit the array + group job and wait; then the same subjects in one local process."""
    dataset = make_dataset(root / "data", n_subjects=len(SUBJECTS), n_sites=2, resolution=4.0, seed=11, n_traveling=0)
    templateflow = ensure_offline_cache(root / "templateflow", (4,))  # filled once, before the jobs
    env = process_env(templateflow_home=templateflow)
    env["BIDSHARMONY"] = f"{sys.executable} -m bidsharmony"
    env["SLURM_CONF"] = str(_start_cluster(root / "cluster"))
    try:
        started = time.monotonic()
        submitted = subprocess.run(
            ["bash", str(SCRIPTS / "submit.sh"), str(dataset.bids_dir), str(root / "slurm_out"),
             "--array-sbatch-args", "--cpus-per-task=1 --mem=2G",
             "--participant-args", " ".join(PARTICIPANT_OPTIONS),
             "--group-args", "--site-column site"],
            env=env, capture_output=True, text=True, cwd=root, timeout=60,
        )
        assert submitted.returncode == 0, submitted.stderr
        ids = dict(line.split("=", 1) for line in submitted.stdout.splitlines() if "_job=" in line)
        while _squeue(env, ids["array_job"], ids["group_job"]):
            assert time.monotonic() - started < TIMEOUT_S, _squeue(env, ids["array_job"], ids["group_job"])
            time.sleep(2)
        slurm_seconds = time.monotonic() - started
        states = {name: _job_states(env, job) for name, job in ids.items()}
    finally:
        subprocess.run(["bash", str(SCRIPTS / "local_cluster.sh"), "stop", str(root / "cluster")], timeout=60)
    (root / "states.json").write_text(json.dumps(states))

    started = time.monotonic()
    result = run_bidsharmony(dataset.bids_dir, root / "local_out", "participant", "--nprocs", "2",
                             "-w", root / "local_work", *PARTICIPANT_OPTIONS, env=env)
    assert result.returncode == 0, result.stderr[-2000:]
    print(f"SLURM array of {len(SUBJECTS)} subjects + group: {slurm_seconds:.0f} s; "
          f"one local process (participant only): {time.monotonic() - started:.0f} s")


@pytest.fixture(scope="module")
def slurm_run(tmp_path_factory):
    root = build_once(tmp_path_factory, "slurm_array", _build)
    return root / "slurm_out", root / "local_out", json.loads((root / "states.json").read_text())


def test_array_and_dependent_group_job_complete(slurm_run):
    out, _, states = slurm_run
    logs = "\n".join(p.read_text()[-1500:] for p in sorted((out / "logs").glob("slurm-*.out")))
    assert states["array_job"] == ["COMPLETED"] * len(SUBJECTS), logs
    assert states["group_job"] == ["COMPLETED"], logs


def test_derivatives_are_complete(slurm_run):
    out, _, _ = slurm_run
    assert missing_outputs(out, SUBJECTS) == []
    assert not list(out.rglob("*.tmp*"))
    assert len(list((out / "logs").glob("bidsharmony-*.log"))) == len(SUBJECTS) + 1  # tasks + group


def test_roi_tables_identical_to_a_local_run(slurm_run):
    out, local, _ = slurm_run
    from_slurm, from_local = roi_tables(out), roi_tables(local)
    assert sorted(from_slurm) == sorted(from_local) and len(from_local) == len(SUBJECTS)
    for name, table in from_local.items():
        pd.testing.assert_frame_equal(from_slurm[name], table, check_exact=True, obj=name)


def test_group_job_collected_every_subject(slurm_run):
    out, _, _ = slurm_run
    table = pd.read_csv(out / "group" / "atlas-Neuromorphometrics_desc-raw_morph.tsv", sep="\t")
    assert sorted(table["participant_id"]) == [f"sub-{s}" for s in SUBJECTS]
    assert sorted(set(table["site"])) == ["siteA", "siteB"]
