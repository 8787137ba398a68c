"""The shared interface: registry, saved-model format, and one-line errors at the edges."""

import json
import subprocess
import sys

import numpy as np
import pandas as pd
import pytest

from bidsharmony import __version__
from bidsharmony.harmonize import HARMONIZERS, get_harmonizer, load_harmonizer
from bidsharmony.harmonize.base import SCHEMA_VERSION, Harmonizer
from bidsharmony.features.combat import ComBat
from bidsharmony.harmonize.errors import (
    FeatureError,
    FeatureMismatchError,
    HarmonizerParameterError,
    ModelFileError,
    NotFittedError,
    UnknownSiteError,
)

MODELS = ["fitted_combat", "fitted_covbat", "fitted_flow"]


def test_registry_names_and_lazy_import():
    assert {"combat", "combat-gam", "covbat", "flow-scm"} <= set(HARMONIZERS)
    for name in HARMONIZERS:  # every name the command line offers can be built
        assert get_harmonizer(name, reference_site="siteA").name == name
    with pytest.raises(HarmonizerParameterError, match="unknown harmonizer 'harmony'.*combat"):
        get_harmonizer("harmony")
    code = ("import sys, bidsharmony.harmonize; "
            "print(any(m in sys.modules for m in ('torch', 'nflows', 'neuroHarmonize')))")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert result.stdout.strip() == "False"


@pytest.mark.parametrize("model_fixture", MODELS)
def test_save_load_transform_is_identical(model_fixture, small_table, tmp_path, request):
    model = request.getfixturevalue(model_fixture)
    path = model.save(tmp_path / "model")
    loaded = load_harmonizer(path)
    assert type(loaded) is type(model)
    before = model.transform(small_table.features, small_table.covariates)
    after = loaded.transform(small_table.features, small_table.covariates)
    assert np.array_equal(before.to_numpy(), after.to_numpy())
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model"]  # no temporary leftovers


def test_manifest_records_what_is_needed(fitted_combat, small_table, tmp_path):
    path = fitted_combat.save(tmp_path / "model")
    manifest = json.loads((path / "manifest.json").read_text())
    assert manifest["format"] == "bidsharmony-harmonizer-model"
    assert manifest["schema_version"] == SCHEMA_VERSION
    assert manifest["harmonizer"] == "combat"
    assert manifest["bidsharmony_version"] == __version__
    assert manifest["feature_names"] == list(small_table.features.columns)
    assert manifest["sites"] == ["siteA", "siteB", "siteC"]
    assert manifest["reference_site"] == small_table.reference_site
    ages = small_table.covariates.age
    assert manifest["covariates"]["age"]["min"] == pytest.approx(ages.min())
    assert manifest["covariates"]["age"]["by_site"]["siteB"][1] == pytest.approx(ages[small_table.covariates.site == "siteB"].max())
    assert manifest["covariates"]["sex_coding"] == "labels"
    assert manifest["hyperparameters"]["min_subjects_per_site"] == 5
    assert manifest["random_seed"] == 0 and manifest["created"].endswith("+00:00")
    assert len(manifest["weights"]["sha256"]) == 64


def test_flow_manifest_holds_graph_and_training(fitted_flow, tmp_path):
    manifest = json.loads((fitted_flow.save(tmp_path / "flow") / "manifest.json").read_text())
    graph = {node["name"]: node for node in manifest["state"]["graph"]}
    assert graph["x"]["parents"] == ["sex", "age", "site"]
    assert graph["age"]["log_transform"] and graph["site"]["categories"] == 3
    assert manifest["hyperparameters"]["flow"] == "quadratic-spline"
    assert manifest["random_seed"] == 7
    assert len(manifest["state"]["training"]["epochs"]) == 15
    assert manifest["state"]["sequential_inverse"] is False


def _damage(path, edit):
    manifest = json.loads((path / "manifest.json").read_text())
    edit(manifest)
    (path / "manifest.json").write_text(json.dumps(manifest))


def test_newer_schema_is_refused(fitted_combat, tmp_path):
    path = fitted_combat.save(tmp_path / "model")
    _damage(path, lambda m: m.update(schema_version=SCHEMA_VERSION + 1))
    with pytest.raises(ModelFileError, match=f"schema version {SCHEMA_VERSION + 1}.*upgrade bidsharmony"):
        load_harmonizer(path)


def test_corrupted_manifest(fitted_combat, tmp_path):
    path = fitted_combat.save(tmp_path / "model")
    (path / "manifest.json").write_text((path / "manifest.json").read_text()[:-40])
    with pytest.raises(ModelFileError, match="corrupted"):
        load_harmonizer(path)


@pytest.mark.parametrize("model_fixture", MODELS)
def test_corrupted_weights(model_fixture, tmp_path, request):
    path = request.getfixturevalue(model_fixture).save(tmp_path / "model")
    weights = path / "weights.npz"
    data = bytearray(weights.read_bytes())
    data[len(data) // 2] ^= 0xFF
    weights.write_bytes(bytes(data))
    with pytest.raises(ModelFileError, match="corrupted.*checksum"):
        load_harmonizer(path)
    weights.unlink()
    with pytest.raises(ModelFileError, match="weights.npz is missing"):
        load_harmonizer(path)


def test_inconsistent_weights_are_reported(fitted_flow, tmp_path):
    """A weights file that matches its checksum but not the graph (e.g. edited by hand)."""
    path = fitted_flow.save(tmp_path / "model")
    _damage(path, lambda m: m["state"]["graph"][-1].update(flow="affine"))
    with pytest.raises(ModelFileError, match="corrupted or inconsistent"):
        load_harmonizer(path)


def test_missing_folder_and_wrong_class(fitted_flow, tmp_path):
    with pytest.raises(ModelFileError, match="does not exist"):
        load_harmonizer(tmp_path / "nowhere")
    (tmp_path / "empty").mkdir()
    with pytest.raises(ModelFileError, match="no manifest.json"):
        load_harmonizer(tmp_path / "empty")
    path = fitted_flow.save(tmp_path / "flow")
    with pytest.raises(ModelFileError, match="'flow-scm' model"):
        ComBat.load(path)
    assert isinstance(Harmonizer.load(path / "manifest.json"), Harmonizer)


def test_save_refuses_foreign_folders(fitted_combat, tmp_path):
    folder = tmp_path / "data"
    folder.mkdir()
    (folder / "participants.tsv").write_text("participant_id\n")
    with pytest.raises(ModelFileError, match="holds other files"):
        fitted_combat.save(folder)
    fitted_combat.save(tmp_path / "model")
    with pytest.raises(ModelFileError, match="already exists"):
        fitted_combat.save(tmp_path / "model", overwrite=False)


@pytest.mark.parametrize("model_fixture", MODELS)
def test_new_site_is_a_clear_error(model_fixture, small_table, request):
    model = request.getfixturevalue(model_fixture)
    covariates = small_table.covariates.iloc[:3].copy()
    covariates["site"] = "siteQ"
    with pytest.raises(UnknownSiteError) as error:
        model.transform(small_table.features.iloc[:3], covariates)
    message = str(error.value)
    assert "'siteQ'" in message and "siteA" in message and "refit" in message and "\n" not in message
    # only the flow-SCM can learn a new site with the fit frozen, and only it says so
    assert ("adapt_new_sites" in message) == model.supports_site_adaptation
    if not model.supports_site_adaptation:
        with pytest.raises(HarmonizerParameterError, match="cannot adapt.*refit"):
            model.adapt_new_sites(small_table.features.iloc[:3], covariates)


@pytest.mark.parametrize("model_fixture", MODELS)
def test_missing_or_renamed_feature_is_a_clear_error(model_fixture, small_table, request):
    model = request.getfixturevalue(model_fixture)
    with pytest.raises(FeatureMismatchError, match="missing feature\\(s\\) 'roi-004'"):
        model.transform(small_table.features.drop(columns="roi-004"), small_table.covariates)
    renamed = small_table.features.rename(columns={"roi-002": "roi_002"})
    with pytest.raises(FeatureMismatchError, match="rename 'roi_002' -> 'roi-002'"):
        model.transform(renamed, small_table.covariates)


@pytest.mark.parametrize("model_fixture", MODELS)
def test_nan_at_transform_is_a_clear_error(model_fixture, small_table, request):
    model = request.getfixturevalue(model_fixture)
    features = small_table.features.copy()
    features.iloc[0, 0] = np.nan
    with pytest.raises(FeatureError, match="NaN"):
        model.transform(features, small_table.covariates)


def test_unfitted_use_is_a_clear_error(tmp_path, small_table):
    with pytest.raises(NotFittedError, match="call fit"):
        ComBat().transform(small_table.features, small_table.covariates)
    with pytest.raises(NotFittedError):
        ComBat().save(tmp_path / "x")


def test_params_roundtrip():
    model = get_harmonizer("combat-gam", reference_site="siteB", age_bounds=(10, 90), random_seed=4)
    params = model.get_params()
    assert params["age_bounds"] == [10.0, 90.0] and params["random_seed"] == 4
    assert type(model)(**params).get_params() == params
    assert "ComBatGAM(" in repr(model)


def test_unknown_sex_code_at_transform(fitted_combat, small_table):
    covariates = small_table.covariates.iloc[:2].copy()
    covariates["sex"] = ["M", "U"]
    with pytest.raises(Exception) as error:
        fitted_combat.transform(small_table.features.iloc[:2], covariates)
    assert "unknown sex code(s) 'U'" in str(error.value)


def test_fit_transform_equals_fit_then_transform(small_table):
    a = ComBat(min_subjects_per_site=5).fit_transform(small_table.features, small_table.covariates)
    b = ComBat(min_subjects_per_site=5).fit(small_table.features, small_table.covariates).transform(
        small_table.features, small_table.covariates)
    pd.testing.assert_frame_equal(a, b)


def test_feature_units_are_kept_and_recorded(small_table, tmp_path):
    features = small_table.features.copy()
    features.attrs["units"] = {column: "mm^3" for column in features.columns}
    model = ComBat(min_subjects_per_site=5).fit(features, small_table.covariates)
    out = model.transform(features, small_table.covariates)
    assert out.attrs["units"]["roi-001"] == "mm^3"
    manifest = json.loads((model.save(tmp_path / "m") / "manifest.json").read_text())
    assert manifest["feature_units"] == {column: "mm^3" for column in features.columns}
    assert load_harmonizer(tmp_path / "m").feature_units_ == manifest["feature_units"]
