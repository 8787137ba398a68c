"""Bad covariates at the group level: exit code, one line naming participants.tsv, input untouched.

The group level reads age, sex and site from the dataset's participants.tsv; each case damages
that file the way real datasets do. A non-numeric age given through ``--covariates`` is covered
by tests/cli/test_group_level.py::test_bad_covariates_are_one_line_errors; the coding rules
themselves by tests/harmonize/test_harmonizer_validation.py.
"""

from __future__ import annotations

import pandas as pd
import pytest

from bidsharmony.errors import EXIT_ERROR, EXIT_MISSING_INPUT
from reliability_helpers import assert_one_line_error, checksums, group_argv, run_cli, write_group_inputs


@pytest.fixture
def inputs(tmp_path):
    bids, features, _ = write_group_inputs(tmp_path)
    return bids, features


def _participants(bids) -> pd.DataFrame:
    return pd.read_csv(bids / "participants.tsv", sep="\t", dtype=str, keep_default_na=False)


def _edit(bids, **columns_by_row):
    """Set ``participants.tsv`` cells: ``column=(row, value)``."""
    table = _participants(bids)
    for column, (row, value) in columns_by_row.items():
        table.loc[row, column] = value
    table.to_csv(bids / "participants.tsv", sep="\t", index=False)
    return table.loc[0, "participant_id"]


def _remove(bids):
    (bids / "participants.tsv").unlink()


def _missing_age(bids):
    _edit(bids, age=(3, "n/a"))


def _empty_age(bids):
    _edit(bids, age=(3, ""))


def _text_age(bids):
    _edit(bids, age=(3, "forty"))


def _unknown_sex(bids):
    _edit(bids, sex=(3, "X"))


def _lonely_site(bids):
    """One participant alone at a fourth site."""
    _edit(bids, site=(3, "siteLonely"))


def _no_age_column(bids):
    _participants(bids).drop(columns="age").to_csv(bids / "participants.tsv", sep="\t", index=False)


def _row_missing(bids):
    _participants(bids).drop(index=3).to_csv(bids / "participants.tsv", sep="\t", index=False)


# case: (damage, exit code, text that must be in the line besides participants.tsv)
CASES = {
    "participants_tsv_missing": (_remove, EXIT_MISSING_INPUT, ("is missing", "--covariates")),
    "age_n/a": (_missing_age, EXIT_ERROR, ("age", "sub-siteA0004", "give age in years")),
    "age_empty": (_empty_age, EXIT_ERROR, ("age", "sub-siteA0004", "give age in years")),
    "age_not_a_number": (_text_age, EXIT_ERROR, ("age", "sub-siteA0004", "give age in years")),
    "age_column_missing": (_no_age_column, EXIT_ERROR, ("has no age column", "add one")),
    "unknown_sex_code": (_unknown_sex, EXIT_ERROR, ("'X'", "M/F")),
    "site_with_one_subject": (_lonely_site, EXIT_ERROR, ("siteLonely (1)", "--min-site-size")),
    "participant_row_missing": (_row_missing, EXIT_ERROR, ("sub-siteA0004", "add it")),
}


@pytest.mark.parametrize("case", sorted(CASES), ids=lambda c: c.replace("/", "_"))
def test_bad_participants_tsv_is_one_line_naming_it(case, inputs, tmp_path, capsys):
    bids, features = inputs
    damage, expected_code, needles = CASES[case]
    damage(bids)
    before = checksums(bids)
    code, _, err = run_cli(group_argv(bids, tmp_path / "out", features, "--harmonizer", "combat"), capsys)
    assert code == expected_code, err
    assert_one_line_error(err, "participants.tsv", *needles)
    assert checksums(bids) == before
    assert not (tmp_path / "out" / "group" / "desc-combat_morph.tsv").exists()
