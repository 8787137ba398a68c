"""Input validation shared by all harmonizers: codings, clear errors, warnings."""

import dataclasses
import json
import warnings

import numpy as np
import pandas as pd
import pytest

from bidsharmony.errors import EXIT_ERROR, BidsharmonyError
from bidsharmony.harmonize import HARMONIZERS, get_harmonizer, load_harmonizer, validation
from bidsharmony.features.combat import ComBat
from bidsharmony.harmonize.errors import (
    CovariateError,
    CovariateOverlapWarning,
    FeatureError,
    HarmonizerParameterError,
    NonPositiveOutputError,
    NotEnoughSubjectsError,
)
from harmonize_helpers import FAST_FLOW, fit_quietly


@pytest.mark.parametrize("codes, expected", [
    (["M", "F", "male", "Female", " m "], [1, 0, 1, 0, 1]),
    ([0, 1, 1, 0], [0, 1, 1, 0]),
    ([1, 2, 2, 1], [1, 0, 0, 1]),
    (["1", "2"], [1, 0]),
    ([1.0, 0.0], [1, 0]),
])
def test_sex_codings_are_normalised(codes, expected):
    assert validation.normalize_sex(pd.Series(codes)).tolist() == expected


@pytest.mark.parametrize("codes, expected", [
    (["M", "F", "male", "Female", " m "], [1, 0, 1, 0, 1]),
    ([0, 1, 1, 0], [0, 1, 1, 0]),
    ([1, 2, 2, 1], [1, 0, 0, 1]),
    (["1", "2"], [1, 0]),
])
def test_lenient_sex_reading_agrees_with_the_strict_one(codes, expected):
    """Metrics and reports read sex with :func:`validation.sex_numeric`: the same codes as the
    harmonizers, NaN (not an error) where a code is unknown or missing."""
    assert validation.sex_numeric(pd.Series(codes)).tolist() == expected
    lenient = validation.sex_numeric(pd.Series(["M", "X", None, "f"]))
    assert lenient[[0, 3]].tolist() == [1, 0] and np.isnan(lenient[[1, 2]]).all()


def test_site_labels_are_stripped_text():
    covariates = pd.DataFrame({"site": [" siteB", "siteA ", 3]})
    assert validation.site_labels(covariates).tolist() == ["siteB", "siteA", "3"]


def test_explicit_sex_mapping_overrides_auto():
    values = pd.Series([1, 2, 1])
    assert validation.normalize_sex(values, {1: "F", 2: "M"}).tolist() == [0, 1, 0]


def test_unknown_sex_code_lists_found_and_accepted_values():
    with pytest.raises(CovariateError) as error:
        validation.normalize_sex(pd.Series(["M", "F", "X", "other"]))
    message = str(error.value)
    assert "'X'" in message and "'other'" in message          # the offending codes
    assert "values found" in message and "'M'" in message      # what was found
    assert "M/F" in message and "0/1" in message               # what is accepted
    assert "\n" not in message


def test_missing_sex_is_an_error():
    with pytest.raises(CovariateError, match="missing"):
        validation.normalize_sex(pd.Series(["M", None, "F"]))


def test_site_codes_strip_labels_and_refuse_missing_sites():
    covariates = pd.DataFrame({"site": [" siteB", "siteA ", "siteB", "siteA"]}, index=list("abcd"))
    codes, labels = validation.site_codes(covariates)
    assert labels[codes].tolist() == ["siteB", "siteA", "siteB", "siteA"]
    with pytest.raises(CovariateError, match=r"'site' is missing for row\(s\) 'c'"):
        validation.site_codes(covariates.assign(site=["siteA", "siteB", np.nan, "siteA"]))


def test_site_positions_agree_with_a_lookup_of_every_row(small_table):
    features, covariates = small_table.features, small_table.covariates.copy()
    covariates["site"] = covariates["site"] + " "
    data = validation.prepare(features, covariates)
    sites = sorted(set(data.site))[::-1]  # any model order
    expected = [sites.index(site) for site in data.site]
    assert data.site_positions(sites).tolist() == expected
    unfactorized = dataclasses.replace(data, site_factors=None)
    assert unfactorized.site_positions(sites).tolist() == expected
    assert data.site_positions(sites[:1]).tolist() == [0 if s == sites[0] else -1 for s in data.site]


def test_numeric_coding_resolved_at_fit_is_reused(small_table):
    """A model fitted with 1/2 codes reads a later table holding only '1' as male."""
    covariates = small_table.covariates.copy()
    covariates["sex"] = np.where(covariates["sex"] == "M", 1, 2)
    model = ComBat(min_subjects_per_site=5).fit(small_table.features, covariates)
    assert model.sex_coding_ == "1/2"
    one_row = covariates.iloc[:1].copy()
    one_row["sex"] = 1
    assert model._prepare(small_table.features.iloc[:1], one_row, fitted=True).sex.tolist() == [1.0]


def test_age_must_be_numeric_and_positive(small_table):
    covariates = small_table.covariates.copy().astype({"age": object})
    covariates.iloc[3, covariates.columns.get_loc("age")] = "sixty"
    with pytest.raises(CovariateError, match="'age' is missing or not a number.*'sixty'"):
        ComBat(min_subjects_per_site=5).fit(small_table.features, covariates)
    covariates = small_table.covariates.copy()
    covariates.iloc[0, covariates.columns.get_loc("age")] = -1.0
    with pytest.raises(CovariateError, match="positive"):
        ComBat(min_subjects_per_site=5).fit(small_table.features, covariates)


def test_nan_features_name_column_and_rows(small_table):
    features = small_table.features.copy()
    features.iloc[2, 1] = np.nan
    with pytest.raises(FeatureError) as error:
        ComBat(min_subjects_per_site=5).fit(features, small_table.covariates)
    assert "roi-002" in str(error.value) and features.index[2] in str(error.value)
    assert "impute or drop" in str(error.value)


def test_non_numeric_feature_column(small_table):
    features = small_table.features.copy()
    features["scanner"] = "Prisma"
    with pytest.raises(FeatureError, match="non-numeric feature column.*scanner"):
        ComBat(min_subjects_per_site=5).fit(features, small_table.covariates)


def test_misaligned_tables_are_refused(small_table):
    with pytest.raises(CovariateError, match="same index"):
        ComBat(min_subjects_per_site=5).fit(small_table.features, small_table.covariates.iloc[::-1])


def test_missing_covariate_column_suggests_rename(small_table):
    covariates = small_table.covariates.rename(columns={"site": "Site"})
    with pytest.raises(CovariateError, match="'site'.*rename 'Site' -> 'site'"):
        ComBat(min_subjects_per_site=5).fit(small_table.features, covariates)


def test_minimum_subjects_per_site_is_configurable(small_table):
    with pytest.raises(NotEnoughSubjectsError, match="fewer than 100 scans.*min_subjects_per_site"):
        ComBat(min_subjects_per_site=100).fit(small_table.features, small_table.covariates)
    ComBat(min_subjects_per_site=60).fit(small_table.features, small_table.covariates)


def test_single_site_is_refused(small_table):
    mask = (small_table.covariates.site == "siteA").to_numpy()
    with pytest.raises(NotEnoughSubjectsError, match="at least two"):
        ComBat(min_subjects_per_site=5).fit(small_table.features[mask], small_table.covariates[mask])


def _two_scans_per_site(table, sites=("siteA", "siteB"), n=2):
    """``n`` scans of each site, both sexes among them, so the design is not singular."""
    covariates = table.covariates
    rows = []
    for site in sites:
        of_site = covariates[covariates.site == site]
        first = of_site.sex.iloc[0]
        rows += [of_site[of_site.sex == first].index[0], *of_site[of_site.sex != first].index[:n - 1]]
    return table.features.loc[rows], covariates.loc[rows]


@pytest.mark.parametrize("method", ["combat", "covbat", "combat-ls", "combat-gam"])
def test_fit_without_residual_degrees_of_freedom_is_refused(small_table, method):
    # 2 sites x 2 scans against site, sex and age: an exact fit whose pooled variance is rounding noise
    features, covariates = _two_scans_per_site(small_table)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        with pytest.raises(NotEnoughSubjectsError, match=f"{method}: .*4 scans|{method}: .*cannot be fitted to 4"):
            get_harmonizer(method, min_subjects_per_site=2).fit(features, covariates)


@pytest.mark.parametrize("method", ["combat", "covbat", "combat-ls"])
def test_one_residual_degree_of_freedom_fits(small_table, method):
    features, covariates = _two_scans_per_site(small_table)
    extra = small_table.covariates.index.difference(covariates.index)[:1]
    features = pd.concat([features, small_table.features.loc[extra]])
    covariates = pd.concat([covariates, small_table.covariates.loc[extra]])
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        harmonized = get_harmonizer(method, min_subjects_per_site=2).fit_transform(features, covariates)
    assert np.isfinite(harmonized.to_numpy()).all()


def test_poor_age_overlap_warns(small_table):
    covariates = small_table.covariates.copy()
    covariates.loc[covariates.site == "siteB", "age"] = 95.0 + np.arange((covariates.site == "siteB").sum()) / 10
    with pytest.warns(CovariateOverlapWarning, match="siteB.*overlap"):
        ComBat(reference_site="siteA", min_subjects_per_site=5).fit(small_table.features, covariates)


def test_bad_parameters_raise_usage_errors():
    with pytest.raises(HarmonizerParameterError):
        ComBat(min_subjects_per_site=0)
    with pytest.raises(HarmonizerParameterError):
        ComBat(sex_coding="binary")


def test_all_errors_are_bidsharmony_errors():
    for error in (CovariateError, FeatureError, NotEnoughSubjectsError, HarmonizerParameterError):
        assert issubclass(error, BidsharmonyError)


def test_reference_site_must_exist(small_table):
    with pytest.raises(HarmonizerParameterError, match="siteZ.*siteA, siteB, siteC"):
        ComBat(reference_site="siteZ", min_subjects_per_site=5).fit(small_table.features, small_table.covariates)


def test_good_data_raises_no_warning(small_table):
    with warnings.catch_warnings():
        warnings.simplefilter("error", CovariateOverlapWarning)
        mask = (small_table.covariates.site != "siteC").to_numpy()
        ComBat(reference_site="siteA", min_subjects_per_site=5).fit(
            small_table.features[mask], small_table.covariates[mask])


# ------------------------------------------------------------------ volumes stay positive
#: quick settings of each table harmonizer for the tiny-volume table
_QUICK = {"flow-scm": dict(FAST_FLOW, epochs=20),
          "equivariant-pooling": dict(epochs_stage1=2, epochs_stage2=2, latent_dim=4)}


@pytest.fixture(scope="module")
def tiny_volume_table():
    """3 sites x 40 scans: a brain-sized volume and a tiny one (a few mm³ at the reference site)
    that siteB reads ~8x larger plus 30 mm³ and siteC ~3x larger, so that harmonizing to siteA
    subtracts far more than the smallest volumes hold. On the raw scale ComBat maps a siteC
    scan below zero (checked below)."""
    rng = np.random.default_rng(0)
    n = 40
    sites = np.repeat(["siteA", "siteB", "siteC"], n)
    age = rng.uniform(20, 80, 3 * n)
    big = 5000 * np.exp(0.1 * rng.standard_normal(3 * n) - 0.003 * (age - 50))
    tiny = np.exp(np.log(2.0) + 0.6 * rng.standard_normal(3 * n))
    tiny = (tiny * np.select([sites == "siteB", sites == "siteC"], [8.0, 3.0], 1.0)
            + np.where(sites == "siteB", 30.0, 0.0))
    index = pd.Index([f"sub-{i:03d}" for i in range(3 * n)])
    features = pd.DataFrame({"big": big, "tiny": tiny}, index=index)
    covariates = pd.DataFrame({"site": sites, "age": age, "sex": rng.choice(["F", "M"], 3 * n)}, index=index)
    return features, covariates


def test_table_harmonizers_model_log_volumes_by_default():
    for name in HARMONIZERS:
        assert get_harmonizer(name).log_features is True, name


@pytest.mark.parametrize("name", HARMONIZERS)
def test_no_table_harmonizer_writes_a_non_positive_volume(name, tiny_volume_table):
    features, covariates = tiny_volume_table
    settings = {"min_subjects_per_site": 5, **_QUICK.get(name, {})}
    harmonizer = fit_quietly(get_harmonizer(name, reference_site="siteA", **settings), features, covariates)
    out = harmonizer.transform(features, covariates)
    if getattr(harmonizer, "output_kind", "features") == "representation":
        # equivariant pooling returns latent coordinates, not volumes: signed by design, never
        # taken for the input's features (other columns, declared in attrs and the manifest)
        assert out.attrs["output_kind"] == "representation" and not set(out.columns) & set(features.columns)
        return
    assert list(out.columns) == ["big", "tiny"]
    assert (out.to_numpy() > 0).all(), out.min()
    assert out.loc[covariates.site != "siteA", "tiny"].max() < features["tiny"].max() / 2  # it did harmonize


def test_raw_scale_combat_refuses_rather_than_writes_a_negative_volume(tiny_volume_table, tmp_path):
    features, covariates = tiny_volume_table
    model = fit_quietly(ComBat(reference_site="siteA", min_subjects_per_site=5, log_features=False),
                        features, covariates)
    with pytest.raises(NonPositiveOutputError) as error:
        model.transform(features, covariates)
    message = str(error.value)
    assert "'tiny' at row 'sub-" in message and "'big'" not in message
    assert "log_features=True" in message and "\n" not in message
    assert error.value.exit_code == EXIT_ERROR
    # the saved model knows its volume columns (manifest) and refuses the same way once loaded
    model.save(tmp_path / "combat")
    assert json.loads((tmp_path / "combat" / "manifest.json").read_text())["positive_features"] == ["big", "tiny"]
    with pytest.raises(NonPositiveOutputError, match="'tiny' at row"):
        load_harmonizer(tmp_path / "combat").transform(features, covariates)


def test_a_model_saved_without_its_volume_columns_judges_the_rows_given(tiny_volume_table, tmp_path):
    features, covariates = tiny_volume_table
    model = fit_quietly(ComBat(reference_site="siteA", min_subjects_per_site=5, log_features=False),
                        features, covariates)
    model.save(tmp_path / "old")
    manifest_path = tmp_path / "old" / "manifest.json"
    manifest = json.loads(manifest_path.read_text())
    del manifest["positive_features"]  # as written before the key existed
    manifest_path.write_text(json.dumps(manifest))
    with pytest.raises(NonPositiveOutputError, match="'tiny' at row"):
        load_harmonizer(tmp_path / "old").transform(features, covariates)


def test_signed_features_stay_allowed_on_the_raw_scale(tiny_volume_table):
    """A feature that is not a volume (negative values at fit) is never judged as one."""
    features, covariates = tiny_volume_table
    signed = features.assign(asymmetry=np.linspace(-1.0, 1.0, len(features)))
    out = fit_quietly(ComBat(reference_site="siteA", min_subjects_per_site=5, log_features=False),
                      signed[["big", "asymmetry"]], covariates).transform(signed[["big", "asymmetry"]], covariates)
    assert (out["asymmetry"] < 0).any() and (out["big"] > 0).all()


def test_non_positive_volume_names_row_column_value_and_fix(small_table):
    features = small_table.features.copy()
    features.iloc[4, 2] = -12.5
    features.iloc[7, 0] = 0.0
    with pytest.raises(FeatureError) as error:
        ComBat(min_subjects_per_site=5).fit(features, small_table.covariates)
    message = str(error.value)
    assert "2 feature value(s) <= 0" in message
    assert f"'roi-003' at row {features.index[4]!r} (-12.5)" in message
    assert f"'roi-001' at row {features.index[7]!r} (0)" in message
    assert "log_features=False" in message and "--harmonizer-param log_features=false" in message
    assert "\n" not in message


def test_non_numeric_feature_names_a_row_and_its_value(small_table):
    features = small_table.features.copy().astype({"roi-002": object})
    features.iloc[5, 1] = "12,5"
    with pytest.raises(FeatureError) as error:
        ComBat(min_subjects_per_site=5).fit(features, small_table.covariates)
    message = str(error.value)
    assert f"'roi-002' at row {features.index[5]!r}: '12,5'" in message and "drop the column" in message


def test_a_failed_brain_mask_is_reported_but_fitted(small_table):
    """One scan with a feature 2.5x its site's usual size (a brain mask holding the skull)
    gets a FeatureOutlierWarning naming it; the clean table gets none."""
    from bidsharmony.harmonize.errors import FeatureOutlierWarning

    with warnings.catch_warnings():
        warnings.simplefilter("error", FeatureOutlierWarning)
        ComBat(reference_site="siteA", min_subjects_per_site=5).fit(small_table.features, small_table.covariates)
    features = small_table.features.copy()
    label, column = features.index[7], features.columns[0]
    features.loc[label, column] *= 2.5
    with pytest.warns(FeatureOutlierWarning, match=f"{label} {column}"):
        ComBat(reference_site="siteA", min_subjects_per_site=5).fit(features, small_table.covariates)
