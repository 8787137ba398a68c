"""The group level from the command line on feature tables with known truth."""

import json

import numpy as np
import pandas as pd
import pytest

from bidsharmony.cli.run import main
from bidsharmony.datasets.tabular import make_feature_table


def _run(argv, capsys=None):
    with pytest.raises(SystemExit) as exc:
        main([str(a) for a in argv])
    # Log lines go to stdout; the error, if any, is the only thing on stderr.
    return exc.value.code, (capsys.readouterr().err if capsys else "")


@pytest.fixture(scope="module")
def tables(tmp_path_factory):
    root = tmp_path_factory.mktemp("group")
    bids = root / "bids"
    bids.mkdir()
    (bids / "dataset_description.json").write_text(json.dumps({"Name": "features only", "BIDSVersion": "1.9.0"}))
    data = make_feature_table(n_per_site=30, n_sites=3, n_features=5, seed=2, nonlinear_effect=0.0)
    ids = [f"sub-{i:03d}" for i in range(len(data.features))]
    features = data.features.reset_index(drop=True).assign(participant_id=ids)
    covariates = data.covariates.reset_index(drop=True).assign(participant_id=ids)
    truth = data.truth_reference.reset_index(drop=True)
    features.to_csv(root / "features.csv", index=False)
    covariates.to_csv(root / "covariates.tsv", sep="\t", index=False)
    return root, bids, data, truth


def _harmonized(path):
    return pd.read_csv(path, sep="\t")


@pytest.fixture(scope="module")
def fitted(tables):
    root, bids, data, _ = tables
    code, _ = _run([bids, root / "out", "group", "--skip-bids-validation", "--features", root / "features.csv",
                    "--covariates", root / "covariates.tsv", "--harmonizer", "combat", "flow-scm",
                    "--epochs", "60", "--reference-site", data.reference_site, "--random-seed", "1"])
    assert code == 0
    return root / "out"


def test_combat_and_flow_scm_move_features_toward_the_reference_truth(tables, fitted):
    root, bids, data, truth = tables
    out = fitted
    columns = list(data.features.columns)
    raw = _harmonized(out / "group" / "desc-raw_morph.tsv")[columns]
    raw_error = np.sqrt(((raw - truth[columns]) ** 2).mean().mean())
    for desc in ("combat", "flowscm"):
        table = _harmonized(out / "group" / f"desc-{desc}_morph.tsv")
        assert list(table.columns[:2]) == ["participant_id", "session_id"]
        error = np.sqrt(((table[columns] - truth[columns]) ** 2).mean().mean())
        assert error < 0.7 * raw_error, (desc, error, raw_error)
        meta = json.loads((out / "group" / f"desc-{desc}_morph.json").read_text())
        assert meta["ReferenceSite"] == data.reference_site and meta["RandomSeed"] == 1
        if desc == "flowscm":  # the fit's log-likelihoods, per node, in nats per scan
            fit = meta["TrainingLogLikelihood"]
            # epoch 0: no epoch beat the closed-form initialisation (ComBat's location-scale fit)
            assert fit["Units"] == "nats per scan" and 0 <= fit["BestEpoch"] <= 60
            assert set(fit["ValidationPerNode"]) == {"sex", "site", "age", "x"}
            assert fit["ValidationPerNode"]["x"] == pytest.approx(fit["FeaturesValidation"])
    assert (out / "group" / "models" / "flow-scm" / "manifest.json").is_file()


def test_saved_model_applies_identically_and_refuses_a_new_site(tables, fitted, capsys):
    root, bids, data, _ = tables
    model = fitted / "group" / "models" / "combat"
    out = root / "applied"
    code, _ = _run([bids, out, "group", "--skip-bids-validation", "--features", root / "features.csv", "--covariates",
                    root / "covariates.tsv", "--harmonizer-model", model], capsys)
    assert code == 0
    first = _harmonized(root / "out" / "group" / "desc-combat_morph.tsv")
    again = _harmonized(out / "group" / "desc-combat_morph.tsv")
    pd.testing.assert_frame_equal(first, again)

    covariates = pd.read_csv(root / "covariates.tsv", sep="\t")
    covariates.loc[:4, "site"] = "siteZ"
    covariates.to_csv(root / "new_site.tsv", sep="\t", index=False)
    code, message = _run([bids, root / "new", "group", "--skip-bids-validation", "--features", root / "features.csv",
                          "--covariates", root / "new_site.tsv", "--harmonizer-model", model], capsys)
    assert code == 1 and "siteZ" in message and "Traceback" not in message
    assert len(message.strip().splitlines()) == 1


def test_bad_covariates_are_one_line_errors(tables, capsys):
    root, bids, _, _ = tables
    covariates = pd.read_csv(root / "covariates.tsv", sep="\t")
    covariates["age"] = covariates["age"].astype(object)
    covariates.loc[3, "age"] = "unknown"
    covariates.to_csv(root / "bad_age.tsv", sep="\t", index=False)
    code, message = _run([bids, root / "bad", "group", "--skip-bids-validation", "--features", root / "features.csv",
                          "--covariates", root / "bad_age.tsv", "--harmonizer", "combat"], capsys)
    assert code == 1 and "age" in message and "sub-003" in message


def test_equivariant_pooling_writes_a_representation_with_the_given_parameters(tables, tmp_path):
    root, bids, data, _ = tables
    out = tmp_path / "pooled"
    code, _ = _run([bids, out, "group", "--skip-bids-validation", "--features", root / "features.csv",
                    "--covariates", root / "covariates.tsv", "--harmonizer", "equivariant-pooling",
                    "--harmonizer-param", "epochs_stage1=3", "epochs_stage2=2", "latent_dim=4",
                    "--reference-site", data.reference_site])
    assert code == 0
    table = _harmonized(out / "group" / "desc-equivariantpooling_morph.tsv")
    representation = [c for c in table.columns if c not in ("participant_id", "session_id", "site", "age", "sex",
                                                           "diagnosis")]
    assert len(table) == len(data.features) and representation
    assert not set(representation) & set(data.features.columns)  # a representation, not features
    assert np.isfinite(table[representation].to_numpy(float)).all()
    manifest = json.loads((out / "group" / "models" / "equivariant-pooling" / "manifest.json").read_text())
    assert manifest["hyperparameters"]["epochs_stage1"] == 3 and manifest["hyperparameters"]["latent_dim"] == 4


def test_missing_age_column_names_the_file_and_the_column(tables, capsys):
    root, bids, _, _ = tables
    pd.read_csv(root / "covariates.tsv", sep="\t").drop(columns="age").to_csv(root / "no_age.tsv", sep="\t", index=False)
    code, message = _run([bids, root / "no_age", "group", "--skip-bids-validation", "--features", root / "features.csv",
                          "--covariates", root / "no_age.tsv", "--harmonizer", "combat"], capsys)
    assert code == 1 and "no_age.tsv has no age column" in message and len(message.strip().splitlines()) == 1
