"""Input validation shared by all harmonizers: codings, clear errors, warnings."""

import dataclasses
import warnings

import numpy as np
import pandas as pd
import pytest

from bidsharmony.errors import BidsharmonyError
from bidsharmony.harmonize import validation
from bidsharmony.harmonize.combat import ComBat
from bidsharmony.harmonize.errors import (
    CovariateError,
    CovariateOverlapWarning,
    FeatureError,
    HarmonizerParameterError,
    NotEnoughSubjectsError,
)


@pytest.mark.parametrize("codes, expected", [
    (["M", "F", "male", "Female", " m "], [1, 0, 1, 0, 1]),
    ([0, 1, 1, 0], [0, 1, 1, 0]),
    ([1, 2, 2, 1], [1, 0, 0, 1]),
    (["1", "2"], [1, 0]),
    ([1.0, 0.0], [1, 0]),
])
def test_sex_codings_are_normalised(codes, expected):
    assert validation.normalize_sex(pd.Series(codes)).tolist() == expected


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
