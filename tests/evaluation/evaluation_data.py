"""Small constructed tables with known answers for the evaluation tests (no bidsharmony data code)."""

from __future__ import annotations

import numpy as np
import pandas as pd

SITES = ("A", "B", "C")


def make_table(n_subjects: int = 60, sites=SITES, n_features: int = 6, site_shift: float = 3.0,
               site_scale: float = 0.0, age_slope: float = 0.05, noise: float = 1.0, scan_noise: float = 0.2,
               traveling: bool = False, diagnosis: bool = True, seed: int = 0, age_ranges=None):
    """Features = biology (age, sex, diagnosis, person) + per-site additive shift (+ scan noise).

    Returns ``features, covariates, truth`` where ``truth`` is the site-free value of each scan.
    With ``traveling`` every participant is scanned at every site, else participants are
    spread round-robin over the sites.
    """
    rng = np.random.default_rng(seed)
    shifts = {s: rng.normal(0.0, site_shift, n_features) if site_shift else np.zeros(n_features) for s in sites}
    scales = {s: np.exp(rng.normal(0.0, site_scale, n_features)) for s in sites}
    slopes = np.linspace(-1.0, 1.0, n_features) * age_slope
    feats, truth, rows = [], [], []
    for i in range(n_subjects):
        home = sites[i % len(sites)]
        lo, hi = (age_ranges or {}).get(home, (20.0, 80.0))
        age = rng.uniform(lo, hi)
        sex = "M" if rng.random() < 0.5 else "F"
        dx = "AD" if rng.random() < 0.5 else "CN"
        person = 10.0 + slopes * age + 0.8 * (sex == "M") + 0.6 * (dx == "AD") + rng.normal(0, noise, n_features)
        for site in (sites if traveling else [home]):
            value = person + rng.normal(0, scan_noise, n_features)
            truth.append(value)
            feats.append(10.0 + (value - 10.0) * scales[site] + shifts[site])
            row = {"participant_id": f"sub-{i:03d}", "site": site, "age": age, "sex": sex}
            if diagnosis:
                row["diagnosis"] = dx
            rows.append(row)
    index = pd.Index([f"scan-{k:04d}" for k in range(len(rows))])
    columns = [f"roi{j}" for j in range(n_features)]
    return (pd.DataFrame(feats, index=index, columns=columns), pd.DataFrame(rows, index=index),
            pd.DataFrame(truth, index=index, columns=columns))


class MeanShift:
    """Removes each site's mean (learnt in fit) and adds the pooled mean: the exact inverse of a pure shift."""

    def fit(self, features, covariates):
        self.grand_ = features.mean()
        self.means_ = {s: features[covariates["site"] == s].mean() for s in covariates["site"].unique()}
        return self

    def transform(self, features, covariates):
        out = features.copy()
        for site in covariates["site"].unique():
            mask = (covariates["site"] == site).to_numpy()
            out.loc[mask] = features.loc[mask] - self.means_[site] + self.grand_
        return out
