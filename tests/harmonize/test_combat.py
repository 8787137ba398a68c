"""ComBat and ComBat-GAM: same numbers as neuroHarmonize, none of its pitfalls, known truth."""

import warnings

import numpy as np
import pandas as pd
import pytest

from bidsharmony.datasets.tabular import error_to_reference, site_prediction_accuracy
from bidsharmony.features.combat import ComBat, ComBatGAM, bspline_basis
from bidsharmony.harmonize.errors import CovariateRangeError, CovariateRangeWarning

from harmonize_helpers import covariate_effects, fit_quietly


def _neuroharmonize_covars(table):
    return pd.DataFrame({"SITE": table.covariates.site.to_numpy(),
                         "sex": (table.covariates.sex == "M").to_numpy(float),
                         "age": table.covariates.age.to_numpy()})


@pytest.mark.parametrize("cls, smooth", [(ComBat, []), (ComBatGAM, ["age"])])
def test_matches_neuroharmonize(small_table, cls, smooth):
    from neuroHarmonize import harmonizationApply, harmonizationLearn

    ours = fit_quietly(cls(reference_site="siteB", min_subjects_per_site=5, random_seed=1, log_features=False),
                       small_table.features, small_table.covariates)
    covars = _neuroharmonize_covars(small_table)
    data = small_table.features.to_numpy()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        model, learned = harmonizationLearn(data, covars, smooth_terms=smooth, ref_batch="siteB", seed=1)
        applied = harmonizationApply(data, covars, model)
    harmonized = ours.transform(small_table.features, small_table.covariates).to_numpy()
    np.testing.assert_allclose(harmonized, applied, rtol=1e-7)
    np.testing.assert_allclose(harmonized, learned, rtol=1e-7)


def test_gam_basis_matches_statsmodels(small_table):
    from statsmodels.gam.api import BSplines

    age = small_table.covariates.age.to_numpy()
    splines = BSplines(age[:, None], df=10, degree=3)
    knots = splines.smoothers[0].knots
    new = np.linspace(age.min(), age.max(), 57)
    np.testing.assert_allclose(bspline_basis(new, knots, 3), splines.transform(new[:, None]), atol=1e-12)


def test_any_subset_of_sites_can_be_transformed(fitted_combat, small_table):
    full = fitted_combat.transform(small_table.features, small_table.covariates)
    one_site = (small_table.covariates.site == "siteC").to_numpy()
    part = fitted_combat.transform(small_table.features[one_site], small_table.covariates[one_site])
    pd.testing.assert_frame_equal(part, full[one_site])
    single = fitted_combat.transform(small_table.features.iloc[[5]], small_table.covariates.iloc[[5]])
    pd.testing.assert_frame_equal(single, full.iloc[[5]])


def test_reference_rows_are_unchanged(fitted_combat, small_table):
    at_reference = (small_table.covariates.site == fitted_combat.reference_site_).to_numpy()
    out = fitted_combat.transform(small_table.features, small_table.covariates)
    assert np.array_equal(out[at_reference].to_numpy(), small_table.features[at_reference].to_numpy())


def test_output_keeps_index_columns_and_order(fitted_combat, small_table):
    shuffled = small_table.features[small_table.features.columns[::-1]]
    out = fitted_combat.transform(shuffled, small_table.covariates)
    assert list(out.columns) == list(shuffled.columns) and out.index.equals(shuffled.index)
    reference = fitted_combat.transform(small_table.features, small_table.covariates)
    pd.testing.assert_frame_equal(out[reference.columns], reference)


@pytest.mark.comparison
@pytest.mark.parametrize("cls", [ComBat, ComBatGAM])
def test_removes_additive_and_multiplicative_site_effects(combat_shaped_table, cls):
    """On data whose site effects are exactly ComBat's: error to the reference-site truth drops
    >= 3x, site prediction falls to within 0.1 of chance, age/sex effects stay within 25 %."""
    table = combat_shaped_table
    other = (table.covariates.site != table.reference_site).to_numpy()
    model = fit_quietly(cls(reference_site=table.reference_site, log_features=True, min_subjects_per_site=5),
                        table.features, table.covariates)
    out = model.transform(table.features, table.covariates)
    raw_error = error_to_reference(table.features, table.truth_reference, other)
    error = error_to_reference(out, table.truth_reference, other)
    assert error < raw_error / 3, (raw_error, error)
    chance = 1 / 3
    assert site_prediction_accuracy(table.features, table.covariates) > chance + 0.3
    assert site_prediction_accuracy(out, table.covariates) < chance + 0.1
    truth_effects = covariate_effects(table.truth_reference, table.covariates)
    kept = covariate_effects(out, table.covariates)
    raw = covariate_effects(table.features, table.covariates)
    # age/sex slopes are recovered better than from the raw data and within 25 % overall
    assert np.abs(kept - truth_effects).sum() < np.abs(raw - truth_effects).sum()
    assert np.abs(kept - truth_effects).sum() < 0.25 * np.abs(truth_effects).sum()


def test_gam_clamps_or_refuses_out_of_range_age(small_table):
    table = small_table
    model = fit_quietly(ComBatGAM(reference_site="siteA", min_subjects_per_site=5), table.features, table.covariates)
    covariates = table.covariates.iloc[:3].copy()
    covariates["age"] = [5.0, 50.0, 120.0]
    with pytest.warns(CovariateRangeWarning, match="2 row\\(s\\) have age outside.*clamped"):
        out = model.transform(table.features.iloc[:3], covariates)
    assert np.isfinite(out.to_numpy()).all()
    strict = fit_quietly(ComBatGAM(reference_site="siteA", out_of_range="error", min_subjects_per_site=5),
                         table.features, table.covariates)
    with pytest.raises(CovariateRangeError, match="age_bounds"):
        strict.transform(table.features.iloc[:3], covariates)


def test_gam_age_bounds_widen_the_spline(small_table):
    table = small_table
    model = fit_quietly(ComBatGAM(reference_site="siteA", age_bounds=(10, 100), min_subjects_per_site=5),
                        table.features, table.covariates)
    covariates = table.covariates.iloc[:2].copy()
    covariates["age"] = [12.0, 98.0]
    with warnings.catch_warnings():
        warnings.simplefilter("error", CovariateRangeWarning)
        with pytest.warns(CovariateRangeWarning):  # outside the *data* range, inside the spline
            model.transform(table.features.iloc[:2], covariates)


def test_linear_combat_extrapolates_with_a_warning(fitted_combat, small_table):
    covariates = small_table.covariates.iloc[:2].copy()
    covariates["age"] = [99.0, 50.0]
    with pytest.warns(CovariateRangeWarning, match="extrapolated linearly"):
        fitted_combat.transform(small_table.features.iloc[:2], covariates)


def test_saved_model_is_small_and_pickle_free(fitted_combat, tmp_path):
    path = fitted_combat.save(tmp_path / "combat")
    assert sorted(p.name for p in path.iterdir()) == ["manifest.json", "weights.npz"]
    with np.load(path / "weights.npz", allow_pickle=False) as arrays:
        assert set(arrays.files) == {"grand_mean", "var_pooled", "covariate_coefficients",
                                     "gamma_star", "delta_star"}
    assert (path / "weights.npz").stat().st_size < 10_000
