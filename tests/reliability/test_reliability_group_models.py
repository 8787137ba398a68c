"""A saved model applied to data it does not fit, or damaged on disk: a clear error, never a
silently wrong table.

One ComBat model is fitted through the command line, then applied (``--harmonizer-model``)
to damaged inputs or after damaging its folder. Covered elsewhere: a new site through the
CLI (tests/cli/test_group_level.py::test_saved_model_applies_identically_and_refuses_a_new_site);
every model type's corrupted manifest/weights, newer schema and missing/renamed feature at the
library level (tests/harmonize/test_harmonizer_base.py).
"""

from __future__ import annotations

import contextlib
import io
import json
import shutil

import pandas as pd
import pytest

from bidsharmony.cli.run import main
from bidsharmony.errors import EXIT_ERROR
from bidsharmony.harmonize.base import SCHEMA_VERSION
from reliability_helpers import assert_one_line_error, checksums, group_argv, run_cli, write_group_inputs


@pytest.fixture(scope="module")
def fitted(tmp_path_factory):
    """Inputs and a ComBat model fitted on them through the command line (once per module)."""
    root = tmp_path_factory.mktemp("reliability_models")
    bids, features, _ = write_group_inputs(root)
    stderr = io.StringIO()
    with contextlib.redirect_stderr(stderr), contextlib.redirect_stdout(io.StringIO()), \
            pytest.raises(SystemExit) as exc:
        main([str(a) for a in group_argv(bids, root / "out", features, "--harmonizer", "combat")])
    assert exc.value.code == 0, stderr.getvalue()
    return bids, features, root / "out" / "group" / "models" / "combat"


def _apply(bids, features, model, out, capsys):
    before = checksums(bids)
    code, _, err = run_cli(group_argv(bids, out, features, "--harmonizer-model", model), capsys)
    assert checksums(bids) == before
    return code, err


def _rewrite_features(features, tmp_path, change) -> object:
    table = pd.read_csv(features, sep="\t")
    path = tmp_path / "new_features.tsv"
    change(table).to_csv(path, sep="\t", index=False)
    return path


def test_the_model_applies_to_its_own_data(fitted, tmp_path, capsys):
    """The control: without damage the same call succeeds (so the refusals below are real)."""
    bids, features, model = fitted
    code, err = _apply(bids, features, model, tmp_path / "out", capsys)
    assert code == 0, err
    assert (tmp_path / "out" / "group" / "desc-combat_morph.tsv").is_file()


def test_renamed_feature_is_refused(fitted, tmp_path, capsys):
    bids, features, model = fitted
    renamed = _rewrite_features(features, tmp_path, lambda t: t.rename(columns={"roi-002": "roi_2"}))
    code, err = _apply(bids, renamed, model, tmp_path / "out", capsys)
    assert code == EXIT_ERROR
    assert_one_line_error(err, str(renamed), "missing feature(s) 'roi-002'", "'roi_2'", "rename")
    assert not (tmp_path / "out" / "group" / "desc-combat_morph.tsv").exists()


def test_extra_feature_is_refused(fitted, tmp_path, capsys):
    bids, features, model = fitted
    extra = _rewrite_features(features, tmp_path, lambda t: t.assign(**{"roi-999": t["roi-001"] * 2}))
    code, err = _apply(bids, extra, model, tmp_path / "out", capsys)
    assert code == EXIT_ERROR
    assert_one_line_error(err, str(extra), "unexpected column(s) 'roi-999'")


@pytest.mark.parametrize("factor, units", [(1e-3, "cm3"), (1 / 8, "2 mm voxel counts")])
def test_features_in_other_units_are_refused(fitted, tmp_path, capsys, factor, units):
    """Volumes in cm³ (or voxel counts) instead of mm³: the model would return garbage."""
    bids, features, model = fitted
    scaled = _rewrite_features(features, tmp_path, lambda t: t.assign(**{
        c: t[c] * factor for c in t.columns if c.startswith("roi-")}))
    code, err = _apply(bids, scaled, model, tmp_path / "out", capsys)
    assert code == EXIT_ERROR, f"{units}: {err or 'accepted'}"
    assert_one_line_error(err, str(scaled), "units")
    assert not (tmp_path / "out" / "group" / "desc-combat_morph.tsv").exists()


def _damaged_model(model, tmp_path, damage):
    copy = tmp_path / "model"
    shutil.copytree(model, copy)
    damage(copy)
    return copy


def _flip_weight_bytes(folder):
    path = folder / "weights.npz"
    raw = bytearray(path.read_bytes())
    raw[len(raw) // 2] ^= 0xFF
    path.write_bytes(bytes(raw))


def _truncate_manifest(folder):
    path = folder / "manifest.json"
    path.write_text(path.read_text()[:200])


def _newer_schema(folder):
    path = folder / "manifest.json"
    manifest = json.loads(path.read_text())
    manifest["schema_version"] = SCHEMA_VERSION + 1
    path.write_text(json.dumps(manifest))


def _truncate_weights(folder):
    path = folder / "weights.npz"
    path.write_bytes(path.read_bytes()[:100])


MODEL_DAMAGE = {
    "weights_bit_flip": (_flip_weight_bytes, ("weights.npz", "corrupted", "refit")),
    "weights_truncated": (_truncate_weights, ("weights.npz", "corrupted", "refit")),
    "manifest_truncated": (_truncate_manifest, ("manifest.json", "corrupted")),
    "newer_schema": (_newer_schema, (f"schema version {SCHEMA_VERSION + 1}", "upgrade bidsharmony")),
    "weights_missing": (lambda f: (f / "weights.npz").unlink(), ("weights.npz is missing", "refit")),
}


@pytest.mark.parametrize("case", sorted(MODEL_DAMAGE))
def test_damaged_model_is_refused(fitted, tmp_path, capsys, case):
    bids, features, model = fitted
    damage, needles = MODEL_DAMAGE[case]
    damaged = _damaged_model(model, tmp_path, damage)
    code, err = _apply(bids, features, damaged, tmp_path / "out", capsys)
    assert code == EXIT_ERROR
    assert_one_line_error(err, str(damaged), *needles)
    assert not (tmp_path / "out" / "group" / "desc-combat_morph.tsv").exists()
