"""Flow-SCM counterfactual harmonization, checked against the synthetic ground truth.

Numbers quoted in the docstrings were measured on this machine with the fixtures' settings
(FAST_FLOW: 30 epochs, learning rate 3e-3, context 32-32/16, 6 bins; 500 scans per site).
"""

import multiprocessing
import warnings

import numpy as np
import pandas as pd
import pytest

from bidsharmony.datasets.tabular import (
    error_to_reference,
    make_feature_table,
    residualize,
    site_prediction_accuracy,
)
from bidsharmony.harmonize import get_harmonizer, load_harmonizer
from bidsharmony.harmonize.errors import (
    CovariateRangeWarning,
    HarmonizerParameterError,
    UnknownSiteError,
)
from bidsharmony.features.flow_scm import FlowSCMHarmonizer

from harmonize_helpers import FAST_FLOW, fit_quietly, gaussian_baseline_log_prob

# held-out scans include a few ages just outside the training range: expected, reported elsewhere
pytestmark = pytest.mark.filterwarnings("ignore::bidsharmony.harmonize.errors.CovariateRangeWarning")


def _relative_error(a, b):
    return float(np.max(np.abs(np.asarray(a) - np.asarray(b)) / np.abs(np.asarray(b))))


# ---------------------------------------------------------------------- exactness
def test_do_own_site_reconstructs_the_input(fitted_flow, small_table):
    """Abduction then prediction at the observed site: max relative error < 1e-4 (~1e-15)."""
    same = fitted_flow.counterfactual(small_table.features, small_table.covariates,
                                      do={"site": small_table.covariates.site.to_numpy()})
    assert _relative_error(same, small_table.features) < 1e-4
    assert list(same.columns) == list(small_table.features.columns)


def test_reference_rows_are_returned_unchanged(fitted_flow, small_table):
    out = fitted_flow.transform(small_table.features, small_table.covariates)
    at_reference = (small_table.covariates.site == fitted_flow.reference_site_).to_numpy()
    assert np.array_equal(out[at_reference].to_numpy(), small_table.features[at_reference].to_numpy())
    assert not np.allclose(out[~at_reference].to_numpy(), small_table.features[~at_reference].to_numpy())


def test_site_labels_match_as_stripped_text_in_any_row_order(fitted_flow, small_table):
    """Each row's site is looked up through its distinct label: padded, categorical labels in
    a shuffled row order harmonize every row as the clean table does."""
    features, covariates = small_table.features, small_table.covariates
    expected = fitted_flow.transform(features, covariates)
    order = np.random.default_rng(0).permutation(len(features))
    shuffled = covariates.iloc[order].copy()
    shuffled["site"] = (" " + shuffled["site"].astype(str) + "  ").astype("category")
    out = fitted_flow.transform(features.iloc[order], shuffled)
    assert np.allclose(out.to_numpy(), expected.iloc[order].to_numpy(), rtol=1e-12, atol=0)
    at_reference = (covariates.site.iloc[order] == fitted_flow.reference_site_).to_numpy()
    assert np.array_equal(out[at_reference].to_numpy(), features.iloc[order][at_reference].to_numpy())


def _transform_in_forked_child(model, features, covariates, queue):
    queue.put(model.transform(features, covariates))


@pytest.mark.determinism
def test_threaded_transform_is_bit_identical_and_survives_fork(fitted_flow, small_table):
    """Chunks run in reused worker threads: same numbers as one thread, and a process forked
    after a threaded transform (which inherits the pool but not its threads) starts its own."""
    features, covariates = small_table.features, small_table.covariates
    single = fitted_flow.transform(features, covariates)
    previous = fitted_flow.num_threads
    fitted_flow.num_threads = 2
    try:
        threaded = fitted_flow.transform(features, covariates)
        again = fitted_flow.transform(features, covariates)
        context = multiprocessing.get_context("fork")
        queue = context.Queue()
        child = context.Process(target=_transform_in_forked_child, args=(fitted_flow, features, covariates, queue),
                                daemon=True)
        child.start()
        try:
            forked = queue.get(timeout=120)  # a pool without threads would never answer
        finally:
            child.join(30)
            if child.is_alive():
                child.terminate()
    finally:
        fitted_flow.num_threads = previous
    assert np.array_equal(threaded.to_numpy(), single.to_numpy())
    assert np.array_equal(again.to_numpy(), single.to_numpy())
    assert child.exitcode == 0 and np.array_equal(forked.to_numpy(), single.to_numpy())


@pytest.mark.parametrize("architecture", ["elementwise", "autoregressive"])
@pytest.mark.parametrize("flow", ["affine", "linear-spline", "quadratic-spline"])
def test_each_flow_trains_and_inverts(small_table, flow, architecture):
    model = fit_quietly(FlowSCMHarmonizer(flow=flow, architecture=architecture, num_layers=2,
                                          **{**FAST_FLOW, "epochs": 3}),
                        small_table.features, small_table.covariates)
    out = model.transform(small_table.features, small_table.covariates)
    assert np.isfinite(out.to_numpy()).all()
    same = model.counterfactual(small_table.features, small_table.covariates,
                                do={"site": small_table.covariates.site.to_numpy()})
    assert _relative_error(same, small_table.features) < 1e-4
    assert np.isfinite(model.log_prob(small_table.features, small_table.covariates, joint=True)).all()


def test_same_seed_same_model_other_seed_other_model(small_table):
    """Without a validation split (the last epoch is kept): with one, 4 epochs may not beat the
    closed-form initialisation, which does not depend on the seed, and both seeds keep it."""
    settings = {**FAST_FLOW, "epochs": 4, "validation_fraction": 0.0}
    first = fit_quietly(FlowSCMHarmonizer(random_seed=3, **settings), small_table.features, small_table.covariates)
    second = fit_quietly(FlowSCMHarmonizer(random_seed=3, **settings), small_table.features, small_table.covariates)
    third = fit_quietly(FlowSCMHarmonizer(random_seed=4, **settings), small_table.features, small_table.covariates)
    a, b, c = (m.transform(small_table.features, small_table.covariates).to_numpy() for m in (first, second, third))
    assert np.array_equal(a, b)
    assert not np.array_equal(a, c)


# ------------------------------------------------------------------- against truth
@pytest.mark.comparison
def test_held_out_likelihood_is_no_worse_than_a_gaussian_baseline(nonlinear_table, nonlinear_split, nonlinear_fits):
    """Held-out log-density per scan: flow-SCM -24.14 vs linear-Gaussian -24.35 nats here. The
    gap was 0.004-0.32 nats on generator seeds 10-17 (model seeds 1-3 on seed 11: 0.18-0.21), so
    what is asserted is "no worse than the Gaussian" (within 0.02 nats), not a margin."""
    train, test = nonlinear_split
    table = nonlinear_table
    flow_lp = nonlinear_fits["flow-scm"].log_prob(table.features[test], table.covariates[test])
    assert np.isfinite(flow_lp).all()
    baseline = gaussian_baseline_log_prob(table.features[train], table.covariates[train],
                                          table.features[test], table.covariates[test])
    assert flow_lp.mean() > baseline.mean() - 0.02


@pytest.mark.comparison
def test_traveling_subjects_move_to_the_reference_truth(nonlinear_table, nonlinear_split, nonlinear_fits):
    """Traveling subjects (never seen in fit): error to the reference-site truth drops from 5.5 %
    to 1.5 % (asserted > 2.5x), and the spread of one subject across sites from 0.042 to 0.014
    (log units; asserted > 2.5x). Generator seeds 10-17 and model seeds 1-3: 3.4-9.6x and
    2.8-7.5x."""
    table = nonlinear_table
    traveling = table.hidden["traveling"].to_numpy()
    features, covariates = table.features[traveling], table.covariates[traveling]
    harmonized = nonlinear_fits["flow-scm"].transform(features, covariates)
    other = (covariates.site != table.reference_site).to_numpy()
    before = error_to_reference(features, table.truth_reference, other)
    after = error_to_reference(harmonized, table.truth_reference, other)
    assert after < before / 2.5, (before, after)

    def spread(frame):
        subject = table.hidden.loc[frame.index, "subject_id"].to_numpy()
        return np.log(frame).groupby(subject).std().to_numpy().mean()

    assert spread(harmonized) < spread(features) / 2.5


@pytest.mark.comparison
def test_within_reach_of_combat_on_nonlinear_site_effects(nonlinear_table, nonlinear_split, nonlinear_fits):
    """Held-out scans of the non-reference sites, site maps with skew/tail distortions. Which of
    flow-SCM and ComBat is better depends on the generated table at 400 training scans per site,
    so the test asserts only what held on every table tried (generator seeds 10-17, model seed 1,
    plus model seeds 2-3 on seed 11): flow-SCM's error is below a third of the raw error (ratio
    0.09-0.26) and at most 1.3x the better ComBat variant's (0.57-1.18; this fixture, seed 11:
    1.41 % vs 1.72 %). The comparison itself, mean ± sd over seeds, is in BENCHMARKS.md
    (`benchmarks/bench_test_claims.py`)."""
    _, test = nonlinear_split
    table = nonlinear_table
    features, covariates = table.features[test], table.covariates[test]
    other = (covariates.site != table.reference_site).to_numpy()
    errors = {name: error_to_reference(model.transform(features, covariates), table.truth_reference, other)
              for name, model in nonlinear_fits.items()}
    assert errors["flow-scm"] < error_to_reference(features, table.truth_reference, other) / 3
    assert errors["flow-scm"] <= 1.3 * min(errors["combat"], errors["combat-gam"]), errors


@pytest.mark.comparison
def test_site_becomes_unpredictable_and_diagnosis_is_kept(nonlinear_table, nonlinear_fits):
    """Site prediction (age/sex residualised) 0.51 -> 0.29 (asserted < chance + 0.05); the hidden
    diagnosis effect (Cohen's d) stays within 0.1 of the truth for every feature. On generator
    seeds 10-17: 0.29-0.35 after harmonization, Cohen's d within 0.003-0.021 of the truth."""
    table = nonlinear_table
    harmonized = nonlinear_fits["flow-scm"].transform(table.features, table.covariates)
    chance = 1 / 3
    assert site_prediction_accuracy(table.features, table.covariates) > chance + 0.1
    assert site_prediction_accuracy(harmonized, table.covariates) < chance + 0.05

    def effect_size(frame):
        residuals = residualize(frame, table.covariates)
        sick = table.hidden["diagnosis"].to_numpy() == 1
        return (residuals[sick].mean(0) - residuals[~sick].mean(0)) / residuals.std(0)

    assert np.abs(effect_size(harmonized) - effect_size(table.truth_reference)).max() < 0.1


@pytest.mark.comparison
def test_do_age_follows_the_true_ageing_curve(nonlinear_table, nonlinear_split, nonlinear_fits):
    """do(age = age + 15): the mean log-volume change per feature matches the generator's
    quadratic ageing curve within 0.03 (true changes -0.04 to -0.057 here; largest deviation
    0.010 here and 0.007-0.023 on generator seeds 10-17). Answering "no change" would miss by
    more than 0.03, which the test checks too."""
    _, test = nonlinear_split
    table = nonlinear_table
    features, covariates = table.features[test], table.covariates[test]
    older = nonlinear_fits["flow-scm"].counterfactual(features, covariates,
                                                      do={"age": covariates.age.to_numpy() + 15})
    age = covariates.age.to_numpy()[:, None]
    curvature = table.parameters["age_curvature"]
    expected = curvature * (((age + 15 - 20) / 70) ** 2 - ((age - 20) / 70) ** 2)
    observed = np.log(older.to_numpy() / features.to_numpy())
    assert np.abs(expected.mean(0)).max() > 0.03
    assert np.abs(observed.mean(0) - expected.mean(0)).max() < 0.03


# ------------------------------------------------------------------ other queries
def test_sampling_and_joint_likelihood(fitted_flow, small_table):
    features, covariates = fitted_flow.sample(200, seed=1)
    assert list(features.columns) == list(small_table.features.columns) and len(features) == 200
    assert set(covariates.site) <= set(fitted_flow.sites_) and (covariates.age > 0).all()
    assert set(covariates.sex) <= {"M", "F"} and (features.to_numpy() > 0).all()
    again, _ = fitted_flow.sample(200, seed=1)
    pd.testing.assert_frame_equal(features, again)
    conditional = fitted_flow.sample(0, covariates=small_table.covariates.iloc[:7])
    assert conditional.index.equals(small_table.covariates.index[:7])
    joint = fitted_flow.log_prob(small_table.features, small_table.covariates, joint=True)
    marginal = fitted_flow.log_prob(small_table.features, small_table.covariates)
    assert (joint < marginal).all()  # adding log p(s) + log p(t) + log p(a) < 0 (age density < 1/year)


def test_counterfactual_errors(fitted_flow, small_table):
    with pytest.raises(HarmonizerParameterError, match="cannot intervene on \\['scanner'\\]"):
        fitted_flow.counterfactual(small_table.features, small_table.covariates, do={"scanner": "x"})
    with pytest.raises(UnknownSiteError, match="siteQ"):
        fitted_flow.counterfactual(small_table.features, small_table.covariates, do={"site": "siteQ"})
    with pytest.warns(CovariateRangeWarning, match="context network"):
        fitted_flow.counterfactual(small_table.features.iloc[:3], small_table.covariates.iloc[:3],
                                   do={"age": 150.0})


def test_extra_parent_covariate_roundtrip(tmp_path):
    table = make_feature_table(40, n_sites=2, n_features=3, seed=2)
    covariates = table.covariates.copy()
    covariates["icv"] = 1400 + 100 * np.random.default_rng(0).standard_normal(len(covariates))
    covariates["smoker"] = np.random.default_rng(1).integers(0, 2, len(covariates))
    model = fit_quietly(FlowSCMHarmonizer(extra_covariates=["icv", "smoker"], **{**FAST_FLOW, "epochs": 3}),
                        table.features, covariates)
    assert model.graph_.parents("x") == ["sex", "age", "site", "icv", "smoker"]
    assert model.extra_kinds_ == {"icv": "continuous", "smoker": "binary"}
    loaded = load_harmonizer(model.save(tmp_path / "m"))
    assert np.array_equal(model.transform(table.features, covariates).to_numpy(),
                          loaded.transform(table.features, covariates).to_numpy())
    with pytest.raises(Exception, match="'icv'"):
        model.transform(table.features, table.covariates)
    _, sampled = model.sample(20)
    assert {"icv", "smoker"} <= set(sampled.columns)


def test_autoregressive_transform_is_slow_but_exact_and_float64(small_table):
    """The paper's masked autoregressive quadratic spline inverts feature by feature; float64
    avoids the NaNs nflows' masked splines produce in float32."""
    model = fit_quietly(FlowSCMHarmonizer(architecture="autoregressive", flow="quadratic-spline",
                                          **{**FAST_FLOW, "epochs": 2}),
                        small_table.features, small_table.covariates)
    assert model.manifest()["state"]["sequential_inverse"] is True
    assert all(p.dtype.is_floating_point and p.dtype.itemsize == 8 for p in model.scm_.parameters())


def test_invalid_flow_parameters():
    with pytest.raises(HarmonizerParameterError, match="flow must be one of"):
        get_harmonizer("flow-scm", flow="cubic-spline")
    with pytest.raises(HarmonizerParameterError, match="architecture"):
        get_harmonizer("flow-scm", architecture="coupling")
    with pytest.raises(HarmonizerParameterError, match="extra_covariates"):
        get_harmonizer("flow-scm", extra_covariates=["age"])
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        get_harmonizer("flow-scm", epochs=1)
