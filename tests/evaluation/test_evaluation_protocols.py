"""Folds and the leakage-safe protocol: the harmonizer never sees a test row."""

import itertools

import numpy as np
import pandas as pd
import pytest

from bidsharmony.evaluation import (
    EvaluationError,
    EvaluationUsageError,
    evaluate_harmonizers,
    harmonize_in_folds,
    make_folds,
    mask_covariate,
)
from bidsharmony.evaluation._common import as_factory, group_labels
from evaluation_data import MeanShift, make_table


class Spy(MeanShift):
    """Records the rows every instance was fitted on and the rows it transformed."""

    log: list = []
    counter = itertools.count()

    def fit(self, features, covariates):
        self.id_ = next(Spy.counter)
        Spy.log.append(("fit", self.id_, frozenset(features.index)))
        return super().fit(features, covariates)

    def transform(self, features, covariates):
        Spy.log.append(("transform", self.id_, frozenset(features.index)))
        return super().transform(features, covariates)


def test_folds_keep_participants_together_and_every_site_in_training():
    features, covariates, _ = make_table(n_subjects=30, traveling=True)
    groups = group_labels(covariates)
    folds = make_folds(covariates, 5, seed=1)
    assert len(folds) == 5
    seen = np.concatenate([f.test for f in folds])
    assert sorted(seen) == list(range(len(covariates)))  # a partition of the rows
    for fold in folds:
        assert not set(groups[fold.train]) & set(groups[fold.test])  # traveling subject never on both sides
        assert set(covariates["site"].iloc[fold.train]) == {"A", "B", "C"}


def test_folds_refuse_sites_smaller_than_the_number_of_folds():
    _, covariates, _ = make_table(n_subjects=30)
    small = covariates.copy()
    small.iloc[:2, small.columns.get_loc("site")] = "tiny"
    with pytest.raises(EvaluationError, match="tiny"):
        make_folds(small, 5)
    with pytest.raises(EvaluationUsageError):
        make_folds(covariates, 1)


def test_harmonizer_is_fitted_on_training_rows_only():
    features, covariates, truth = make_table(n_subjects=24, traveling=True)
    Spy.log = []
    results = evaluate_harmonizers(features, covariates, {"spy": Spy}, truth=truth, n_splits=4,
                                   predictor="linear", metrics=("site", "cross_site", "mmd"))
    fits = {i: rows for kind, i, rows in Spy.log if kind == "fit"}
    assert len(fits) == 4  # one fresh model per fold, never one on all rows
    all_rows = frozenset(features.index)
    for fold in results.folds:
        train = frozenset(features.index[fold.train])
        test = frozenset(features.index[fold.test])
        owners = [i for i, rows in fits.items() if rows == train]
        assert len(owners) == 1, "each fit used exactly one fold's training rows"
        assert not fits[owners[0]] & test
    for kind, i, rows in Spy.log:
        assert fits[i] != all_rows
        if kind == "transform" and not rows <= fits[i]:
            assert not rows & fits[i], "a transform of held-out rows came from a model fitted on them"
    # the cross-fitted table: every row harmonized by the model that did not see it
    oof = results.harmonized["spy"]
    for fold in results.folds:
        train = features.iloc[fold.train]
        model = MeanShift().fit(train, covariates.iloc[fold.train])
        expected = model.transform(features.iloc[fold.test], covariates.iloc[fold.test])
        pd.testing.assert_frame_equal(oof.iloc[fold.test], expected)


def test_masked_transform_hides_the_predicted_covariate():
    features, covariates, _ = make_table(n_subjects=30)
    train, test = covariates.iloc[:20], covariates.iloc[20:]
    masked = mask_covariate(train, test, "age")
    for site in "ABC":
        expected = train.loc[train.site == site, "age"].mean()
        assert np.allclose(masked.loc[masked.site == site, "age"], expected)
    dx = mask_covariate(train, test, "diagnosis")
    assert dx["diagnosis"].isin(["AD", "CN"]).all()
    folds = make_folds(covariates, 3)
    fold_data = harmonize_in_folds(features, covariates, MeanShift, folds, mask_columns=("age",))
    assert set(fold_data[0].masked_test) == {"age"}


def test_harmonizer_specifications():
    instance = MeanShift()
    factory = as_factory(instance)
    first, second = factory(), factory()
    assert first is not second and first is not instance  # fresh copy per fold
    assert as_factory(None) is None and as_factory("none") is None
    assert as_factory(MeanShift)().__class__ is MeanShift
    with pytest.raises(EvaluationUsageError):
        as_factory(42)


def test_transform_output_is_aligned_to_the_input_rows():
    from bidsharmony.evaluation._common import transform_frame

    features, covariates, _ = make_table(n_subjects=12)

    class Reversed(MeanShift):
        def transform(self, features, covariates):
            return super().transform(features, covariates).iloc[::-1]

    class Relabelled(MeanShift):
        def transform(self, features, covariates):
            return super().transform(features, covariates).reset_index(drop=True)

    expected = MeanShift().fit(features, covariates).transform(features, covariates)
    out = transform_frame(Reversed().fit(features, covariates), features, covariates)
    pd.testing.assert_frame_equal(out, expected)
    with pytest.raises(EvaluationError, match="labelled differently"):
        transform_frame(Relabelled().fit(features, covariates), features, covariates)
    as_array = transform_frame(type("A", (MeanShift,), {"transform": lambda s, f, c: np.zeros(f.shape)})(),
                               features, covariates)
    assert as_array.index.equals(features.index) and (as_array.to_numpy() == 0).all()
