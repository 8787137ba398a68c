"""The participant level end to end on a tiny synthetic dataset, scored against ground truth.

One traveling subject scanned at two sites (two sessions, one stored LAS) at 4 mm, 'fast'
registration: the whole module takes about a minute on 2 cores. Full-resolution accuracy and
speed are measured by benchmarks/bench_participant.py.
"""

import json
import os
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from bidsharmony.cli.run import main
from bidsharmony.datasets.synthetic import make_dataset
from bidsharmony.datasets.truth import score_participant_outputs, volume_errors

SUBJECT = "T01"


def _run(argv):
    with pytest.raises(SystemExit) as exc:
        main([str(a) for a in argv])
    return exc.value.code


@pytest.fixture(scope="module")
def participant_run(tmp_path_factory):
    root = tmp_path_factory.mktemp("participant")
    dataset = make_dataset(root / "data", n_subjects=1, n_sites=2, resolution=4.0, seed=3, n_traveling=1)
    out, work = root / "out", root / "work"
    argv = [
        dataset.bids_dir, out, "participant", "--participant-label", SUBJECT,
        "--output-spaces", "MNI152NLin2009aSym:res-4", "--reg-quality", "fast",
        "--nprocs", "2", "-w", work, "--random-seed", "5",
    ]
    assert _run(argv) == 0
    return dataset, out, work, argv


def test_outputs_are_bids_derivatives_with_sidecars(participant_run):
    dataset, out, _, _ = participant_run
    description = json.loads((out / "dataset_description.json").read_text())
    assert description["DatasetType"] == "derivative"
    for session in ("ses-siteA", "ses-siteB"):
        anat = out / f"sub-{SUBJECT}" / session / "anat"
        stem = f"sub-{SUBJECT}_{session}"
        expected = [
            f"{stem}_desc-preproc_T1w.nii.gz",
            f"{stem}_desc-brain_mask.nii.gz",
            f"{stem}_dseg.nii.gz",
            f"{stem}_label-GM_probseg.nii.gz",
            f"{stem}_space-MNI152NLin2009aSym_desc-preproc_T1w.nii.gz",
            f"{stem}_space-MNI152NLin2009aSym_desc-brain_mask.nii.gz",
            f"{stem}_from-T1w_to-MNI152NLin2009aSym_mode-image_xfm.h5",
            f"{stem}_from-MNI152NLin2009aSym_to-T1w_mode-image_xfm.h5",
            f"{stem}_atlas-Neuromorphometrics_dseg.nii.gz",
            f"{stem}_atlas-Neuromorphometrics_desc-volume_morph.tsv",
        ]
        for name in expected:
            assert (anat / name).is_file(), name
            sidecar = json.loads((anat / (name.split(".")[0] + ".json")).read_text())
            assert sidecar["Sources"][0] == f"bids:raw:sub-{SUBJECT}/{session}/anat/{stem}_T1w.nii.gz"
            assert sidecar["RandomSeed"] == 5 and "antspyx" in {e["Name"] for e in sidecar["GeneratedBy"]}
        morph_meta = json.loads((anat / f"{stem}_atlas-Neuromorphometrics_desc-volume_morph.json").read_text())
        assert morph_meta["Units"] == "mm^3"
    report = (out / f"sub-{SUBJECT}.html").read_text()
    figures = [p for p in out.rglob("figures/*.png")]
    assert len(figures) == 6 and all(p.relative_to(out).as_posix() in report for p in figures)
    assert not list(out.rglob("*.tmp*")), "temporary files left behind"


def test_accuracy_against_ground_truth(participant_run):
    dataset, out, _, _ = participant_run
    scores = score_participant_outputs(out, dataset.truth_dir)
    # 4 mm voxels: one boundary voxel is a large share of a region, so these bounds are
    # looser than the 1-2 mm targets (BENCHMARKS.md); they still fail on a wrong mask,
    # a flipped orientation or a mis-registered atlas.
    assert (scores["mask_dice"] >= 0.95).all(), scores["mask_dice"].tolist()
    assert (scores["GM_dice"] >= 0.75).all() and (scores["WM_dice"] >= 0.8).all(), scores.to_dict("records")
    assert (scores["median_abs_roi_volume_error_pct"] <= 15).all(), scores["median_abs_roi_volume_error_pct"].tolist()
    assert (scores["ICV_error_pct"].abs() <= 8).all(), scores["ICV_error_pct"].tolist()


def test_same_anatomy_at_two_sites_gives_close_volumes(participant_run):
    dataset, out, _, _ = participant_run
    tables = sorted(out.rglob("*_desc-volume_morph.tsv"))
    a, b = (pd.read_csv(t, sep="\t").iloc[0] for t in tables)
    icv = [a["volume_ICV"], b["volume_ICV"]]
    assert abs(icv[0] - icv[1]) / np.mean(icv) < 0.05


def test_rerun_recomputes_nothing(participant_run):
    _, out, _, argv = participant_run
    outputs = sorted(p for p in out.rglob("sub-*/**/*") if p.is_file())
    before = {p: p.stat().st_mtime_ns for p in outputs}
    assert _run(argv) == 0
    assert {p: p.stat().st_mtime_ns for p in outputs} == before


def test_rerun_writes_deleted_outputs_again(participant_run):
    """Outputs deleted since a run come back when it is re-run with the same work folder,
    byte for byte, although every computing node is cached; the others are not touched."""
    _, out, _, argv = participant_run
    anat = sorted((out / f"sub-{SUBJECT}").glob("ses-*/anat"))[0]
    saved = {p.relative_to(out): p.read_bytes() for p in anat.iterdir()}
    untouched = {p: p.stat().st_mtime_ns for p in out.rglob("sub-*/**/*") if p.is_file() and anat not in p.parents}
    for name in saved:
        (out / name).unlink()
    assert _run(argv) == 0
    assert {p.relative_to(out): p.read_bytes() for p in anat.iterdir()} == saved
    assert {p: p.stat().st_mtime_ns for p in untouched} == untouched


def test_group_level_collects_the_participant_tables(participant_run):
    dataset, out, work, _ = participant_run
    assert _run([dataset.bids_dir, out, "group", "--site-column", "site", "-w", work]) == 0
    table = pd.read_csv(out / "group" / "atlas-Neuromorphometrics_desc-raw_morph.tsv", sep="\t")
    assert sorted(table["site"]) == ["siteA", "siteB"]  # from sessions.tsv, not participants.tsv
    assert (table["participant_id"] == f"sub-{SUBJECT}").all()


@pytest.mark.determinism
def test_one_process_gives_the_same_bytes_as_two(participant_run, tmp_path):
    """``--nprocs`` decides only how many nodes run at once: with the same ``--random-seed``,
    every derivative image and table of a one-process run is byte-identical to the
    two-process run of the fixture, and the same files are written.

    The ``.h5`` transforms are left out of the byte comparison: HDF5 stamps its objects
    with their creation time. The template-space images, resampled with those transforms,
    are compared.
    """
    dataset, out, _, argv = participant_run
    serial_out, serial_work = tmp_path / "out", tmp_path / "work"
    serial_argv = [dataset.bids_dir, serial_out, *argv[2:]]
    serial_argv[serial_argv.index("--nprocs") + 1] = "1"
    serial_argv[serial_argv.index("-w") + 1] = serial_work
    assert _run(serial_argv) == 0

    def data_files(root):
        return {p.relative_to(root).as_posix(): p for p in sorted(root.glob("sub-*/**/*"))
                if p.is_file()}

    parallel, serial = data_files(out), data_files(serial_out)
    assert sorted(serial) == sorted(parallel)
    compared = [name for name in serial if name.endswith((".nii.gz", ".tsv"))]
    assert any("space-" in name for name in compared) and any(name.endswith(".tsv") for name in compared)
    differ = [name for name in compared if serial[name].read_bytes() != parallel[name].read_bytes()]
    assert not differ, f"differ between --nprocs 1 and 2: {differ}"
