"""The group level's image harmonizers from the command line, on template-space scans with truth."""

import json
import re

import nibabel as nb
import numpy as np
import pytest

from bidsharmony.cli.run import main
from bidsharmony.datasets.template_space import make_template_scans
from bidsharmony.evaluation.images import psnr_in_mask

SPACE = "MNI152NLin2009aSym"


def _run(argv, capsys=None):
    with pytest.raises(SystemExit) as exc:
        main([str(a) for a in argv])
    return exc.value.code, (capsys.readouterr().err if capsys else "")


def _scan_stem(row):
    session = "" if row["session_id"] == "n/a" else f"_{row['session_id']}"
    folder = row["participant_id"] + (f"/{row['session_id']}" if session else "")
    return f"{folder}/anat/{row['participant_id']}{session}_space-{SPACE}_res-4"


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    """Participant-level outputs (template-space T1w + mask) as the group level reads them."""
    root = tmp_path_factory.mktemp("group_images")
    bids, out = root / "bids", root / "out"
    bids.mkdir()
    (bids / "dataset_description.json").write_text(json.dumps({"Name": "images", "BIDSVersion": "1.9.0"}))
    data = make_template_scans(n_subjects=9, n_sites=3, n_traveling=2, resolution=4, seed=1)
    covariates = data.scans.covariates
    covariates.to_csv(root / "covariates.tsv", sep="\t", index=False)
    for k, row in covariates.iterrows():
        stem = out / _scan_stem(row)
        stem.parent.mkdir(parents=True, exist_ok=True)
        nb.Nifti1Image(data.scans.images[k], data.scans.affine).to_filename(f"{stem}_desc-preproc_T1w.nii.gz")
        nb.Nifti1Image(data.scans.masks[k].astype(np.uint8), data.scans.affine).to_filename(
            f"{stem}_desc-brain_mask.nii.gz")
    return root, bids, out, data


def _harmonized(out, row, desc):
    return nb.load(f"{out / _scan_stem(row)}_desc-{desc}_T1w.nii.gz")


@pytest.fixture(scope="module")
def fitted(dataset):
    root, bids, out, _ = dataset
    code, _ = _run([bids, out, "group", "--skip-bids-validation", "--covariates", root / "covariates.tsv",
                    "--output-spaces", f"{SPACE}:res-4", "--harmonizer", "histogram-matching",
                    "--reference-site", "siteA", "--random-seed", "3"])
    assert code == 0
    return out


def test_traveling_scans_move_toward_their_reference_site_scan(dataset, fitted):
    _, _, out, data = dataset
    table = data.scans.covariates
    gains = []
    for participant in ("sub-T01", "sub-T02"):
        rows = data.traveler_rows(participant)
        reference = data.scans.images[rows["siteA"]]
        for site in ("siteB", "siteC"):
            row = rows[site]
            mask = data.scans.masks[row]
            harmonized = _harmonized(out, table.iloc[row], "histogrammatching").get_fdata()
            raw_psnr = psnr_in_mask(data.scans.images[row], reference, mask)
            gains.append(psnr_in_mask(harmonized, reference, mask) - raw_psnr)
    assert min(gains) > 3.0  # dB


def test_every_scan_has_an_image_and_a_sidecar_with_provenance(dataset, fitted):
    _, _, out, data = dataset
    for _, row in data.scans.covariates.iterrows():
        img = _harmonized(out, row, "histogrammatching")
        assert img.shape == data.scans.shape and np.allclose(img.affine, data.scans.affine)
        meta = json.loads((out / f"{_scan_stem(row)}_desc-histogrammatching_T1w.json").read_text())
        assert meta["ReferenceSite"] == "siteA" and meta["RandomSeed"] == 3 and meta["Site"] == row["site"]
        assert meta["Sources"][0] == f"bids::{_scan_stem(row)}_desc-preproc_T1w.nii.gz"
    manifest = json.loads((out / "group" / "models" / "histogram-matching" / "manifest.json").read_text())
    assert manifest["harmonizer"] == "histogram-matching" and manifest["reference_site"] == "siteA"


def test_saved_image_model_applies_identically(dataset, fitted, tmp_path):
    root, bids, out, data = dataset
    again = tmp_path / "again"
    for preproc in out.glob("sub-*/**/anat/*_desc-preproc_T1w.nii.gz"):
        for path in (preproc, preproc.with_name(preproc.name.replace("desc-preproc_T1w", "desc-brain_mask"))):
            target = again / path.relative_to(out)
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_bytes(path.read_bytes())
    code, _ = _run([bids, again, "group", "--skip-bids-validation", "--covariates", root / "covariates.tsv",
                    "--output-spaces", f"{SPACE}:res-4",
                    "--harmonizer-model", out / "group" / "models" / "histogram-matching"])
    assert code == 0
    row = data.scans.covariates.iloc[1]
    np.testing.assert_array_equal(_harmonized(again, row, "histogrammatching").get_fdata(),
                                  _harmonized(out, row, "histogrammatching").get_fdata())


def test_unknown_harmonizer_parameter_is_a_usage_error(dataset, tmp_path, capsys):
    root, bids, out, _ = dataset
    code, message = _run([bids, tmp_path / "o", "group", "--skip-bids-validation", "--covariates",
                          root / "covariates.tsv", "--output-spaces", f"{SPACE}:res-4",
                          "--harmonizer", "blindharmony", "--harmonizer-param", "flow_epochs=3"], capsys)
    assert code != 0
    assert "flow_epochs" in message and "epochs" in message and len(message.strip().splitlines()) == 1


def test_missing_template_images_name_the_fix(dataset, tmp_path, capsys):
    root, bids, _, _ = dataset
    code, message = _run([bids, tmp_path / "empty", "group", "--skip-bids-validation", "--covariates",
                          root / "covariates.tsv", "--output-spaces", f"{SPACE}:res-4",
                          "--harmonizer", "blindharmony"], capsys)
    assert code != 0 and "--output-spaces" in message and "participant level" in message


def test_deepscm_image_writes_counterfactual_figures(dataset, tmp_path):
    root, bids, out, data = dataset
    work = tmp_path / "deepscm"
    for path in out.glob("sub-*/**/anat/*_desc-*.nii.gz"):
        if "desc-preproc_T1w" in path.name or "desc-brain_mask" in path.name:
            target = work / path.relative_to(out)
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_bytes(path.read_bytes())
    code, _ = _run([bids, work, "group", "--skip-bids-validation", "--covariates", root / "covariates.tsv",
                    "--output-spaces", f"{SPACE}:res-4", "--harmonizer", "deepscm-image", "--reference-site",
                    "siteA", "--harmonizer-param", "epochs=3", "slice_size=32", "latent_dim=4", "channels=8",
                    "--counterfactual", "age=+10"])
    assert code == 0
    figures = sorted((work / "group" / "figures").glob("*_desc-deepscm_counterfactuals.png"))
    assert len(figures) == len(data.scans)
    row = data.scans.covariates.iloc[0]
    meta = json.loads((work / f"{_scan_stem(row)}_desc-deepscm_T1w.json").read_text())
    assert meta["Method"] == "deepscm-image" and meta["Parameters"]["epochs"] == 3


def test_counterfactual_needs_deepscm(dataset, tmp_path, capsys):
    root, bids, _, _ = dataset
    code, message = _run([bids, tmp_path / "o", "group", "--skip-bids-validation", "--covariates",
                          root / "covariates.tsv", "--harmonizer", "histogram-matching",
                          "--counterfactual", "age=+10"], capsys)
    assert code != 0 and "--harmonizer deepscm-image" in message


def test_every_offered_image_harmonizer_is_registered():
    from bidsharmony.harmonize.image_base import IMAGE_HARMONIZER_MODULES, image_harmonizer_class
    from bidsharmony.harmonize.names import IMAGE_HARMONIZERS

    assert set(IMAGE_HARMONIZERS) == set(IMAGE_HARMONIZER_MODULES)
    assert {image_harmonizer_class(name).name for name in IMAGE_HARMONIZERS} == set(IMAGE_HARMONIZERS)


def test_harmonizer_params_are_typed_and_saved_with_the_settings(tmp_path):
    from bidsharmony.cli.parser import parse_args
    from bidsharmony.config import Config

    config = parse_args([str(tmp_path / "bids"), str(tmp_path / "out"), "group", "--harmonizer", "blindharmony",
                         "--harmonizer-param", "epochs=3", "alpha=0.01", "edge-quantile=0.5", "note=null",
                         "--counterfactual", "age=-5"])
    assert config.harmonizer_params == {"epochs": 3, "alpha": 0.01, "edge_quantile": 0.5, "note": "null"}
    assert config.counterfactual == {"age": "-5"}  # relative, kept as text
    again = Config.from_toml(config.to_toml(tmp_path / "config.toml"))
    assert again.harmonizer_params == config.harmonizer_params and again.counterfactual == config.counterfactual


def test_image_report_shows_before_after_and_per_scan_distances(dataset, fitted):
    import pandas as pd

    _, _, out, data = dataset
    stats = pd.read_csv(out / "group" / "desc-histogrammatching_imagestats.tsv", sep="\t")
    assert len(stats) == len(data.scans) and set(stats["site"]) == {"siteA", "siteB", "siteC"}
    meta = json.loads((out / "group" / "desc-histogrammatching_imagestats.json").read_text())
    assert meta["ReferenceSite"] == "siteA" and len(meta["Sources"]) == 2 * len(data.scans)
    others = stats[stats["site"] != "siteA"]
    # the other sites' brain intensities come onto the reference site's
    assert (others["distance_after"] < 0.5 * others["distance_before"]).all()
    page = (out / "group" / "group_images_histogram-matching.html").read_text()
    images = re.findall(r"<img src='([^']+)'", page)
    assert len(images) == 2 and all((out / "group" / src).read_bytes()[:4] == b"\x89PNG" for src in images)
    assert all(label in page for label in stats["scan"])
