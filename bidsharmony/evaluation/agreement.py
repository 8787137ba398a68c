"""Error to the ground truth and agreement of traveling subjects across sites.

Ground truth
------------
On synthetic data (or any data where the site-free value of each scan is known) the
harmonized features are compared with the truth feature by feature: root-mean-square error,
its share of the truth's spread (``nrmse``), the mean bias, and a *centred* RMSE that ignores
a constant offset (harmonizers that map to a reference site may differ from a site-free truth
by a constant per feature).

Traveling subjects and the ICC
------------------------------
When the same participant is scanned at several sites, a harmonized feature should take the
same value at every site. We report, per feature, the intraclass correlation over the
``participants x sites`` table (Shrout & Fleiss 1979):

* **ICC(2,1)** — two-way random effects, *absolute agreement*, single measurement — as the
  primary measure. Sites are treated as a random sample of scanners, and a systematic offset
  between sites counts as disagreement. That offset is exactly the site effect harmonization
  must remove, so a consistency-type ICC would miss it.
* **ICC(3,1)** — two-way mixed, *consistency* — for reference: it ignores constant site
  offsets and only reflects rank/scale agreement, so it stays high under a pure site shift.

With mean squares from the two-way ANOVA without replication (``MSR`` participants, ``MSC``
sites, ``MSE`` residual; ``n`` participants, ``k`` sites)::

    ICC(2,1) = (MSR - MSE) / (MSR + (k - 1) MSE + k (MSC - MSE) / n)
    ICC(3,1) = (MSR - MSE) / (MSR + (k - 1) MSE)

Only participants scanned at every site used are included (repeated scans at one site are
averaged).
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from ._common import EvaluationError, EvaluationUsageError, check_tables, group_labels, site_labels

__all__ = ["truth_error", "icc", "traveling_subject_icc"]


def truth_error(features: pd.DataFrame, truth: pd.DataFrame, covariates: pd.DataFrame | None = None,
                *, by_site: bool = False) -> pd.DataFrame:
    """Per-feature error of (harmonized) features against the ground truth.

    Parameters
    ----------
    features : pandas.DataFrame
        Harmonized (or raw) features.
    truth : pandas.DataFrame
        Same index, the same feature columns (any order): the site-free values.
    covariates : pandas.DataFrame, optional
        Needed for ``by_site``.
    by_site : bool
        One row per feature and site instead of per feature.

    Returns
    -------
    pandas.DataFrame
        ``feature, [site,] rmse, nrmse, bias, rmse_centered, nrmse_centered, n`` where
        ``nrmse = rmse / sd(truth)`` and ``rmse_centered`` is the RMSE after removing the mean
        difference (the bias), ``nrmse_centered`` its share of ``sd(truth)``.
    """
    if not isinstance(truth, pd.DataFrame):
        raise EvaluationError("truth must be a DataFrame with the features' index and columns")
    missing = [c for c in features.columns if c not in truth.columns]
    if missing or not features.index.isin(truth.index).all():
        raise EvaluationError("truth must hold every feature column and every row of the feature table")
    truth = truth.loc[features.index, list(features.columns)]
    x = features.to_numpy(dtype=np.float64)
    y = truth.to_numpy(dtype=np.float64)
    sd_truth = y.std(axis=0, ddof=1)
    if by_site:
        if covariates is None:
            raise EvaluationUsageError("by_site=True needs the covariates")
        sites = site_labels(covariates)
        groups = [(s, sites == s) for s in sorted(set(sites))]
    else:
        groups = [(None, np.ones(len(x), dtype=bool))]
    rows = []
    for site, mask in groups:
        diff = x[mask] - y[mask]
        bias = diff.mean(axis=0)
        rmse = np.sqrt((diff ** 2).mean(axis=0))
        centered = np.sqrt(((diff - bias) ** 2).mean(axis=0))
        for j, feature in enumerate(features.columns):
            row = {"feature": str(feature)}
            if by_site:
                row["site"] = site
            scale = sd_truth[j] if sd_truth[j] > 0 else float("nan")
            row.update(rmse=float(rmse[j]), nrmse=float(rmse[j] / scale), bias=float(bias[j]),
                       rmse_centered=float(centered[j]), nrmse_centered=float(centered[j] / scale),
                       n=int(mask.sum()))
            rows.append(row)
    return pd.DataFrame(rows)


def icc(ratings, kind: str = "2,1") -> float:
    """Intraclass correlation of a complete ``(n_subjects, k_raters)`` table.

    Parameters
    ----------
    ratings : array-like
        One row per participant, one column per site; no missing values.
    kind : {"2,1", "3,1"}
        ICC(2,1) absolute agreement (two-way random) or ICC(3,1) consistency (two-way mixed),
        Shrout & Fleiss (1979).

    Returns
    -------
    float
        NaN when the table has no variance.

    Examples
    --------
    >>> icc([[1, 2], [3, 4], [5, 6]], "3,1")   # a pure offset: perfect consistency
    1.0
    """
    y = np.asarray(ratings, dtype=np.float64)
    if y.ndim != 2 or y.shape[0] < 2 or y.shape[1] < 2:
        raise EvaluationUsageError("icc needs at least 2 participants x 2 sites")
    if not np.isfinite(y).all():
        raise EvaluationUsageError("icc needs a complete table without NaN")
    n, k = y.shape
    grand = y.mean()
    ss_rows = k * ((y.mean(axis=1) - grand) ** 2).sum()
    ss_cols = n * ((y.mean(axis=0) - grand) ** 2).sum()
    ss_total = ((y - grand) ** 2).sum()
    ss_error = ss_total - ss_rows - ss_cols
    msr = ss_rows / (n - 1)
    msc = ss_cols / (k - 1)
    mse = ss_error / ((n - 1) * (k - 1))
    if kind in ("2,1", "2", "A,1"):
        denominator = msr + (k - 1) * mse + k * (msc - mse) / n
    elif kind in ("3,1", "3", "C,1"):
        denominator = msr + (k - 1) * mse
    else:
        raise EvaluationUsageError(f"unknown ICC kind {kind!r}; use '2,1' or '3,1'")
    if denominator <= 0 or not np.isfinite(denominator):
        return float("nan")
    return float((msr - mse) / denominator)


def _complete_block(group: np.ndarray, sites: np.ndarray, use_sites, min_subjects: int):
    """Participants observed at every site of ``use_sites`` (greedily dropping sparse sites)."""
    present = pd.crosstab(pd.Series(group, name="g"), pd.Series(sites, name="s")) > 0
    present = present[present.sum(axis=1) >= 2]
    if use_sites is not None:
        use = [str(s) for s in use_sites]
        unknown = sorted(set(use) - set(sites))
        if unknown:
            raise EvaluationUsageError(f"site(s) {', '.join(unknown)} are not in the data")
        cols = [s for s in use if s in present.columns]
        present = present.reindex(columns=use, fill_value=False)
        complete = present.index[present.all(axis=1)] if cols else present.index[:0]
        return list(complete), use
    cols = list(present.columns)
    while True:
        complete = present.index[present[cols].all(axis=1)] if cols else present.index[:0]
        if len(complete) >= min_subjects or len(cols) <= 2:
            return list(complete), cols
        cols.remove(min(cols, key=lambda c: (present[c].sum(), c)))


def traveling_subject_icc(features: pd.DataFrame, covariates: pd.DataFrame, *, groups="auto", sites=None,
                          min_subjects: int = 3) -> pd.DataFrame:
    """ICC(2,1) and ICC(3,1) of each feature across sites for participants scanned at several sites.

    Parameters
    ----------
    features, covariates : pandas.DataFrame
        Same index; covariates hold ``site`` and the participant identifier.
    groups : "auto", str, array-like
        Participant identifiers (``"auto"``: the ``participant_id`` column).
    sites : sequence of str, optional
        Sites to compare. Default: all sites visited by traveling participants; while fewer
        than ``min_subjects`` participants visited all of them, the site with the fewest
        traveling participants is dropped.
    min_subjects : int
        Fewer complete participants gives an empty table.

    Returns
    -------
    pandas.DataFrame
        ``feature, icc_2_1, icc_3_1, n_subjects, n_sites, sites`` (empty when there are no
        traveling subjects).
    """
    values = check_tables(features, covariates)
    group = group_labels(covariates, groups)
    site = site_labels(covariates).astype(str)
    subjects, used = _complete_block(group, site, sites, min_subjects)
    columns = ["feature", "icc_2_1", "icc_3_1", "n_subjects", "n_sites", "sites"]
    if len(subjects) < max(2, min_subjects):
        return pd.DataFrame(columns=columns)
    keep = np.isin(group, subjects) & np.isin(site, used)
    frame = pd.DataFrame(values[keep], columns=range(values.shape[1]))
    frame["_g"], frame["_s"] = group[keep], site[keep]
    means = frame.groupby(["_g", "_s"]).mean()
    rows = []
    for j, feature in enumerate(features.columns):
        table = means[j].unstack("_s").reindex(index=subjects, columns=used).to_numpy()
        rows.append({"feature": str(feature), "icc_2_1": icc(table, "2,1"), "icc_3_1": icc(table, "3,1"),
                     "n_subjects": len(subjects), "n_sites": len(used), "sites": ",".join(used)})
    return pd.DataFrame(rows, columns=columns)
