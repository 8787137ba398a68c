"""scripts/container/compare_outputs.py: what CI accepts as "the same run" in and out of the image."""

import importlib.util
import json
import shutil
from pathlib import Path

import numpy as np

_SCRIPT = Path(__file__).parents[2] / "scripts" / "container" / "compare_outputs.py"
_spec = importlib.util.spec_from_file_location("compare_outputs", _SCRIPT)
compare_outputs = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(compare_outputs)


def _run_folder(root: Path, python: str, created: str, bids: str) -> Path:
    anat = root / "sub-01" / "anat"
    anat.mkdir(parents=True)
    (anat / "sub-01_desc-volume_morph.tsv").write_text("participant_id\tvolume_GM\nsub-01\t612345.5\n")
    (anat / "sub-01_desc-volume_morph.json").write_text(json.dumps({
        "Sources": ["bids:raw:sub-01/anat/sub-01_T1w.nii.gz"], "RawDataset": f"file://{bids}",
        "GeneratedBy": [{"Name": "bidsharmony", "Version": "0.1"}, {"Name": "python", "Version": python}],
        "created": created,
    }))
    np.savez(root / "weights.npz", gamma=np.arange(6.0))
    (root / "work").mkdir()
    (root / "work" / "node.pklz").write_bytes(bytes([len(created)]))  # the work folder is skipped
    return root


def test_runs_that_differ_only_in_when_and_where_agree(tmp_path):
    host = _run_folder(tmp_path / "host", "3.11.7", "2026-01-01T00:00", "/home/me/bids")
    inside = _run_folder(tmp_path / "inside", "3.11.2", "2026-01-02T10:00:00", "/data/bids")
    problems, counts = compare_outputs.compare(host, inside, {"/home/me/bids": "/data/bids"})
    assert problems == [] and counts == {".tsv": 1, ".json": 1, ".npz": 1}


def test_a_changed_number_a_changed_sidecar_and_a_missing_file_are_each_reported(tmp_path):
    host = _run_folder(tmp_path / "host", "3.11.7", "t0", "/data/bids")
    inside = _run_folder(tmp_path / "inside", "3.11.7", "t1", "/data/bids")
    tsv = inside / "sub-01" / "anat" / "sub-01_desc-volume_morph.tsv"
    tsv.write_text(tsv.read_text().replace("612345.5", "612345.6"))
    sidecar = inside / "sub-01" / "anat" / "sub-01_desc-volume_morph.json"
    meta = json.loads(sidecar.read_text())
    meta["GeneratedBy"][0]["Version"] = "0.2"
    sidecar.write_text(json.dumps(meta))
    np.savez(inside / "weights.npz", gamma=np.arange(6.0) + 1e-12)
    shutil.copy(tsv, inside / "extra.tsv")
    problems, _ = compare_outputs.compare(host, inside, {})
    assert len(problems) == 4, problems
    assert any("extra.tsv: only inside" in p for p in problems)
    assert any("morph.tsv: contents differ" in p for p in problems)
    assert any("GeneratedBy[0].Version: '0.1' vs '0.2'" in p for p in problems)
    assert any("weights.npz: arrays differ" in p for p in problems)


def test_hdf5_header_timestamps_pass_but_data_changes_do_not():
    data = bytes(range(256)) * 400  # 100 kB: header region plus data
    header_times = bytearray(data)
    header_times[100:104] = b"\x01\x02\x03\x04"
    assert compare_outputs._h5_difference(data, bytes(header_times)) is None
    long_run = bytearray(data)
    long_run[100:112] = bytes(12)
    assert "run differs" in compare_outputs._h5_difference(data, bytes(long_run))
    payload = bytearray(data)
    payload[90000] ^= 1
    assert "in the data" in compare_outputs._h5_difference(data, bytes(payload))
