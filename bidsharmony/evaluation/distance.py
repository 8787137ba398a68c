"""Distribution distance between sites: maximum mean discrepancy (MMD²).

MMD² measures how different two multivariate distributions are; it is 0 when they are
identical. We use the **unbiased** U-statistic of Gretton et al. (JMLR 2012, Lemma 6)::

    MMD²_u = 1/(m(m-1)) Σ_{i≠j} k(x_i, x_j) + 1/(n(n-1)) Σ_{i≠j} k(y_i, y_j) - 2/(mn) Σ_{i,j} k(x_i, y_j)

with the Gaussian (RBF) kernel ``k(a, b) = exp(-||a - b||² / (2 σ²))`` and the **median
heuristic** bandwidth: ``σ`` is the median Euclidean distance between distinct points of the
pooled sample of the two sites compared. Because the estimator is unbiased, it fluctuates
around 0 (and can be slightly negative) for identical distributions.

By default the effects of age (spline), sex and diagnosis are first removed from the features
(least squares over the whole table), so sites that differ in age are not "distant" because of
their participants' ages; then features are z-scored over the whole table (pooled mean and
standard deviation of the table being evaluated), so features in large units (e.g.
whole-brain volume) do not dominate.
Large sites are randomly subsampled (``max_per_site``) to bound the quadratic cost.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from ._common import EvaluationUsageError, check_tables, site_labels
from .site import DEFAULT_ADJUST, residualize_covariates

__all__ = ["median_heuristic", "mmd2_unbiased", "site_mmd"]


def _sq_dists(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    d = (a ** 2).sum(1)[:, None] + (b ** 2).sum(1)[None, :] - 2.0 * a @ b.T
    return np.maximum(d, 0.0)


def median_heuristic(x, y=None) -> float:
    """Median Euclidean distance between distinct points of the pooled sample ``[x; y]``.

    Returns
    -------
    float
        The RBF bandwidth σ (1.0 if all points coincide).
    """
    z = np.asarray(x, dtype=np.float64)
    if z.ndim == 1:
        z = z[:, None]
    if y is not None:
        yy = np.asarray(y, dtype=np.float64)
        z = np.vstack([z, yy[:, None] if yy.ndim == 1 else yy])
    d = _sq_dists(z, z)[np.triu_indices(len(z), k=1)]
    d = d[d > 0]
    return float(np.sqrt(np.median(d))) if d.size else 1.0


def mmd2_unbiased(x, y, bandwidth: float | None = None) -> float:
    """Unbiased MMD² between samples ``x`` (m × d) and ``y`` (n × d) with an RBF kernel.

    Parameters
    ----------
    x, y : array-like
        Samples (1-D arrays are treated as one feature); at least 2 rows each.
    bandwidth : float, optional
        RBF σ; default the median heuristic on the pooled sample.

    Returns
    -------
    float

    Examples
    --------
    >>> rng = np.random.default_rng(0)
    >>> round(mmd2_unbiased(rng.normal(size=(200, 2)), rng.normal(size=(200, 2))), 2)
    0.0
    """
    x = np.asarray(x, dtype=np.float64)
    y = np.asarray(y, dtype=np.float64)
    x = x[:, None] if x.ndim == 1 else x
    y = y[:, None] if y.ndim == 1 else y
    m, n = len(x), len(y)
    if m < 2 or n < 2:
        raise EvaluationUsageError("MMD² needs at least two rows per sample")
    sigma = median_heuristic(x, y) if bandwidth is None else float(bandwidth)
    gamma = 1.0 / (2.0 * sigma ** 2)
    kxx = np.exp(-gamma * _sq_dists(x, x))
    kyy = np.exp(-gamma * _sq_dists(y, y))
    kxy = np.exp(-gamma * _sq_dists(x, y))
    term_x = (kxx.sum() - np.trace(kxx)) / (m * (m - 1))
    term_y = (kyy.sum() - np.trace(kyy)) / (n * (n - 1))
    return float(term_x + term_y - 2.0 * kxy.mean())


def subsample_by_site(values: np.ndarray, sites: np.ndarray, labels, max_per_site: int, rng) -> dict:
    """``{site: rows of values}``, at most ``max_per_site`` rows each (drawn with ``rng``, order kept).

    MMD is quadratic in the number of rows; subsampling large sites keeps it cheap.
    """
    samples = {}
    for site in labels:
        rows = np.flatnonzero(sites == site)
        if len(rows) > max_per_site:
            rows = np.sort(rng.choice(rows, size=max_per_site, replace=False))
        samples[site] = values[rows]
    return samples


def site_mmd(features: pd.DataFrame, covariates: pd.DataFrame, *, reference_site: str | None = None,
             pairwise: bool = True, max_per_site: int = 500, standardize: bool = True,
             adjust_for=DEFAULT_ADJUST, diagnosis_column: str | None = "diagnosis",
             split_half_baseline: bool = True, seed: int = 0) -> pd.DataFrame:
    """MMD² between the sites of a feature table.

    Parameters
    ----------
    features, covariates : pandas.DataFrame
        Same index; covariates hold ``site``.
    reference_site : str, optional
        Site every other site is compared with (default: the largest site, ties by name).
    pairwise : bool
        Also compare every pair of sites.
    max_per_site : int
        Random subsample size per site (seeded) to bound the O(n²) cost.
    standardize : bool
        z-score each feature over the whole table first.
    adjust_for : sequence of {"age", "sex", "diagnosis"} or None
        Covariate effects removed first (see :func:`bidsharmony.evaluation.site.residualize_covariates`).
    diagnosis_column : str or None
    split_half_baseline : bool
        Add the MMD² between two random halves of the reference site: the size of MMD² when
        there is no site difference at this sample size.
    seed : int

    Returns
    -------
    pandas.DataFrame
        ``comparison`` (``"vs_reference"``, ``"pairwise"``, ``"split_half"``), ``site_a,
        site_b, mmd2, bandwidth, n_a, n_b``.
    """
    values = check_tables(features, covariates)
    if adjust_for:
        values, _ = residualize_covariates(values, covariates, values, covariates, adjust_for, diagnosis_column)
    if standardize:
        sd = values.std(axis=0)
        values = (values - values.mean(axis=0)) / np.where(sd > 0, sd, 1.0)
    sites = site_labels(covariates).astype(str)
    labels, counts = np.unique(sites, return_counts=True)
    if len(labels) < 2:
        raise EvaluationUsageError("MMD between sites needs at least two sites")
    if reference_site is None:
        reference_site = sorted(labels, key=lambda s: (-counts[list(labels).index(s)], s))[0]
    reference_site = str(reference_site)
    if reference_site not in labels:
        raise EvaluationUsageError(f"reference site {reference_site!r} is not in the data")
    rng = np.random.default_rng(seed)
    samples = subsample_by_site(values, sites, labels, max_per_site, rng)
    pairs = [("vs_reference", reference_site, s) for s in labels if s != reference_site]
    if pairwise:
        pairs += [("pairwise", a, b) for i, a in enumerate(labels) for b in labels[i + 1:]]
    rows = []
    for kind, a, b in pairs:
        x, y = samples[a], samples[b]
        if len(x) < 2 or len(y) < 2:
            continue
        sigma = median_heuristic(x, y)
        rows.append({"comparison": kind, "site_a": a, "site_b": b, "mmd2": mmd2_unbiased(x, y, sigma),
                     "bandwidth": sigma, "n_a": len(x), "n_b": len(y)})
    if split_half_baseline:
        ref = samples[reference_site]
        if len(ref) >= 4:
            order = rng.permutation(len(ref))
            x, y = ref[order[: len(ref) // 2]], ref[order[len(ref) // 2:]]
            sigma = median_heuristic(x, y)
            rows.append({"comparison": "split_half", "site_a": reference_site, "site_b": reference_site,
                         "mmd2": mmd2_unbiased(x, y, sigma), "bandwidth": sigma, "n_a": len(x), "n_b": len(y)})
    return pd.DataFrame(rows, columns=["comparison", "site_a", "site_b", "mmd2", "bandwidth", "n_a", "n_b"])
