"""A harmonized row depends on the model, that row and the seed — not on how it was run.

Every table harmonizer is applied to one table whole, row by row, shuffled, and (where it
has threads) with 1 and 2 threads; the results must be bit-identical. Flow-SCM's transform
chunks are cut to 256 rows here (2,048 by default) so that the 690-row table spans several
chunks, the last one padded. What makes this hold is in :mod:`bidsharmony.utils.rowwise`.
"""

from __future__ import annotations

import numpy as np
import pytest

from bidsharmony.datasets.tabular import make_feature_table
from bidsharmony.harmonize import HARMONIZERS, get_harmonizer
from harmonize_helpers import FAST_FLOW, fit_quietly

pytestmark = pytest.mark.determinism

TINY = {
    "flow-scm": {**FAST_FLOW, "epochs": 3},
    "equivariant-pooling": {"epochs_stage1": 3, "epochs_stage2": 3, "min_subjects_per_site": 5},
}
FLOW_VARIANTS = [("quadratic-spline", "elementwise"), ("linear-spline", "elementwise"),
                 ("affine", "elementwise"), ("quadratic-spline", "autoregressive")]


@pytest.fixture(autouse=True)
def small_chunks(monkeypatch):
    monkeypatch.setattr("bidsharmony.features.flow_scm.harmonizer._CHUNK_ROWS", 256)


@pytest.fixture(scope="module")
def table():
    """3 sites x 230 scans (690 rows: three flow-SCM chunks of 256, the last one padded)."""
    return make_feature_table(230, n_sites=3, n_features=5, seed=8)


def _rows_to_check(n: int) -> np.ndarray:
    """First and last rows of the table (chunk edges, padding) and some in between."""
    middle = np.random.default_rng(0).choice(np.arange(20, n - 20), size=20, replace=False)
    return np.concatenate([np.arange(10), middle, np.arange(n - 10, n)])


def _one_by_one(function, table, rows) -> np.ndarray:
    return np.vstack([np.asarray(function(table.features.iloc[[i]], table.covariates.iloc[[i]])) for i in rows])


def _assert_independent_of_execution(harmonizer, function, table):
    """``function(features, covariates)`` whole == row by row == shuffled == on 2 threads."""
    whole = np.asarray(function(table.features, table.covariates))
    rows = _rows_to_check(len(table.features))
    assert np.array_equal(_one_by_one(function, table, rows), whole[rows])
    order = np.random.default_rng(1).permutation(len(table.features))
    shuffled = np.asarray(function(table.features.iloc[order], table.covariates.iloc[order]))
    assert np.array_equal(shuffled, whole[order])
    if hasattr(harmonizer, "num_threads"):
        previous, harmonizer.num_threads = harmonizer.num_threads, 2
        try:
            threaded = np.asarray(function(table.features, table.covariates))
        finally:
            harmonizer.num_threads = previous
        assert np.array_equal(threaded, whole)


@pytest.mark.parametrize("name", HARMONIZERS)
def test_transform_of_a_row_depends_on_that_row_only(name, table):
    harmonizer = fit_quietly(get_harmonizer(name, reference_site=table.reference_site, random_seed=0,
                                            **TINY.get(name, {})), table.features, table.covariates)
    _assert_independent_of_execution(harmonizer, harmonizer.transform, table)


@pytest.mark.parametrize("flow, architecture", FLOW_VARIANTS)
def test_flow_scm_counterfactuals_and_densities_depend_on_the_row_only(flow, architecture, table):
    harmonizer = fit_quietly(get_harmonizer("flow-scm", reference_site=table.reference_site, random_seed=0,
                                            flow=flow, architecture=architecture, **TINY["flow-scm"]),
                             table.features, table.covariates)
    _assert_independent_of_execution(harmonizer, harmonizer.transform, table)
    _assert_independent_of_execution(
        harmonizer, lambda f, c: harmonizer.counterfactual(f, c, do={"age": 60.0, "sex": "F"}), table)
    _assert_independent_of_execution(
        harmonizer, lambda f, c: harmonizer.log_prob(f, c, joint=True).to_numpy()[:, None], table)


def test_flow_scm_with_many_sites_depends_on_the_row_only():
    """12 sites: which site columns a chunk's intervention changes depends on the chunk's rows."""
    table = make_feature_table(40, n_sites=12, n_features=4, seed=5)
    harmonizer = fit_quietly(get_harmonizer("flow-scm", reference_site=table.reference_site, random_seed=0,
                                            **TINY["flow-scm"]), table.features, table.covariates)
    _assert_independent_of_execution(harmonizer, harmonizer.transform, table)


@pytest.mark.parametrize("name", HARMONIZERS)
def test_a_model_does_not_depend_on_the_row_order_of_its_fit(name, table):
    """Fitted on the table shuffled, every harmonizer gives the same bits as fitted on it sorted."""
    def fitted(order):
        return fit_quietly(get_harmonizer(name, reference_site=table.reference_site, random_seed=0,
                                          **TINY.get(name, {})),
                           table.features.iloc[order], table.covariates.iloc[order])

    rows = np.arange(len(table.features))
    shuffled = np.random.default_rng(2).permutation(rows)
    expected = np.asarray(fitted(rows).transform(table.features, table.covariates))
    assert np.array_equal(np.asarray(fitted(shuffled).transform(table.features, table.covariates)), expected)
