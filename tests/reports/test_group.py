"""The group HTML report: written, self-contained, every figure it references exists."""

import os
import re

import matplotlib
import numpy as np
import pandas as pd
import pytest

from bidsharmony.evaluation import evaluate_harmonizers
from bidsharmony.reports.group import write_group_report


def _table(n=36, traveling=True, age_ranges=None, diagnosis=True, seed=0):
    """Features = person + age + per-site shift; truth = without the shift."""
    rng = np.random.default_rng(seed)
    sites = ("A", "B", "C")
    shift = {s: rng.normal(0, 2.0, 5) for s in sites}
    rows, feats, truth = [], [], []
    for i in range(n):
        home = sites[i % 3]
        lo, hi = (age_ranges or {}).get(home, (20, 80))
        age, sex = rng.uniform(lo, hi), rng.choice(["M", "F"])
        person = 50 + 0.1 * age * np.linspace(-1, 1, 5) + rng.normal(0, 1, 5)
        for site in (sites if traveling else [home]):
            value = person + rng.normal(0, 0.1, 5)
            truth.append(value)
            feats.append(value + shift[site])
            row = {"participant_id": f"sub-{i}", "site": site, "age": age, "sex": sex}
            if diagnosis:
                row["diagnosis"] = rng.choice(["CN", "AD"])
            rows.append(row)
    index = [f"scan{k}" for k in range(len(rows))]
    columns = [f"Left-ROI-{j}" for j in range(5)]
    return (pd.DataFrame(feats, index=index, columns=columns), pd.DataFrame(rows, index=index),
            pd.DataFrame(truth, index=index, columns=columns))


class SiteMean:
    def fit(self, features, covariates):
        self.grand_ = features.mean()
        self.means_ = {s: features[covariates.site == s].mean() for s in covariates.site.unique()}
        self.log_likelihood_ = -3.0
        return self

    def transform(self, features, covariates):
        out = features.copy()
        for site in covariates.site.unique():
            mask = (covariates.site == site).to_numpy()
            out.loc[mask] = features.loc[mask] - self.means_[site] + self.grand_
        return out


def _references(page: str) -> list[str]:
    return re.findall(r"(?:src|href)='([^'#]+)'", page)


def test_full_report_references_existing_figures(tmp_path):
    features, covariates, truth = _table()
    results = evaluate_harmonizers(features, covariates, {"site-mean": SiteMean}, truth=truth, n_splits=3,
                                   mlp_epochs=3)
    backend = matplotlib.get_backend()
    path = write_group_report(results, tmp_path / "out")
    assert path == tmp_path / "out" / "group_report.html" and path.is_file()
    assert matplotlib.get_backend() == backend  # no global backend switch
    assert matplotlib.get_configdir() == os.environ["MPLCONFIGDIR"]
    page = path.read_text()
    refs = _references(page)
    pngs = [r for r in refs if r.endswith(".png")]
    assert len(pngs) >= 7
    for ref in refs:
        assert not ref.startswith("/") and "://" not in ref  # relative, offline
        assert (path.parent / ref).is_file(), ref
    for png in pngs:
        assert (path.parent / png).with_suffix(".svg").is_file()
        assert (path.parent / png).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    img = re.findall(r"<img src='([^']+)'", page)
    assert set(img) == set(pngs)
    for heading in ("At a glance", "Can the site still be recognised?", "Does a model trained at one site",
                    "Feature distributions by site", "Is the biology kept?", "Distance to the ground truth",
                    "Traveling subjects", "Model log-likelihood", "TarOnly (upper bound)", "SrcOnly (lower bound)"):
        assert heading in page, heading
    assert "<script" not in page and "stylesheet" not in page  # self-contained
    assert "Recommended for this data: site-mean" in page
    site_row = re.search(r"Site predictability \(balanced accuracy\)</td>.*?</tr>", page).group(0)
    assert f"{results.summary.loc[1, 'site_balanced_accuracy_sd']:.3f}" in site_row and " ± " in site_row
    leftovers = [p for p in path.parent.rglob("*") if ".tmp" in p.name]
    assert leftovers == []


def test_report_shows_design_warnings_and_chosen_rois(tmp_path):
    features, covariates, _ = _table(n=45, traveling=False, diagnosis=False,
                                     age_ranges={"A": (20, 35), "B": (60, 80), "C": (30, 70)})
    results = evaluate_harmonizers(features, covariates, {"site-mean": SiteMean}, n_splits=3,
                                   metrics=("site", "mmd", "biology"))
    path = write_group_report(results, tmp_path, rois=["Left-ROI-3"], filename="report.html",
                              title="My <study>")
    page = path.read_text()
    assert "My &lt;study&gt;" in page
    assert "do not overlap" in page and "has only 15 scans" in page
    assert "Left-ROI-3" in page and "chosen by the user" in page
    assert "Does a model trained at one site" not in page  # metric not run, section left out
    for ref in _references(page):
        assert (path.parent / ref).is_file()
    with pytest.raises(ValueError, match="not feature columns"):
        write_group_report(results, tmp_path, rois=["nope"])


def test_age_overlap_warnings_are_one_paragraph_and_a_column_not_one_per_pair(tmp_path):
    rng = np.random.default_rng(0)
    sites = [f"S{k}" for k in range(8)]
    covariates = pd.DataFrame({"site": np.repeat(sites, 6), "sex": ["M", "F"] * 24,
                               "age": np.concatenate([10 * k + 20 + rng.uniform(0, 5, 6) for k in range(8)])})
    covariates.index = [f"scan{k}" for k in range(len(covariates))]
    features = pd.DataFrame(rng.normal(50, 1, (48, 3)), index=covariates.index, columns=["a", "b", "c"])
    results = evaluate_harmonizers(features, covariates, {"site-mean": SiteMean}, n_splits=2, metrics=("site",))
    assert sum(w["code"] == "age_no_overlap" for w in results.warnings) == 28  # every pair, kept for the JSON
    page = write_group_report(results, tmp_path).read_text()
    assert page.count("do not overlap") == 1 and "28 of the 28 pairs of sites" in page
    s0_row = re.search(r"<tr><td class='l'>S0</td>.*?</tr>", page).group(0)
    assert "S1, S2, S3, S4, S5, S6, S7" in s0_row
