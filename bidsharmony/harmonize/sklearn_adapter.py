"""A table harmonizer as one step of a scikit-learn :class:`~sklearn.pipeline.Pipeline`.

A harmonizer is itself a scikit-learn estimator (``get_params``/``set_params``, ``clone``,
``fit(features, covariates)``), so it goes straight into
:func:`~sklearn.model_selection.cross_val_score` with a scorer that calls
``transform(features, covariates)``. A pipeline step, though, sees only ``X`` (and the
pipeline's ``y``, the next step's target), while a harmonizer needs the covariates at
``transform`` too; :class:`HarmonizerTransformer` carries them as columns of ``X``::

    from sklearn.linear_model import LogisticRegression
    from sklearn.model_selection import cross_val_score
    from sklearn.pipeline import make_pipeline

    table = features.join(covariates[["site", "age", "sex"]])
    pipeline = make_pipeline(HarmonizerTransformer(ComBat()), LogisticRegression())
    accuracy = cross_val_score(pipeline, table, covariates["site"])  # near chance once harmonized

Each fold's harmonizer is fitted on that fold's training rows only, so the held-out rows never
inform the harmonization that is scored on them.

This module imports scikit-learn; the rest of :mod:`bidsharmony.harmonize` does not.
"""

from __future__ import annotations

import pandas as pd
from sklearn.base import BaseEstimator, TransformerMixin, clone

from .errors import HarmonizerInputError
from .validation import REQUIRED_COVARIATES

__all__ = ["HarmonizerTransformer"]


class HarmonizerTransformer(TransformerMixin, BaseEstimator):
    """Harmonize the feature columns of one table whose covariate columns ride along.

    Parameters
    ----------
    harmonizer : Harmonizer
        An unfitted table harmonizer (e.g. ``ComBat()``); each ``fit`` fits a clone of it, so
        the one given is never modified.
    covariates : sequence of str
        Columns of ``X`` that are covariates (``site``, ``age``, ``sex`` and any extras the
        harmonizer uses); every other column is a feature.

    Attributes
    ----------
    harmonizer_ : Harmonizer
        The fitted clone.
    feature_names_in_ : numpy.ndarray
        The columns of ``X`` seen in ``fit``.

    Notes
    -----
    :meth:`transform` returns the harmonized features only: the covariates are consumed, so a
    site classifier that follows cannot read the site from them.
    """

    def __init__(self, harmonizer, covariates=REQUIRED_COVARIATES):
        self.harmonizer = harmonizer
        self.covariates = covariates

    def _split(self, X) -> tuple[pd.DataFrame, pd.DataFrame]:
        if not isinstance(X, pd.DataFrame):
            raise HarmonizerInputError(
                f"HarmonizerTransformer needs a pandas DataFrame with the covariate columns "
                f"{', '.join(self.covariates)}, got {type(X).__name__}; join the features and covariates first")
        missing = [c for c in self.covariates if c not in X.columns]
        if missing:
            raise HarmonizerInputError(f"X lacks the covariate column(s) {', '.join(missing)}; "
                                       "join them to the features, or list the covariates present")
        covariates = list(self.covariates)
        return X.drop(columns=covariates), X[covariates]

    def fit(self, X, y=None) -> "HarmonizerTransformer":
        """Fit a clone of :attr:`harmonizer` on the feature and covariate columns of ``X``.

        ``y`` (the target of the steps that follow) is ignored.
        """
        features, covariates = self._split(X)
        self.feature_names_in_ = X.columns.to_numpy(dtype=object)
        self.harmonizer_ = clone(self.harmonizer).fit(features, covariates)
        return self

    def transform(self, X) -> pd.DataFrame:
        """The harmonized feature columns of ``X`` (covariate columns dropped)."""
        from sklearn.utils.validation import check_is_fitted

        check_is_fitted(self, "harmonizer_")
        features, covariates = self._split(X)
        return self.harmonizer_.transform(features, covariates)

    def get_feature_names_out(self, input_features=None):
        """The feature columns, in the order :meth:`transform` returns them."""
        return [c for c in self.feature_names_in_ if c not in set(self.covariates)]
