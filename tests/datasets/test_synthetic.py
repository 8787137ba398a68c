"""bidsharmony.datasets.synthetic: the demo dataset and its ground truth (4 mm, few subjects)."""

from __future__ import annotations

import filecmp
import json
import os
from pathlib import Path

import nibabel as nb
import numpy as np
import pandas as pd
import pytest

from bidsharmony.datasets import synthetic as S
from bidsharmony.morphometry import feature_columns, read_label_table, roi_volumes, roi_volumes_from_files
from bidsharmony.templates import ensure_offline_cache

RESOLUTION = 4.0


@pytest.fixture(scope="module")
def model():
    ensure_offline_cache(Path(os.environ["TEMPLATEFLOW_HOME"]), resolutions=(2,))
    return S.TemplateModel(2)


@pytest.fixture(scope="module")
def dataset(tmp_path_factory, model):
    out = tmp_path_factory.mktemp("demo")
    return S.make_dataset(out, n_subjects=6, n_sites=3, resolution=RESOLUTION, seed=5, n_traveling=1)


def _canonical(path) -> tuple[np.ndarray, np.ndarray]:
    img = nb.as_closest_canonical(nb.load(path))
    return np.asanyarray(img.dataobj), img.affine


def _truth_file(dataset, row, suffix) -> Path:
    folder = dataset.truth_dir / row.participant_id
    if row.session_id != "n/a":
        folder = folder / row.session_id
    prefix = row.participant_id + ("" if row.session_id == "n/a" else f"_{row.session_id}")
    return folder / "anat" / f"{prefix}_{suffix}.nii.gz"


def test_layout_and_tables(dataset):
    assert (dataset.bids_dir / "dataset_description.json").is_file()
    scans = dataset.scans
    assert len(scans) == 6 + 3  # 6 single-site subjects + 1 traveller at 3 sites
    table = pd.read_csv(dataset.truth_dir / "roi_volumes.tsv", sep="\t")
    labels = read_label_table(dataset.truth_dir / "atlas-Neuromorphometrics_dseg.tsv")
    assert list(table.columns) == ["participant_id", "session_id", "site"] + feature_columns(labels)
    traveller = table[table.participant_id == "sub-T01"]
    assert sorted(traveller.session_id) == ["ses-siteA", "ses-siteB", "ses-siteC"]
    assert (traveller.session_id == "ses-" + traveller.site).all()
    description = json.loads((dataset.bids_dir / "dataset_description.json").read_text())
    assert description["BIDSVersion"] == "1.9.0" and description["DatasetType"] == "raw"
    assert "seed=5" in description["GeneratedBy"][0]["Description"]


def test_roi_volumes_equal_the_label_images(dataset):
    table = pd.read_csv(dataset.truth_dir / "roi_volumes.tsv", sep="\t", keep_default_na=False)
    labels = read_label_table(dataset.truth_dir / "atlas-Neuromorphometrics_dseg.tsv")
    for row in table.itertuples():
        measured = roi_volumes_from_files(
            _truth_file(dataset, row, "atlas-Neuromorphometrics_dseg"),
            _truth_file(dataset, row, "desc-tissue_dseg"),
            _truth_file(dataset, row, "desc-brain_mask"),
            labels,
        )
        expected = table.loc[row.Index, list(measured)].astype(float)
        assert np.allclose(expected.to_numpy(), list(measured.values()), rtol=0, atol=1e-6)
        assert measured["volume_ICV"] > 1.2e6 and measured["volume_Left_Hippocampus"] > 1000


def test_truth_is_consistent(dataset):
    row = dataset.scans.iloc[0]
    mask, _ = _canonical(row["mask"])
    tissues, _ = _canonical(row.dseg)
    atlas, _ = _canonical(row.atlas)
    sitefree, _ = _canonical(row.sitefree)
    scan, _ = _canonical(row.t1w)
    assert set(np.unique(tissues)) == {0, 1, 2, 3}
    assert np.array_equal(tissues > 0, mask > 0) and np.all(atlas[mask == 0] == 0)
    # a whole head: plenty of signal outside the brain, and the brain is inside the FOV
    outside = (mask == 0) & (sitefree > 0.02)
    assert outside.sum() > 0.5 * mask.sum()
    inner = mask[1:-1, 1:-1, 1:-1]
    assert inner.sum() == mask.sum()
    # site-free contrast: CSF < GM < WM, and the dark skull right outside the brain
    means = [sitefree[tissues == k].mean() for k in (1, 2, 3)]
    assert means[0] < means[1] < means[2]
    assert scan.dtype == np.int16 and scan.min() >= 0


def test_traveling_subject(dataset):
    rows = dataset.scans[dataset.scans.participant_id == "sub-T01"].set_index("site")
    sites = {s["name"]: s for s in dataset.sites}
    assert sites["siteA"]["voxel_size_mm"] == sites["siteB"]["voxel_size_mm"] == RESOLUTION
    assert nb.aff2axcodes(nb.load(rows.loc["siteB", "t1w"]).affine) == ("L", "P", "S")
    assert sites["siteC"]["voxel_size_mm"] == 1.25 * RESOLUTION
    # identical anatomy on the same grid (after undoing siteB's LPS storage)...
    for kind in ("atlas", "dseg", "mask", "sitefree"):
        a, affine_a = _canonical(rows.loc["siteA", kind])
        b, affine_b = _canonical(rows.loc["siteB", kind])
        assert np.array_equal(affine_a, affine_b) and np.array_equal(a, b), kind
    # ...but different scans
    a, _ = _canonical(rows.loc["siteA", "t1w"])
    b, _ = _canonical(rows.loc["siteB", "t1w"])
    mask = _canonical(rows.loc["siteA", "mask"])[0] > 0
    assert abs(np.median(a[mask].astype(float)) - np.median(b[mask].astype(float))) > 20
    # the coarser site sees the same brain
    volumes = rows[["volume_ICV", "volume_Left_Hippocampus", "volume_GM"]]
    assert np.allclose(volumes.loc["siteC"], volumes.loc["siteA"], rtol=0.1)


def test_site_intensity_maps_are_monotone_and_applied(dataset):
    x = np.linspace(0, 1.2, 500)
    sites = json.loads((dataset.truth_dir / "sites.json").read_text())
    assert len({s["intensity"]["family"] for s in sites.values()}) == 3
    for site in sites.values():
        assert np.all(np.diff(S.intensity_map(x, site)) > 0)
    for row in dataset.scans.itertuples():
        site = sites[row.site]
        scan, sitefree, tissues = (_canonical(getattr(row, k))[0] for k in ("t1w", "sitefree", "dseg"))
        bias = S.bias_field(site, S.Grid(site["voxel_size_mm"]).axes)  # on the RAS grid
        wm = tissues == 3
        expected = S.intensity_map(sitefree, site) * bias
        ratio = np.median(scan[wm] / expected[wm])
        assert abs(ratio - 1) < 0.03, (row.site, ratio)
        assert np.corrcoef(scan[wm], expected[wm])[0, 1] > 0.5


def test_age_and_diagnosis_shrink_the_hippocampus(model):
    """Same subject (same random draws), older or AD: smaller hippocampus, larger ventricles."""
    grid = S.Grid(RESOLUTION)

    def volumes(age, diagnosis):
        subject = S._draw_subject(7, 0, "001", ["siteA"], (age, age), diagnosis)
        anatomy = S.make_anatomy(subject, model, grid)
        return roi_volumes(anatomy.atlas, anatomy.tissues, anatomy.mask, RESOLUTION**3, model.labels)

    young, old, old_ad = volumes(50.0, "CN"), volumes(85.0, "CN"), volumes(85.0, "AD")
    hippocampus = [v["volume_Left_Hippocampus"] + v["volume_Right_Hippocampus"] for v in (young, old, old_ad)]
    ventricles = [v["volume_Left_Lateral_Ventricle"] + v["volume_Right_Lateral_Ventricle"]
                  for v in (young, old, old_ad)]
    assert hippocampus[0] > 1.05 * hippocampus[1] > 1.05 * hippocampus[2]
    assert ventricles[0] < ventricles[1] < ventricles[2]
    assert young["volume_GM"] > old["volume_GM"] > old_ad["volume_GM"]
    assert young["volume_ICV"] == old["volume_ICV"] == old_ad["volume_ICV"]  # atrophy keeps ICV


def test_age_effect_across_subjects(dataset):
    truth = pd.read_csv(dataset.truth_dir / "participants.tsv", sep="\t")
    scans = dataset.scans.drop_duplicates("participant_id").merge(truth, on="participant_id")
    assert np.corrcoef(scans.age_x, scans.volume_GM / scans.volume_ICV)[0, 1] < -0.5
    assert np.corrcoef(scans.age_x, scans.change_hippocampus_L)[0, 1] > 0.3
    # sites have overlapping but shifted age ranges
    ranges = [s["age_range"] for s in dataset.sites]
    assert ranges[0][0] < ranges[1][0] < ranges[2][0] < ranges[0][1]


def test_diagnosis_stays_hidden(dataset):
    participants = pd.read_csv(dataset.bids_dir / "participants.tsv", sep="\t")
    assert list(participants.columns) == ["participant_id", "age", "sex", "site"]
    assert set(participants.sex) <= {"M", "F"}
    for path in dataset.bids_dir.rglob("*"):
        if path.suffix in {".tsv", ".json"} or path.name == "README":
            assert "diagnosis" not in path.read_text().lower(), path
    truth = pd.read_csv(dataset.truth_dir / "participants.tsv", sep="\t")
    assert set(truth.diagnosis) == {"CN", "AD"}


def test_sidecars_identify_the_site(dataset):
    seen = {}
    for row in dataset.scans.itertuples():
        sidecar = json.loads(Path(row.t1w.replace(".nii.gz", ".json")).read_text())
        for key in ("Manufacturer", "ManufacturersModelName", "MagneticFieldStrength", "InstitutionName",
                    "RepetitionTime", "EchoTime", "FlipAngle"):
            assert key in sidecar
        seen.setdefault(sidecar["InstitutionName"], set()).add(row.site)
    assert len(seen) == 3 and all(len(s) == 1 for s in seen.values())
    sessions = pd.read_csv(dataset.bids_dir / "sub-T01" / "sub-T01_sessions.tsv", sep="\t")
    assert list(sessions.columns) == ["session_id", "site"] and len(sessions) == 3


def test_pybids_and_validator(dataset):
    from bids import BIDSLayout

    layout = BIDSLayout(dataset.bids_dir, validate=True)
    t1w = layout.get(suffix="T1w", extension=".nii.gz", return_type="file")
    assert sorted(t1w) == sorted(dataset.scans.t1w)
    assert layout.get_sessions() == ["siteA", "siteB", "siteC"]
    assert len(layout.get_subjects()) == 7
    validator = pytest.importorskip("bids_validator").BIDSValidator()
    invalid = [p for p in dataset.bids_dir.rglob("*") if p.is_file()
               and not validator.is_bids("/" + p.relative_to(dataset.bids_dir).as_posix())]
    assert invalid == []


def test_same_seed_same_bytes(tmp_path, model):
    kwargs = {"n_subjects": 2, "n_sites": 2, "resolution": RESOLUTION, "n_traveling": 1}
    first = S.make_dataset(tmp_path / "a", seed=11, **kwargs)
    second = S.make_dataset(tmp_path / "b", seed=11, **kwargs)
    files = sorted(p.relative_to(first.root) for p in first.root.rglob("*") if p.is_file())
    assert files == sorted(p.relative_to(second.root) for p in second.root.rglob("*") if p.is_file())
    assert any(f.name.endswith("_T1w.nii.gz") for f in files)
    for name in files:
        assert filecmp.cmp(first.root / name, second.root / name, shallow=False), name
    third = S.make_dataset(tmp_path / "c", seed=12, **kwargs)
    scan = "bids/sub-001/anat/sub-001_T1w.nii.gz"
    assert not filecmp.cmp(first.root / scan, third.root / scan, shallow=False)


def test_cli(tmp_path, capsys, model):
    args = [str(tmp_path), "--subjects", "1", "--sites", "1", "--traveling", "0", "--resolution", "4"]
    assert S.main(args) == 0
    assert "wrote 1 T1w scans" in capsys.readouterr().out
    assert (tmp_path / "bids" / "sub-001" / "anat" / "sub-001_T1w.nii.gz").is_file()
    assert S.main(args) == 64  # refuses to overwrite
    assert "--force" in capsys.readouterr().err
    assert S.main(args + ["--force", "--seed", "3"]) == 0
