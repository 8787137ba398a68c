"""Warnings about the study design that limit what any harmonizer can do.

Harmonizers estimate site effects where sites overlap in their covariates. Small sites give
noisy estimates; sites whose age ranges do not overlap confound age with site, so an age
effect can be removed as "site" (or a site effect kept as "age"); a site with one sex or one
diagnosis confounds those too. :func:`design_warnings` lists such problems in plain words.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from ._common import AGE, SEX, group_labels, sex_numeric, site_labels

__all__ = ["design_warnings", "age_overlap"]


def age_overlap(a, b) -> float:
    """Overlap of the age ranges of two samples, as a fraction of the narrower range.

    1.0 when one range contains the other, 0.0 when they do not touch.
    """
    lo = max(np.min(a), np.min(b))
    hi = min(np.max(a), np.max(b))
    narrow = min(np.ptp(a), np.ptp(b))
    if hi < lo:
        return 0.0
    if narrow <= 0:
        return 1.0
    return float(min(1.0, (hi - lo) / narrow))


def design_warnings(covariates: pd.DataFrame, *, min_site_size: int = 30, min_age_overlap: float = 0.5,
                    groups="auto", diagnosis_column: str | None = "diagnosis") -> list[dict]:
    """Design problems that limit harmonization, in plain words.

    Parameters
    ----------
    covariates : pandas.DataFrame
        With ``site`` and, when present, ``age``, ``sex``, ``diagnosis_column``.
    min_site_size : int
        Sites with fewer scans are flagged as small.
    min_age_overlap : float
        Pairs of sites whose age ranges overlap for less than this fraction of the narrower
        range are flagged (0 = disjoint ranges).
    groups : participant identifiers (see :func:`bidsharmony.evaluation.make_folds`).
    diagnosis_column : str or None

    Returns
    -------
    list of dict
        ``{"code", "sites", "message"}``; ``code`` is one of ``small_site``,
        ``age_no_overlap``, ``age_poor_overlap``, ``single_sex_site``,
        ``diagnosis_missing_at_site``. The two age codes also hold ``pair`` (the two site
        labels), ``overlap`` and ``min_overlap`` (fractions of the narrower range).
    """
    sites = site_labels(covariates).astype(str)
    group = group_labels(covariates, groups)
    labels = sorted(set(sites))
    out = []
    for site in labels:
        mask = sites == site
        n_scans, n_people = int(mask.sum()), len(set(group[mask]))
        if n_scans < min_site_size:
            out.append({"code": "small_site", "sites": site, "message":
                        f"Site {site} has only {n_scans} scans ({n_people} participants; fewer than "
                        f"{min_site_size}): its site effect is estimated with large uncertainty, and in "
                        "cross-validation each training fold holds even fewer."})
    if AGE in covariates.columns:
        age = pd.to_numeric(covariates[AGE], errors="coerce").to_numpy(dtype=np.float64)
        for i, a in enumerate(labels):
            for b in labels[i + 1:]:
                xa, xb = age[sites == a], age[sites == b]
                xa, xb = xa[np.isfinite(xa)], xb[np.isfinite(xb)]
                if not len(xa) or not len(xb):
                    continue
                overlap = age_overlap(xa, xb)
                ranges = (f"site {a}: {xa.min():.0f}-{xa.max():.0f} y, site {b}: "
                          f"{xb.min():.0f}-{xb.max():.0f} y")
                pair = {"sites": f"{a},{b}", "pair": [a, b], "overlap": overlap, "min_overlap": min_age_overlap}
                if overlap == 0.0:
                    out.append({"code": "age_no_overlap", **pair, "message":
                                f"The age ranges of sites {a} and {b} do not overlap ({ranges}). Age and site "
                                "are confounded: no method can tell an ageing effect from a site effect "
                                "between them; results there rest on extrapolation."})
                elif overlap < min_age_overlap:
                    out.append({"code": "age_poor_overlap", **pair, "message":
                                f"The age ranges of sites {a} and {b} overlap for only {100 * overlap:.0f}% "
                                f"of the narrower range ({ranges}): site effects there are partly "
                                "extrapolated."})
    if SEX in covariates.columns:
        sex = sex_numeric(covariates[SEX])
        for site in labels:
            values = set(sex[(sites == site) & np.isfinite(sex)])
            if len(values) == 1:
                out.append({"code": "single_sex_site", "sites": site, "message":
                            f"Site {site} holds scans of one sex only: sex and site effects are confounded "
                            "there."})
    if diagnosis_column and diagnosis_column in covariates.columns:
        dx = covariates[diagnosis_column].astype(str).to_numpy()
        levels = sorted(set(dx))
        for site in labels:
            missing = sorted(set(levels) - set(dx[sites == site]))
            if missing and len(levels) > 1:
                out.append({"code": "diagnosis_missing_at_site", "sites": site, "message":
                            f"Site {site} has no scans with diagnosis {', '.join(missing)}: diagnosis and site "
                            "are partly confounded."})
    return out
