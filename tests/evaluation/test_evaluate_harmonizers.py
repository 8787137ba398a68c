"""The whole comparison in one call."""

import json
import warnings

import numpy as np
import pandas as pd
import pytest

from bidsharmony.evaluation import evaluate_harmonizers
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


def test_registered_harmonizer_by_name():
    harmonize = pytest.importorskip("bidsharmony.harmonize")
    if "combat" not in getattr(harmonize, "HARMONIZERS", ()):
        pytest.skip("ComBat is not registered in this checkout")
    features, covariates, _ = make_table(n_subjects=45, traveling=True, site_shift=3.0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # covariate-range warnings of the folds
        results = evaluate_harmonizers(features, covariates, "combat,none", n_splits=3, metrics=("site", "mmd"))
    assert results.methods == ["none", "combat"]
    summary = results.summary.set_index("method")
    assert summary.loc["none", "site_balanced_accuracy"] > 0.9
    assert summary.loc["combat", "site_balanced_accuracy"] < 0.5
