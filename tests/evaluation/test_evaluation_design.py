"""Design warnings."""

from bidsharmony.evaluation import age_overlap, design_warnings
from evaluation_data import make_table


def test_good_design_has_no_warnings():
    _, covariates, _ = make_table(n_subjects=120)
    assert design_warnings(covariates) == []


def test_design_problems_are_named():
    _, covariates, _ = make_table(n_subjects=60, age_ranges={"A": (20, 40), "B": (60, 80), "C": (35, 70)})
    covariates = covariates.copy()
    covariates.loc[covariates.site == "C", "sex"] = "F"
    covariates.loc[covariates.site == "C", "diagnosis"] = "CN"
    codes = {w["code"]: w for w in design_warnings(covariates, min_site_size=25)}
    assert {"small_site", "age_no_overlap", "single_sex_site", "diagnosis_missing_at_site"} <= set(codes)
    assert codes["age_no_overlap"]["sites"] == "A,B"
    assert "do not overlap" in codes["age_no_overlap"]["message"]


def test_age_overlap():
    assert age_overlap([20, 40], [60, 80]) == 0.0
    assert age_overlap([20, 80], [30, 40]) == 1.0
    assert age_overlap([20, 40], [30, 60]) == 0.5
