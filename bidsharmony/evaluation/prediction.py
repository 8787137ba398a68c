"""Downstream prediction: the MLP of Wang et al. (Table 5) and the cross-site protocol (Tables 1-2).

Cross-site protocol
-------------------
A predictor (age regression, or diagnosis classification when a diagnosis column exists) is
trained on the scans of one *source* site and scored on every other *target* site. Raw
features give the lower bound **SrcOnly**; training and testing within the target site gives
the upper bound **TarOnly**. A harmonizer helps when its cross-site error moves from SrcOnly
towards TarOnly.

All numbers come from the same participant-grouped K folds: in fold *k* the harmonizer is
fitted on the training rows of *all* sites (it needs to see every site to learn its effect),
the predictor is trained on the harmonized training rows of the source site, and it is
scored on the harmonized *test* rows of each target site — rows neither model has seen.
TarOnly for site *t* is the raw within-site score (train on *t*'s training rows, test on
*t*'s test rows). The diagonal (source = target) of a harmonized method is its within-source
cross-validated score (the "Source" rows of Tables 1-2).
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from ._common import (
    AGE,
    EvaluationUsageError,
    check_tables,
    make_folds,
    rng_seed,
    site_labels,
)
from .protocols import FoldData, default_mask_columns, harmonize_in_folds
from ..utils.threads import torch_threads

__all__ = [
    "build_mlp", "MLPRegressor", "MLPClassifier", "make_predictor", "cross_site_prediction",
    "cross_site_from_folds", "summarize_cross_site",
]


# ---------------------------------------------------------------------------------- MLP
def build_mlp(n_features: int, n_outputs: int, hidden=(72, 36), negative_slope: float = 0.1):
    """The multi-layer perceptron of Wang et al. (2021), Table 5.

    ``n_features -> 72 -> 36 -> n_outputs``; each hidden layer is Linear followed by
    LeakyReLU(0.1), the last layer is Linear.

    Returns
    -------
    torch.nn.Sequential
    """
    import torch.nn as nn

    layers, width = [], int(n_features)
    for size in hidden:
        layers += [nn.Linear(width, int(size)), nn.LeakyReLU(negative_slope)]
        width = int(size)
    layers.append(nn.Linear(width, int(n_outputs)))
    return nn.Sequential(*layers)


class _BaseMLP:
    """Shared training loop: standardised inputs, Adam, mini-batches, fixed epochs, seeded."""

    _task = ""

    def __init__(self, hidden=(72, 36), negative_slope: float = 0.1, epochs: int = 100,
                 batch_size: int = 64, learning_rate: float = 1e-3, weight_decay: float = 1e-4,
                 random_state: int = 0, n_threads: int | None = 1):
        self.hidden = tuple(int(h) for h in hidden)
        self.negative_slope = float(negative_slope)
        self.epochs = int(epochs)
        self.batch_size = int(batch_size)
        self.learning_rate = float(learning_rate)
        self.weight_decay = float(weight_decay)
        self.random_state = int(random_state)
        self.n_threads = n_threads

    def get_params(self, deep: bool = True) -> dict:
        return {k: getattr(self, k) for k in ("hidden", "negative_slope", "epochs", "batch_size",
                                              "learning_rate", "weight_decay", "random_state", "n_threads")}

    def set_params(self, **params):
        for key, value in params.items():
            setattr(self, key, value)
        return self

    def _scale(self, X) -> np.ndarray:
        return (np.asarray(X, dtype=np.float64) - self.x_mean_) / self.x_scale_

    def _train(self, X: np.ndarray, target, n_outputs: int, loss_fn) -> None:
        import torch

        X = np.asarray(X, dtype=np.float64)
        self.x_mean_ = X.mean(axis=0)
        scale = X.std(axis=0)
        self.x_scale_ = np.where(scale > 0, scale, 1.0)
        with torch_threads(self.n_threads), torch.random.fork_rng(devices=[]):
            torch.manual_seed(self.random_state)
            generator = torch.Generator().manual_seed(self.random_state)
            inputs = torch.as_tensor(self._scale(X), dtype=torch.float32)
            self.model_ = build_mlp(X.shape[1], n_outputs, self.hidden, self.negative_slope)
            optimizer = torch.optim.Adam(self.model_.parameters(), lr=self.learning_rate,
                                         weight_decay=self.weight_decay)
            n = inputs.shape[0]
            batch = max(1, min(self.batch_size, n))
            self.loss_curve_ = []
            self.model_.train()
            for _ in range(self.epochs):
                order = torch.randperm(n, generator=generator)
                total = 0.0
                for start in range(0, n, batch):
                    idx = order[start:start + batch]
                    optimizer.zero_grad()
                    loss = loss_fn(self.model_(inputs[idx]), target[idx])
                    loss.backward()
                    optimizer.step()
                    total += float(loss.detach()) * len(idx)
                self.loss_curve_.append(total / n)
            self.model_.eval()

    def _forward(self, X) -> np.ndarray:
        import torch

        with torch_threads(self.n_threads), torch.no_grad():
            inputs = torch.as_tensor(self._scale(X), dtype=torch.float32)
            return self.model_(inputs).double().numpy()


class MLPRegressor(_BaseMLP):
    """Table-5 MLP for regression (e.g. age), trained with mean squared error on a
    standardised target.

    Parameters
    ----------
    hidden : tuple of int
        Hidden widths (default ``(72, 36)`` as in Table 5).
    negative_slope : float
        LeakyReLU slope (0.1).
    epochs, batch_size, learning_rate, weight_decay : training settings (Adam).
    random_state : int
        Seeds initialisation and batch order (torch's global RNG is left untouched).
    n_threads : int or None
        torch intra-op threads while training/predicting (restored afterwards).
    """

    _task = "regression"

    def fit(self, X, y) -> "MLPRegressor":
        import torch

        y = np.asarray(y, dtype=np.float64).ravel()
        self.y_mean_ = float(y.mean())
        self.y_scale_ = float(y.std()) or 1.0
        target = torch.as_tensor(((y - self.y_mean_) / self.y_scale_)[:, None], dtype=torch.float32)
        self._train(X, target, 1, torch.nn.functional.mse_loss)
        return self

    def predict(self, X) -> np.ndarray:
        return self._forward(X)[:, 0] * self.y_scale_ + self.y_mean_


class MLPClassifier(_BaseMLP):
    """Table-5 MLP for classification (e.g. diagnosis), trained with cross-entropy;
    ``k`` outputs for ``k`` classes. Same parameters as :class:`MLPRegressor`."""

    _task = "classification"

    def fit(self, X, y) -> "MLPClassifier":
        import torch

        y = np.asarray(y)
        self.classes_, codes = np.unique(y, return_inverse=True)
        target = torch.as_tensor(codes, dtype=torch.long)
        self._train(X, target, len(self.classes_), torch.nn.functional.cross_entropy)
        return self

    def predict_proba(self, X) -> np.ndarray:
        logits = self._forward(X)
        logits -= logits.max(axis=1, keepdims=True)
        prob = np.exp(logits)
        return prob / prob.sum(axis=1, keepdims=True)

    def predict(self, X) -> np.ndarray:
        return self.classes_[np.argmax(self._forward(X), axis=1)]


def make_predictor(kind="mlp", task: str = "regression", *, random_state: int = 0, mlp_epochs: int = 100,
                   n_threads: int | None = 1, mlp_params: dict | None = None):
    """A fresh, unfitted predictor.

    Parameters
    ----------
    kind : {"mlp", "linear", "ridge", "logistic"} or estimator
        ``"mlp"``: the Table-5 MLP (:class:`MLPRegressor` / :class:`MLPClassifier`).
        ``"linear"`` (aliases ``"ridge"``, ``"logistic"``): standardised features then
        :class:`~sklearn.linear_model.RidgeCV` (regression) or L2 logistic regression
        (classification). A scikit-learn estimator is cloned.
    task : {"regression", "classification"}
    random_state, mlp_epochs, n_threads, mlp_params : MLP settings.
    """
    from sklearn.base import clone
    from sklearn.linear_model import LogisticRegression, RidgeCV
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    if task not in ("regression", "classification"):
        raise EvaluationUsageError(f"task must be 'regression' or 'classification', got {task!r}")
    if not isinstance(kind, str):
        return clone(kind)
    kind = kind.lower()
    if kind == "mlp":
        params = {"epochs": mlp_epochs, "random_state": random_state, "n_threads": n_threads,
                  **(mlp_params or {})}
        return MLPRegressor(**params) if task == "regression" else MLPClassifier(**params)
    if kind in ("linear", "ridge", "logistic"):
        if task == "regression":
            return make_pipeline(StandardScaler(), RidgeCV(alphas=np.logspace(-3, 3, 13)))
        return make_pipeline(StandardScaler(), LogisticRegression(max_iter=2000))
    raise EvaluationUsageError(f"unknown predictor {kind!r}; use 'mlp', 'linear' (ridge/logistic) "
                               "or a scikit-learn estimator")


# ------------------------------------------------------------------------- cross-site
def _tasks(covariates: pd.DataFrame, diagnosis_column: str | None) -> list[tuple[str, str, str]]:
    """``(task name, covariate column, kind)`` of the prediction tasks available."""
    tasks = []
    if AGE in covariates.columns:
        tasks.append(("age", AGE, "regression"))
    if diagnosis_column and diagnosis_column in covariates.columns:
        tasks.append(("diagnosis", diagnosis_column, "classification"))
    return tasks


def cross_site_from_folds(fold_data: list[FoldData], covariates: pd.DataFrame, *, method: str,
                          predictor="mlp", sources=None, diagnosis_column: str | None = "diagnosis",
                          use_masked: bool = False, seed: int = 0, mlp_epochs: int = 100,
                          n_threads: int | None = 1, mlp_params: dict | None = None) -> pd.DataFrame:
    """Per-fold cross-site scores from already-harmonized folds (see module docstring).

    The predictor's seed depends on ``seed``, the fold, the task and the source site, not on
    ``method``: two methods are scored by identically initialised and trained predictors, so
    their difference is the harmonization's alone (methods giving the same tables get the
    same scores).

    Returns
    -------
    pandas.DataFrame
        Columns ``method, fold, task, source_site, target_site, metric, value, baseline,
        n_train, n_test``. ``metric`` is ``mae`` (years) for age and ``accuracy`` /
        ``balanced_accuracy`` for diagnosis; ``baseline`` is the same metric for a
        predictor that ignores the features (the source-training mean age, or its
        majority class).
    """
    from sklearn.metrics import accuracy_score, balanced_accuracy_score

    sites = site_labels(covariates)
    all_sites = sorted(set(sites))
    sources = all_sites if sources is None else [str(s) for s in sources]
    unknown = sorted(set(sources) - set(all_sites))
    if unknown:
        raise EvaluationUsageError(f"source site(s) {', '.join(unknown)} not in the data")
    rows = []
    for fd in fold_data:
        train_sites = sites[fd.fold.train]
        test_sites = sites[fd.fold.test]
        for task, column, kind in _tasks(covariates, diagnosis_column):
            y_train_all = covariates[column].to_numpy()[fd.fold.train]
            y_test_all = covariates[column].to_numpy()[fd.fold.test]
            if kind == "classification":
                y_train_all = y_train_all.astype(str)
                y_test_all = y_test_all.astype(str)
            else:
                y_train_all = y_train_all.astype(np.float64)
                y_test_all = y_test_all.astype(np.float64)
            test_table = fd.masked_test.get(column, fd.test) if use_masked else fd.test
            x_train_all, x_test_all = fd.train.to_numpy(), test_table.to_numpy()
            for source in sources:
                tr = train_sites == source
                y_tr = y_train_all[tr]
                if tr.sum() < 2 or (kind == "classification" and len(set(y_tr)) < 2):
                    continue
                # the method is not part of the seed: every method is judged by the same
                # initialisations and batch orders (paired comparisons)
                model = make_predictor(predictor, kind, random_state=rng_seed(seed, fd.fold.index, task, source),
                                       mlp_epochs=mlp_epochs, n_threads=n_threads, mlp_params=mlp_params)
                model.fit(x_train_all[tr], y_tr)
                for target in all_sites:
                    te = test_sites == target
                    if not te.any():
                        continue
                    pred = model.predict(x_test_all[te])
                    truth = y_test_all[te]
                    base = dict(method=method, fold=fd.fold.index, task=task, source_site=source,
                                target_site=target, n_train=int(tr.sum()), n_test=int(te.sum()))
                    if kind == "regression":
                        rows.append({**base, "metric": "mae", "value": float(np.mean(np.abs(pred - truth))),
                                     "baseline": float(np.mean(np.abs(y_tr.mean() - truth)))})
                    else:
                        values, counts = np.unique(y_tr, return_counts=True)
                        majority = np.full(truth.shape, values[np.argmax(counts)])
                        rows.append({**base, "metric": "accuracy", "value": float(accuracy_score(truth, pred)),
                                     "baseline": float(accuracy_score(truth, majority))})
                        if len(set(truth)) > 1:
                            rows.append({**base, "metric": "balanced_accuracy",
                                         "value": float(balanced_accuracy_score(truth, pred)),
                                         "baseline": 1.0 / len(set(truth))})
    columns = ["method", "fold", "task", "source_site", "target_site", "metric", "value", "baseline",
               "n_train", "n_test"]
    return pd.DataFrame(rows, columns=columns)


def summarize_cross_site(per_fold: pd.DataFrame, *, raw_method: str | None = None) -> pd.DataFrame:
    """Average per-fold cross-site scores and add the TarOnly / SrcOnly bounds.

    Parameters
    ----------
    per_fold : pandas.DataFrame
        Output of :func:`cross_site_from_folds` for one or more methods.
    raw_method : str, optional
        The method holding raw (unharmonized) scores. Its off-diagonal rows are the
        **SrcOnly** lower bound; its diagonal rows (train and test within a site) are
        repeated as method ``"TarOnly"`` (the upper bound) for every source site.

    Returns
    -------
    pandas.DataFrame
        ``method, role, task, source_site, target_site, metric, value (mean over folds), sd,
        se, baseline, n_folds, n_train, n_test``; ``role`` is ``"TarOnly (upper bound)"``,
        ``"SrcOnly (lower bound)"``, ``"within source"`` (diagonal) or ``"harmonized"``.
    """
    columns = ["method", "role", "task", "source_site", "target_site", "metric", "value", "sd", "se",
               "baseline", "n_folds", "n_train", "n_test"]
    if per_fold.empty:
        return pd.DataFrame(columns=columns)
    keys = ["method", "task", "source_site", "target_site", "metric"]
    grouped = per_fold.groupby(keys, sort=False)
    table = grouped.agg(value=("value", "mean"), sd=("value", "std"), baseline=("baseline", "mean"),
                        n_folds=("value", "size"), n_train=("n_train", "mean"),
                        n_test=("n_test", "mean")).reset_index()
    table["se"] = table["sd"] / np.sqrt(table["n_folds"])
    diagonal = table["source_site"] == table["target_site"]
    table["role"] = np.where(diagonal, "within source", "harmonized")
    if raw_method is not None:
        is_raw = table["method"] == raw_method
        table.loc[is_raw & ~diagonal, "role"] = "SrcOnly (lower bound)"
        tar = table[is_raw & diagonal].copy()
        bounds = []
        for _, row in tar.iterrows():
            for source in sorted(set(table["source_site"])):
                if source == row["target_site"]:
                    continue
                copy = row.copy()
                copy["method"], copy["source_site"], copy["role"] = "TarOnly", source, "TarOnly (upper bound)"
                bounds.append(copy)
        if bounds:
            table = pd.concat([pd.DataFrame(bounds), table], ignore_index=True)
    return table[columns].reset_index(drop=True)


def cross_site_prediction(features: pd.DataFrame, covariates: pd.DataFrame, harmonizer=None, *,
                          name: str | None = None, predictor="mlp", sources=None,
                          diagnosis_column: str | None = "diagnosis", n_splits: int = 5, groups="auto",
                          seed: int = 0, folds=None, include_bounds: bool = True,
                          mask_target_in_transform: bool = True, mlp_epochs: int = 100,
                          n_threads: int | None = 1, mlp_params: dict | None = None) -> pd.DataFrame:
    """Train on one source site, test on every other site (Wang et al. 2021, Tables 1-2).

    Parameters
    ----------
    features, covariates : pandas.DataFrame
        Same index; covariates hold ``site``, ``age`` and optionally ``diagnosis_column``.
    harmonizer : None, name, class, instance or factory
        Fitted inside each training fold only. ``None`` evaluates the raw features.
    name : str, optional
        Method label (default ``"raw"`` or ``"harmonized"``).
    predictor : {"mlp", "linear"} or estimator
        See :func:`make_predictor`. Default: the Table-5 MLP.
    sources : sequence of str, optional
        Source sites (default: every site in turn).
    diagnosis_column : str or None
        Adds a classification task (accuracy) when this covariate exists.
    n_splits, groups, seed, folds :
        Participant-grouped folds (see :func:`bidsharmony.evaluation.make_folds`).
    include_bounds : bool
        Also evaluate the raw features: SrcOnly and TarOnly rows.
    mask_target_in_transform : bool
        Hide the predicted covariate (age, diagnosis) of the test rows from the harmonizer's
        ``transform`` (replaced by the training mean/mode of their site; the default).
        Harmonizers that preserve covariate effects (ComBat, flow-SCM) use the covariate while
        transforming; with ``False`` (the protocol of the paper) the test rows' true age
        reaches the harmonized features and a harmonizer can leak the answer.
    mlp_epochs, n_threads, mlp_params : MLP training settings.

    Returns
    -------
    pandas.DataFrame
        As :func:`summarize_cross_site`.
    """
    check_tables(features, covariates)
    if folds is None:
        folds = make_folds(covariates, n_splits, groups=groups, seed=seed)
    name = name or ("raw" if harmonizer is None else "harmonized")
    masks = default_mask_columns(covariates, diagnosis_column) if mask_target_in_transform else ()
    kwargs = dict(predictor=predictor, sources=sources, diagnosis_column=diagnosis_column, seed=seed,
                  mlp_epochs=mlp_epochs, n_threads=n_threads, mlp_params=mlp_params)
    parts = []
    raw_name = None
    if include_bounds or harmonizer is None:
        raw_name = "raw" if harmonizer is not None else name
        raw_folds = harmonize_in_folds(features, covariates, None, folds)
        parts.append(cross_site_from_folds(raw_folds, covariates, method=raw_name, **kwargs))
    if harmonizer is not None:
        fold_data = harmonize_in_folds(features, covariates, harmonizer, folds, mask_columns=masks)
        parts.append(cross_site_from_folds(fold_data, covariates, method=name, use_masked=bool(masks), **kwargs))
    return summarize_cross_site(pd.concat(parts, ignore_index=True), raw_method=raw_name)
