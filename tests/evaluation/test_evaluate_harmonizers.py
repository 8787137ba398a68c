"""The whole comparison in one call."""

import json
import logging
import warnings

import numpy as np
import pandas as pd
import pytest

from bidsharmony.evaluation import EvaluationUsageError, evaluate_harmonizers
from evaluation_data import MeanShift, make_table


class Broken(MeanShift):
    def fit(self, features, covariates):
        raise RuntimeError("cannot fit")


class WithLikelihood(MeanShift):
    def fit(self, features, covariates):
        super().fit(features, covariates)
        self.log_likelihood_ = -1.5
        return self

    def log_likelihood(self, features, covariates):
        return np.full(len(features), -2.0)


def test_evaluate_harmonizers_end_to_end(tmp_path):
    features, covariates, truth = make_table(n_subjects=30, traveling=True, site_shift=3.0)
    results = evaluate_harmonizers(features, covariates, {"none": None, "meanshift": MeanShift, "ll": WithLikelihood},
                                   truth=truth, n_splits=3, mlp_epochs=5)
    assert results.methods == ["none", "meanshift", "ll"] and results.raw_method == "none"
    summary = results.summary.set_index("method")
    assert "TarOnly" in summary.index
    assert summary.loc["none", "site_balanced_accuracy"] > 0.9
    assert summary.loc["meanshift", "site_balanced_accuracy"] < summary.loc["meanshift", "site_chance_upper95"] + 0.05
    assert summary.loc["meanshift", "mmd2_vs_reference"] < summary.loc["none", "mmd2_vs_reference"]
    assert summary.loc["meanshift", "icc_2_1_median"] > summary.loc["none", "icc_2_1_median"]
    assert summary.loc["meanshift", "nrmse_centered_to_truth"] < 0.5
    assert summary.loc["meanshift", "age_effect_r_vs_truth"] > 0.9
    assert summary.loc["ll", "log_likelihood_train"] == pytest.approx(-2.0)
    assert summary.loc["ll", "log_likelihood_test"] == pytest.approx(-2.0)
    assert np.isnan(summary.loc["meanshift", "log_likelihood_test"])
    assert set(results.harmonized) == {"none", "meanshift", "ll"}
    assert results.harmonized["meanshift"].index.equals(features.index)
    assert "truth" in set(results.effect_sizes["method"])
    paths = results.write_tables(tmp_path)
    assert all(p.is_file() for p in paths.values())
    data = json.loads(paths["json"].read_text())
    assert data["raw_method"] == "none" and len(data["summary"]) == 4
    tsv = pd.read_csv(paths["summary"], sep="\t")
    assert list(tsv["method"]) == ["none", "meanshift", "ll", "TarOnly"]


def test_failing_harmonizer_is_reported_or_raised():
    features, covariates, _ = make_table(n_subjects=30)
    with pytest.raises(RuntimeError):
        evaluate_harmonizers(features, covariates, {"broken": Broken}, n_splits=3, metrics=("mmd",))
    results = evaluate_harmonizers(features, covariates, {"broken": Broken, "ok": MeanShift}, n_splits=3,
                                   metrics=("site", "mmd"), on_error="warn")
    assert results.methods == ["raw", "ok"] and "broken" in results.failed
    assert any(w["code"] == "harmonizer_failed" for w in results.warnings)


class _Noisy(MeanShift):
    def fit(self, features, covariates):
        warnings.warn(f"fitted on {len(features)} rows", UserWarning, stacklevel=2)
        logging.getLogger("bidsharmony.harmonize.noisy").info("epoch 1/1 of a fold fit")
        return super().fit(features, covariates)


def test_fold_fit_warnings_are_counted_in_one_log_line(caplog):
    """Two repeats of five fold fits that each warn and log give one log line, not ten warnings."""
    features, covariates, _ = make_table(n_subjects=30)
    with warnings.catch_warnings(record=True) as escaped, caplog.at_level("INFO", logger="bidsharmony"):
        warnings.simplefilter("always")
        evaluate_harmonizers(features, covariates, {"noisy": _Noisy}, n_splits=5, n_repeats=2, metrics=("site",))
    assert not [w for w in escaped if "fitted on" in str(w.message)]
    assert not [r for r in caplog.records if "of a fold fit" in r.getMessage()]
    assert logging.getLogger("bidsharmony.harmonize").level == logging.NOTSET  # restored
    lines = [r.getMessage() for r in caplog.records if "fold fit(s) warned" in r.getMessage()]
    assert len(lines) == 1 and "noisy: 5 fold fit(s) warned UserWarning, first: fitted on" in lines[0]


def test_registered_harmonizer_by_name():
    harmonize = pytest.importorskip("bidsharmony.harmonize")
    if "combat" not in getattr(harmonize, "HARMONIZERS", ()):
        pytest.skip("ComBat is not registered in this checkout")
    features, covariates, _ = make_table(n_subjects=45, traveling=True, site_shift=3.0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # covariate-range warnings of the folds
        # ComBat models volumes on a log scale by default: shift these signed values to positive ones
        results = evaluate_harmonizers(features + 20.0, covariates, "combat,none", n_splits=3, metrics=("site", "mmd"))
    assert results.methods == ["none", "combat"]
    summary = results.summary.set_index("method")
    assert summary.loc["none", "site_balanced_accuracy"] > 0.9
    assert summary.loc["combat", "site_balanced_accuracy"] < 0.5


class WritesAgeIntoTheFeatures(MeanShift):
    """A harmonizer that 'keeps the age effect' by writing the age it is given into a feature."""

    def transform(self, features, covariates):
        out = super().transform(features, covariates)
        out.iloc[:, 0] = covariates["age"].to_numpy()
        return out


class OnlyNewRows(MeanShift):
    """Leaves the rows it was fitted on as they are and removes the site means from new rows:
    in sample it looks like no harmonization at all, out of fold like a good one."""

    def fit(self, features, covariates):
        self.seen_ = set(features.index)
        return super().fit(features, covariates)

    def transform(self, features, covariates):
        out = super().transform(features, covariates)
        seen = features.index.isin(list(self.seen_))
        out.loc[seen] = features.loc[seen]
        return out


@pytest.mark.comparison
def test_cross_site_age_error_hides_the_test_rows_age_by_default():
    """A harmonizer handed the held-out rows' true age can put it into the features; by default
    the age of held-out rows is masked (their site's training mean), so the leak is worthless.
    Table seeds 0-3, linear predictor: 0.002 years with the true age passed on vs 13-15 years
    masked (raw 14-28)."""
    features, covariates, _ = make_table(n_subjects=90, site_shift=3.0, age_slope=0.05)

    def age_error(**options):
        results = evaluate_harmonizers(features, covariates, {"leak": WritesAgeIntoTheFeatures}, n_splits=3,
                                       metrics=("cross_site",), mlp_epochs=60, predictor="linear", **options)
        return results.summary.set_index("method").loc["leak", "cross_site_age_mae"]

    leaked, masked = age_error(mask_target_in_transform=False), age_error()
    assert leaked < 1.0 and masked > 5 * leaked, (leaked, masked)


def test_the_report_shows_out_of_fold_site_predictability(tmp_path, monkeypatch):
    """In sample (fit and score on the same rows) the harmonizer above leaves the sites as
    predictable as raw; out of fold they are not. The summary and the report carry the
    out-of-fold figure."""
    monkeypatch.setenv("MPLCONFIGDIR", str(tmp_path / "mpl"))
    from bidsharmony.evaluation.site import site_predictability
    from bidsharmony.reports.group import write_group_report

    features, covariates, _ = make_table(n_subjects=60, site_shift=3.0)
    in_sample = site_predictability(OnlyNewRows().fit(features, covariates).transform(features, covariates),
                                    covariates, n_splits=3)["balanced_accuracy"]
    out_of_fold = site_predictability(features, covariates, OnlyNewRows, n_splits=3)["balanced_accuracy"]
    assert in_sample > 0.9 and out_of_fold < 0.6, (in_sample, out_of_fold)
    results = evaluate_harmonizers(features, covariates, {"only-new-rows": OnlyNewRows}, n_splits=3,
                                   metrics=("site",))
    reported = results.summary.set_index("method").loc["only-new-rows", "site_balanced_accuracy"]
    assert reported == pytest.approx(out_of_fold)
    html = write_group_report(results, tmp_path).read_text()
    assert f"<b>only-new-rows</b> {out_of_fold:.2f}" in html


class SeededMeanShift(MeanShift):
    """Records the ``random_seed`` it was fitted with."""

    seen = []

    def __init__(self, random_seed=7):
        self.random_seed = random_seed

    def get_params(self, deep=True):
        return {"random_seed": self.random_seed}

    def set_params(self, **params):
        self.random_seed = params["random_seed"]
        return self

    def fit(self, features, covariates):
        SeededMeanShift.seen.append(self.random_seed)
        return super().fit(features, covariates)


def test_repeats_draw_new_folds_and_seeds_and_pool_every_fold(monkeypatch):
    monkeypatch.setattr(SeededMeanShift, "seen", [])
    features, covariates, _ = make_table(n_subjects=30, site_shift=3.0)
    once = evaluate_harmonizers(features, covariates, {"m": SeededMeanShift}, n_splits=3, metrics=("site",))
    assert SeededMeanShift.seen == [7, 7, 7]
    SeededMeanShift.seen.clear()
    results = evaluate_harmonizers(features, covariates, {"m": SeededMeanShift}, n_splits=3, metrics=("site",),
                                   n_repeats=3, mlp_epochs=5)
    assert SeededMeanShift.seen == [7] * 3 + [8] * 3 + [9] * 3
    folds = results.site_predictability_folds
    assert sorted(folds.groupby("method").size()) == [9, 9]
    assert folds.groupby(["method", "repeat"]).size().eq(3).all()
    row = results.site_predictability.set_index("method").loc["raw"]
    raw_folds = folds[folds["method"] == "raw"]["balanced_accuracy"]
    assert row["n_folds"] == 9 and row["n_repeats"] == 3
    assert row["balanced_accuracy_sd"] == pytest.approx(raw_folds.std())
    assert results.summary.set_index("method").loc["raw", "site_balanced_accuracy_sd"] == pytest.approx(raw_folds.std())
    # the first repeat is the single evaluation; the later ones draw other folds
    first = folds[(folds["method"] == "raw") & (folds["repeat"] == 0)]["balanced_accuracy"].to_numpy()
    np.testing.assert_allclose(first, once.site_predictability_folds.query("method == 'raw'")["balanced_accuracy"])
    assert results.config["seeds"] == [0, 1, 2]
    with pytest.raises(EvaluationUsageError, match="n_repeats"):
        evaluate_harmonizers(features, covariates, {"m": MeanShift}, n_repeats=0)


def test_cross_site_error_gets_an_sd_over_folds_and_repeats():
    features, covariates, _ = make_table(n_subjects=30, site_shift=3.0)
    results = evaluate_harmonizers(features, covariates, {"m": MeanShift}, n_splits=3, metrics=("cross_site",),
                                   predictor="linear", n_repeats=2)
    per_fold = results.cross_site_folds
    off = per_fold[(per_fold["source_site"] != per_fold["target_site"]) & (per_fold["method"] == "m")
                   & (per_fold["task"] == "age") & (per_fold["metric"] == "mae")]
    expected = off.groupby(["repeat", "fold"])["value"].mean()
    assert len(expected) == 6
    summary = results.summary.set_index("method")
    assert summary.loc["m", "cross_site_age_mae"] == pytest.approx(expected.mean())
    assert summary.loc["m", "cross_site_age_mae_sd"] == pytest.approx(expected.std())
