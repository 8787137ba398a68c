"""Template-space synthetic scans: travelers share anatomy, sites differ, truth follows biology."""

import numpy as np
import pytest

from bidsharmony.datasets.synthetic import intensity_map
from bidsharmony.datasets.template_space import make_template_scans


@pytest.fixture(scope="module")
def data():
    return make_template_scans(n_subjects=12, n_sites=3, n_traveling=2, resolution=4, seed=3)


def test_travelers_share_anatomy_not_appearance(data):
    rows = data.traveler_rows("sub-T01")
    assert sorted(rows) == ["siteA", "siteB", "siteC"]
    first, *others = rows.values()
    for row in others:
        np.testing.assert_array_equal(data.scans.masks[row], data.scans.masks[first])
        np.testing.assert_array_equal(data.sitefree[row], data.sitefree[first])
    medians = {s: np.median(data.scans.images[r][data.scans.masks[r]]) for s, r in rows.items()}
    assert max(medians.values()) / min(medians.values()) > 1.2


def test_scans_follow_the_site_intensity_map_without_bias(data):
    """After N4 (bias=False) a scan is the site's intensity map of the site-free image plus noise."""
    for row in range(len(data.scans)):
        site = next(s for s in data.sites if s["name"] == data.scans.sites[row])
        mask = data.scans.masks[row]
        expected = intensity_map(data.sitefree[row][mask], site)
        residual = data.scans.images[row][mask] - expected
        assert abs(np.median(residual)) < 0.05 * np.median(expected)


def test_truth_volumes_follow_age(data):
    table = data.scans.covariates.assign(**data.truth[["brain_volume_mm3", "ventricle_volume_mm3"]])
    single = table[~table["traveling"]]
    assert np.corrcoef(single["age"], single["ventricle_volume_mm3"])[0, 1] > 0.5
    assert np.corrcoef(single["age"], single["brain_volume_mm3"])[0, 1] < -0.5


def test_same_seed_same_scans(data):
    again = make_template_scans(n_subjects=12, n_sites=3, n_traveling=2, resolution=4, seed=3)
    np.testing.assert_array_equal(again.scans.images[5], data.scans.images[5])
    assert again.truth.equals(data.truth)
