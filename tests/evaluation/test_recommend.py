"""The recommended method follows the written rule, whatever the order of the rows."""

import pandas as pd
import pytest

from bidsharmony.evaluation import recommend_method


def _summary(rows):
    columns = ["method", "site_balanced_accuracy", "site_balanced_accuracy_sd", "cross_site_age_mae",
               "age_effect_r_vs_raw"]
    return pd.DataFrame(rows, columns=columns)


ROWS = [
    ("raw", 0.60, 0.02, 11.5, 1.0),
    ("combat", 0.113, 0.010, 11.15, 0.999),
    ("covbat", 0.111, 0.010, 11.13, 0.998),
    ("flow-scm", 0.142, 0.012, 11.05, 0.999),
    ("wipes-age", 0.070, 0.010, 10.00, 0.40),
    ("TarOnly", None, None, 9.0, None),
]


@pytest.mark.parametrize("order", [ROWS, ROWS[::-1]])
def test_the_lowest_age_error_among_the_methods_tied_on_site_removal_is_chosen(order):
    pick = recommend_method(_summary(order), raw_method="raw")
    # wipes-age removes the most site signal, but changes the age effects: not a candidate
    assert "wipes-age" in pick["excluded"] and "0.400" in pick["excluded"]["wipes-age"]
    # flow-SCM's better age error does not count: its site predictability is > 1 SD from the best
    assert pick["indistinguishable"] == ["covbat", "combat"]
    assert pick["method"] == "covbat" and "11.13" in pick["reason"]


def test_a_wider_spread_brings_more_methods_into_the_tie():
    rows = [(m, site, 0.05 if m == "covbat" else sd, mae, r) for m, site, sd, mae, r in ROWS]
    pick = recommend_method(_summary(rows), raw_method="raw")
    assert set(pick["indistinguishable"]) == {"covbat", "combat", "flow-scm"}
    assert pick["method"] == "flow-scm"


def test_a_method_keeping_age_effects_less_well_than_the_others_is_excluded():
    rows = ROWS[:4] + [("smooths-age", 0.05, 0.01, 10.0, 0.93)]
    pick = recommend_method(_summary(rows), raw_method="raw")
    assert "best 0.999" in pick["excluded"]["smooths-age"] and pick["method"] == "covbat"


def test_nothing_is_recommended_when_every_method_changes_the_biology():
    pick = recommend_method(_summary([ROWS[0], ROWS[4]]), raw_method="raw")
    assert pick["method"] is None and "wipes-age" in pick["reason"]
