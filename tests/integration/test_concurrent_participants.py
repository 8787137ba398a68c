"""Several participant-level processes into one output folder at once, as a job array runs.

Two subjects at 4 mm with 'fast' registration, one ``bidsharmony ... participant
--participant-label X`` process each, started together with an empty TemplateFlow cache (so
they also race to fill it). About a minute on 2 cores. The input and the resulting
derivatives must also pass the BIDS validator with 0 errors.
"""

import json
import subprocess
import time
import tomllib

import pytest

from bidsharmony.datasets.synthetic import make_dataset
from bidsharmony.utils.derivatives import container_info, dataset_description, write_bidsignore
from integration_helpers import (
    PARTICIPANT_OPTIONS,
    bids_validator_errors,
    bidsharmony_command,
    build_once,
    format_issues,
    missing_outputs,
    process_env,
)

SUBJECTS = ("001", "002")


def _build(root):
    dataset = make_dataset(root / "data", n_subjects=len(SUBJECTS), n_sites=2, resolution=4.0, seed=7, n_traveling=0)
    out, work = root / "out", root / "work"
    env = process_env(templateflow_home=root / "templateflow")  # empty: the processes fill it
    processes = [
        subprocess.Popen(
            bidsharmony_command(dataset.bids_dir, out, "participant", "--participant-label", label,
                                "-w", work, *PARTICIPANT_OPTIONS),
            env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
        )
        for label in SUBJECTS
    ]
    started = time.monotonic()
    logs = [p.communicate(timeout=600)[0] for p in processes]
    print(f"{len(SUBJECTS)} concurrent participant processes: {time.monotonic() - started:.0f} s")
    (root / "processes.json").write_text(json.dumps({"codes": [p.returncode for p in processes], "logs": logs}))


@pytest.fixture(scope="module")
def concurrent_run(tmp_path_factory):
    root = build_once(tmp_path_factory, "concurrent_participants", _build)
    processes = json.loads((root / "processes.json").read_text())
    return root / "data" / "bids", root / "out", processes["codes"], processes["logs"]


def test_every_process_succeeds_and_every_output_is_complete(concurrent_run):
    _, out, codes, logs = concurrent_run
    assert codes == [0] * len(SUBJECTS), "\n".join(log[-2000:] for log in logs)
    assert missing_outputs(out, SUBJECTS) == []
    for label in SUBJECTS:
        assert (out / f"sub-{label}.html").is_file()
    assert not list(out.rglob("*.tmp*")), "temporary files left behind"


def test_dataset_description_is_whole_and_expected(concurrent_run):
    bids_dir, out, _, _ = concurrent_run
    written = json.loads((out / "dataset_description.json").read_text())
    expected = json.loads(json.dumps(dataset_description(bids_dir, container_info()), default=str))
    assert written == expected
    assert "logs/" in (out / ".bidsignore").read_text().splitlines()


def test_input_and_outputs_pass_the_bids_validator(concurrent_run):
    """0 errors on the input dataset and on the job array's derivatives (warnings allowed)."""
    bids_dir, out, codes, _ = concurrent_run
    assert codes == [0] * len(SUBJECTS)
    for dataset in (bids_dir, out):
        errors = bids_validator_errors(dataset)
        assert not errors, f"{len(errors)} BIDS validator error(s) in {dataset}:\n{format_issues(errors)}"


def test_bidsignore_covers_session_folders(tmp_path):
    """The run above has no sessions: check the ``.bidsignore`` on ``ses-*`` folders too.

    Files the specification does not cover yet (QC figures, ROI tables, transforms) under a
    session must be ignored, not reported as NOT_INCLUDED.
    """
    (tmp_path / "dataset_description.json").write_text(json.dumps(
        {"Name": "test", "BIDSVersion": "1.9.0", "DatasetType": "derivative", "GeneratedBy": [{"Name": "bidsharmony"}]}))
    write_bidsignore(tmp_path)
    stem = "sub-01/ses-1/anat/sub-01_ses-1"
    for name in ("sub-01/ses-1/figures/sub-01_ses-1_desc-reg_T1w.png", f"{stem}_atlas-X_desc-volume_morph.tsv",
                 f"{stem}_atlas-X_desc-volume_morph.json", f"{stem}_from-T1w_to-MNI_mode-image_xfm.h5",
                 f"{stem}_from-T1w_to-MNI_mode-image_xfm.json"):
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_text("{}")
    errors = bids_validator_errors(tmp_path)
    assert not errors, format_issues(errors)


def test_each_process_keeps_its_own_log_and_settings(concurrent_run):
    _, out, _, _ = concurrent_run
    logs = sorted((out / "logs").glob("bidsharmony-*.log"))
    configs = sorted((out / "logs").glob("config-*.toml"))
    assert len(logs) == len(SUBJECTS) and len(configs) == len(SUBJECTS)
    labels = sorted(tuple(tomllib.loads(c.read_text())["participant_label"]) for c in configs)
    assert labels == [(s,) for s in SUBJECTS]
    for log in logs:  # one subject per log: no interleaving of two processes
        text = log.read_text()
        assert sum(f"sub-{s}" in text for s in SUBJECTS) == 1, log.name
    assert not list((out / "logs").glob("crash-*"))
