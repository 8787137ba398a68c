"""The group level on tables given with --features/--covariates: what it refuses, and what it
does not need (sub- folders)."""

import json

import numpy as np
import pandas as pd
import pytest

from bidsharmony.cli.run import main
from bidsharmony.datasets.tabular import make_feature_table
from bidsharmony.errors import EXIT_BIDS_INVALID, EXIT_ERROR


def _run(argv, capsys):
    with pytest.raises(SystemExit) as exc:
        main([str(a) for a in argv])
    return exc.value.code, capsys.readouterr().err


@pytest.fixture(scope="module")
def tables(tmp_path_factory):
    """A dataset root with a dataset_description.json and no sub- folder, and the two tables."""
    root = tmp_path_factory.mktemp("tables")
    bids = root / "bids"
    bids.mkdir()
    (bids / "dataset_description.json").write_text(json.dumps({"Name": "tables only", "BIDSVersion": "1.9.0"}))
    data = make_feature_table(n_per_site=20, n_sites=3, n_features=4, seed=4, nonlinear_effect=0.0)
    ids = [f"sub-{i:03d}" for i in range(len(data.features))]
    features = data.features.reset_index(drop=True).assign(participant_id=ids)[["participant_id", *data.features]]
    covariates = data.covariates.reset_index(drop=True).assign(participant_id=ids)
    features.to_csv(root / "features.tsv", sep="\t", index=False)
    covariates.to_csv(root / "covariates.tsv", sep="\t", index=False)
    return root, bids, features, covariates


def _group(bids, out, features, covariates, *extra):
    return [bids, out, "group", "--features", features, "--covariates", covariates, "--min-site-size", "5", *extra]


@pytest.mark.parametrize("inside", [False, True], ids=["tables-elsewhere", "tables-in-the-dataset-root"])
def test_group_level_on_tables_needs_no_subject_folders(tables, tmp_path, capsys, inside):
    root, bids, features, covariates = tables
    assert not any(p.name.startswith("sub-") for p in bids.iterdir())
    if inside:  # a folder holding only the tables: their names are not judged as BIDS names
        bids = tmp_path / "dataset"
        bids.mkdir()
        (bids / "dataset_description.json").write_text((root / "bids" / "dataset_description.json").read_text())
        features.to_csv(bids / "features.tsv", sep="\t", index=False)
        covariates.to_csv(bids / "covariates.tsv", sep="\t", index=False)
        paths = (bids / "features.tsv", bids / "covariates.tsv")
    else:
        paths = (root / "features.tsv", root / "covariates.tsv")
    out = tmp_path / "out"
    code, message = _run(_group(bids, out, *paths, "--harmonizer", "combat"), capsys)  # BIDS validation on
    assert code == 0, message
    harmonized = pd.read_csv(out / "group" / "desc-combat_morph.tsv", sep="\t")
    assert list(harmonized["participant_id"]) == list(features["participant_id"])
    assert (harmonized[[c for c in features if c != "participant_id"]].to_numpy() > 0).all()


def test_participant_level_still_needs_subject_folders(tables, tmp_path, capsys):
    _, bids, _, _ = tables
    code, message = _run([bids, tmp_path / "out", "participant"], capsys)
    assert code == EXIT_BIDS_INVALID and "sub-<label>" in message


def _refused(capsys, tables, tmp_path, features, *extra, covariates=None):
    """Run the group level on an edited feature table; return (code, message, table path, output)."""
    root, bids, _, original = tables
    path = tmp_path / "edited.tsv"
    features.to_csv(path, sep="\t", index=False)
    covariates_path = root / "covariates.tsv"
    if covariates is not None:
        covariates_path = tmp_path / "edited_covariates.tsv"
        covariates.to_csv(covariates_path, sep="\t", index=False)
    out = tmp_path / "out"
    code, message = _run(_group(bids, out, path, covariates_path, "--harmonizer", "combat", *extra), capsys)
    return code, message.strip(), path, out


def _nothing_written(out):
    return not (out / "group").exists() or not list((out / "group").glob("*.tsv"))


def test_negative_volume_is_refused_naming_file_row_column_and_fix(tables, tmp_path, capsys):
    features = tables[2].copy()
    features.loc[3, "roi-002"] = -25.0
    code, message, path, out = _refused(capsys, tables, tmp_path, features)
    assert code == EXIT_ERROR and len(message.splitlines()) == 1
    assert str(path) in message and "'roi-002' at row 'sub-003' (-25)" in message
    assert "volumes must be positive" in message and "--harmonizer-param log_features=false" in message
    assert "Traceback" not in message and _nothing_written(out)


def test_duplicate_participant_rows_are_refused_naming_file_lines_and_fix(tables, tmp_path, capsys):
    features = tables[2]
    repeated = pd.concat([features, features.iloc[[4]]], ignore_index=True)
    code, message, path, out = _refused(capsys, tables, tmp_path, repeated)
    assert code == EXIT_ERROR and len(message.splitlines()) == 1
    last_line = len(repeated) + 1  # the header is line 1
    assert str(path) in message and f"sub-004 (lines 6, {last_line})" in message
    assert "one row per scan" in message and "session_id" in message and _nothing_written(out)


def test_sessions_tell_repeated_participants_apart(tables, tmp_path, capsys):
    """The same participant twice is fine when session_id says which scan each row is."""
    features = tables[2].assign(session_id="ses-1")
    again = features.iloc[:30].assign(session_id="ses-2")
    scans = pd.concat([features, again], ignore_index=True)
    covariates = pd.concat([tables[3].assign(session_id="ses-1"), tables[3].iloc[:30].assign(session_id="ses-2")],
                           ignore_index=True)
    code, message, _, out = _refused(capsys, tables, tmp_path, scans, covariates=covariates)
    assert code == 0, message
    assert len(pd.read_csv(out / "group" / "desc-combat_morph.tsv", sep="\t")) == len(scans)


@pytest.mark.parametrize("bare", ["covariates", "both"])
def test_labels_without_the_sub_prefix_match_across_the_tables(tables, tmp_path, capsys, bare):
    """Tables exported from elsewhere often write 01 where BIDS writes sub-01."""
    strip = lambda frame: frame.assign(participant_id=frame["participant_id"].str.removeprefix("sub-"))  # noqa: E731
    features = strip(tables[2]) if bare == "both" else tables[2]
    code, message, _, out = _refused(capsys, tables, tmp_path, features, covariates=strip(tables[3]))
    assert code == 0, message
    harmonized = pd.read_csv(out / "group" / "desc-combat_morph.tsv", sep="\t")
    assert list(harmonized["participant_id"]) == list(tables[2]["participant_id"])
    expected_sites = tables[3].set_index("participant_id")["site"].astype(str)
    assert (harmonized.set_index("participant_id")["site"].astype(str) == expected_sites).all()


def test_duplicate_covariate_rows_are_refused_naming_the_file(tables, tmp_path, capsys):
    covariates = pd.concat([tables[3], tables[3].iloc[[7]]], ignore_index=True)
    code, message, _, _ = _refused(capsys, tables, tmp_path, tables[2], covariates=covariates)
    assert code == EXIT_ERROR and len(message.splitlines()) == 1
    assert "edited_covariates.tsv" in message and "sub-007 (lines 9," in message


@pytest.mark.parametrize("kind", ["text-column", "one-bad-cell"])
def test_non_numeric_feature_column_is_refused_naming_file_column_and_row(tables, tmp_path, capsys, kind):
    features = tables[2].copy()
    if kind == "text-column":
        features["scanner"] = "Prisma"
        expected = "'scanner' at row 'sub-000': 'Prisma'"
    else:
        features["roi-003"] = features["roi-003"].astype(object)
        features.loc[9, "roi-003"] = "1.2e3mm"
        expected = "'roi-003' at row 'sub-009': '1.2e3mm'"
    code, message, path, out = _refused(capsys, tables, tmp_path, features)
    assert code == EXIT_ERROR and len(message.splitlines()) == 1
    assert str(path) in message and "non-numeric feature column" in message and expected in message
    assert "drop the column" in message and _nothing_written(out)


def test_missing_feature_values_name_the_rows(tables, tmp_path, capsys):
    features = tables[2].copy().astype({"roi-001": object})
    features.loc[11, "roi-001"] = "n/a"
    code, message, path, _ = _refused(capsys, tables, tmp_path, features)
    assert code == EXIT_ERROR and str(path) in message and "'roi-001'" in message and "'sub-011'" in message


def test_features_that_are_not_volumes_pass_on_the_raw_scale(tables, tmp_path, capsys):
    """--harmonizer-param log_features=false is the way out the refusal names, and it works."""
    features = tables[2].assign(asymmetry=np.linspace(-0.2, 0.2, len(tables[2])))
    code, message, _, out = _refused(capsys, tables, tmp_path, features, "--harmonizer-param", "log_features=false")
    assert code == 0, message
    harmonized = pd.read_csv(out / "group" / "desc-combat_morph.tsv", sep="\t")
    assert (harmonized["asymmetry"] < 0).any()
    meta = json.loads((out / "group" / "desc-combat_morph.json").read_text())
    assert meta["Parameters"]["log_features"] is False and "asymmetry" not in meta["NotHarmonized"]


def test_participant_level_roi_tables_still_harmonize_and_set_zero_rois_aside(tables, tmp_path, capsys):
    """Without --features: each scan's ROI table, zero ROIs left out and listed, per-scan outputs."""
    _, _, features, covariates = tables
    bids, out = tmp_path / "bids", tmp_path / "out"
    bids.mkdir()
    (bids / "dataset_description.json").write_text(json.dumps({"Name": "roi", "BIDSVersion": "1.9.0"}))
    covariates.to_csv(bids / "participants.tsv", sep="\t", index=False)
    for k, row in features.iterrows():
        subject = row["participant_id"]
        (bids / subject / "anat").mkdir(parents=True)
        anat = out / subject / "anat"
        anat.mkdir(parents=True)
        volumes = {f"volume_{c}": row[c] for c in features if c != "participant_id"}
        volumes["volume_Lost"] = 0.0 if k == 5 else 100.0 + k  # a label the atlas lost in one brain
        pd.DataFrame([{"participant_id": subject, "session_id": "n/a", **volumes}]).to_csv(
            anat / f"{subject}_atlas-Neuromorphometrics_desc-volume_morph.tsv", sep="\t", index=False)
    code, message = _run([bids, out, "group", "--site-column", "site", "--harmonizer", "combat",
                          "--min-site-size", "5"], capsys)
    assert code == 0, message
    harmonized = pd.read_csv(out / "group" / "atlas-Neuromorphometrics_desc-combat_morph.tsv", sep="\t")
    assert list(harmonized["participant_id"]) == list(features["participant_id"])
    assert "volume_Lost" not in harmonized
    meta = json.loads((out / "group" / "atlas-Neuromorphometrics_desc-combat_morph.json").read_text())
    assert meta["NotHarmonized"] == ["volume_Lost"]
    one = pd.read_csv(out / "sub-007" / "anat" / "sub-007_atlas-Neuromorphometrics_desc-combat_morph.tsv", sep="\t")
    assert one["participant_id"].tolist() == ["sub-007"]
    assert one["volume_roi-001"].iloc[0] == pytest.approx(harmonized.loc[7, "volume_roi-001"])


def _disease_tables(root, seed=0):
    """3 sites x 60 scans whose disease prevalence is 10 %, 50 % and 90 %; the disease shrinks
    every volume by 15 % (log -0.1625), each site scales the volumes by its own factor."""
    rng = np.random.default_rng(seed)
    rows, volumes = [], []
    for k, (site, prevalence) in enumerate({"siteA": 0.1, "siteB": 0.5, "siteC": 0.9}.items()):
        scale = np.exp(rng.normal(0, 0.15, 4))
        for i in range(60):
            sick = rng.random() < prevalence
            age = rng.uniform(40, 80)
            log_volume = np.log([3000, 4000, 5000, 6000]) - 0.004 * (age - 60) + np.log(0.85) * sick
            volumes.append(np.exp(log_volume + rng.normal(0, 0.05, 4)) * scale)
            rows.append({"participant_id": f"sub-{k}{i:02d}", "site": site, "age": age,
                         "sex": "M" if rng.random() < 0.5 else "F", "dx": "AD" if sick else "CN"})
    covariates = pd.DataFrame(rows)
    features = pd.DataFrame(volumes, columns=[f"roi{j}" for j in range(4)]).assign(
        participant_id=covariates["participant_id"])[["participant_id", *[f"roi{j}" for j in range(4)]]]
    features.to_csv(root / "features.tsv", sep="\t", index=False)
    covariates.to_csv(root / "covariates.tsv", sep="\t", index=False)
    return root / "features.tsv", root / "covariates.tsv"


def _disease_effect(path, covariates):
    """The disease's effect on the log-volumes, all scans pooled (site ignored, age adjusted):
    what a study of the harmonized table would estimate."""
    table = pd.read_csv(path, sep="\t").drop(columns=["dx"], errors="ignore")
    table = table.merge(pd.read_csv(covariates, sep="\t")[["participant_id", "dx"]], on="participant_id")
    logs = np.log(table[[f"roi{j}" for j in range(4)]].to_numpy())
    design = np.column_stack([np.ones(len(table)), table["age"], (table["dx"] == "AD").astype(float)])
    return float(np.linalg.lstsq(design, logs, rcond=None)[0][2].mean())


@pytest.mark.comparison
def test_protect_keeps_a_site_unbalanced_disease_effect(tables, tmp_path, capsys):
    """A disease far more common at one site: without --protect ComBat takes part of its effect
    for a site effect; with --protect dx it is kept. True effect log(0.85) = -0.163; on table
    seeds 0-4 -0.159 to -0.169 protected vs -0.085 to -0.110 unprotected."""
    _, bids, _, _ = tables
    features, covariates = _disease_tables(tmp_path)
    effects = {}
    for protect in (False, True):
        out = tmp_path / f"out-{protect}"
        code, message = _run(_group(bids, out, features, covariates, "--harmonizer", "combat",
                                    *(["--protect", "dx"] if protect else [])), capsys)
        assert code == 0, message
        effects[protect] = _disease_effect(out / "group" / "desc-combat_morph.tsv", covariates)
    truth = np.log(0.85)
    assert abs(effects[True] - truth) < 0.02, effects
    assert abs(effects[False] - truth) > 2 * abs(effects[True] - truth), effects
    sidecar = json.loads((tmp_path / "out-True" / "group" / "desc-combat_morph.json").read_text())
    assert sidecar["ProtectedCovariates"] == {"dx": {"AD": 0, "CN": 1}}
    assert sidecar["Parameters"]["extra_covariates"] == ["dx"]


def test_protect_refuses_what_it_cannot_keep(tables, tmp_path, capsys):
    _, bids, _, _ = tables
    features, covariates = _disease_tables(tmp_path)
    code, message = _run(_group(bids, tmp_path / "a", features, covariates, "--harmonizer", "combat",
                                "--protect", "dxx"), capsys)
    assert code == EXIT_ERROR and "--protect dxx" in message and "no column 'dxx'" in message
    table = pd.read_csv(covariates, sep="\t")
    table.loc[3, "dx"] = "MCI"
    table.to_csv(tmp_path / "three.tsv", sep="\t", index=False)
    code, message = _run(_group(bids, tmp_path / "b", features, tmp_path / "three.tsv", "--harmonizer", "combat",
                                "--protect", "dx"), capsys)
    assert code == EXIT_ERROR and "3 values of 'dx'" in message
    code, message = _run(_group(bids, tmp_path / "c", features, covariates, "--harmonizer", "equivariant-pooling",
                                "--protect", "dx"), capsys)
    assert code != 0 and "equivariant-pooling cannot keep further covariates" in message


def test_evaluate_repeats_the_cross_validation_and_recommends_a_method(tables, tmp_path, capsys):
    root, bids, _, _ = tables
    out = tmp_path / "out"
    with pytest.raises(SystemExit) as exc:
        main([str(a) for a in _group(bids, out, root / "features.tsv", root / "covariates.tsv", "--harmonizer",
                                     "combat", "--evaluate", "--evaluate-repeats", "2", "--skip-bids-validation")])
    printed = capsys.readouterr()
    assert exc.value.code == 0, printed.err
    evaluation = json.loads((out / "group" / "evaluation" / "evaluation.json").read_text())
    assert evaluation["config"]["n_repeats"] == 2 and evaluation["config"]["seeds"] == [0, 1]
    site = {row["method"]: row for row in evaluation["site_predictability"]}
    assert site["combat"]["n_folds"] == 10 and site["combat"]["n_repeats"] == 2
    assert evaluation["recommendation"]["method"] == "combat"
    assert "combat recommended" in printed.out
    assert "Recommended for this data: combat" in (out / "group" / "group_report.html").read_text()
