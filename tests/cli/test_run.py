"""The BIDS-App exit codes, each triggered by a real bad input."""

import hashlib
import json
import subprocess
import sys
from pathlib import Path

import nibabel as nb
import numpy as np
import pytest

from bidsharmony import __version__
from bidsharmony.cli.parser import build_parser, parse_args
from bidsharmony.cli.run import main
from bidsharmony.config import Config


def _run(argv, capsys):
    with pytest.raises(SystemExit) as exc:
        main([str(a) for a in argv])
    captured = capsys.readouterr()
    return exc.value.code, captured.out + captured.err


def _checksum(folder: Path) -> str:
    digest = hashlib.sha256()
    for path in sorted(folder.rglob("*")):
        digest.update(path.relative_to(folder).as_posix().encode())
        if path.is_file():
            digest.update(path.read_bytes())
    return digest.hexdigest()


@pytest.fixture
def tiny_bids(tmp_path):
    """A minimal valid BIDS dataset with two subjects (images are tiny, not anatomy)."""
    root = tmp_path / "bids"
    (root).mkdir()
    (root / "dataset_description.json").write_text(json.dumps({"Name": "tiny", "BIDSVersion": "1.9.0"}))
    (root / "participants.tsv").write_text("participant_id\tage\tsex\tsite\nsub-01\t30\tF\tA\nsub-02\t40\tM\tB\n")
    rng = np.random.default_rng(0)
    for sub in ("01", "02"):
        anat = root / f"sub-{sub}" / "anat"
        anat.mkdir(parents=True)
        img = nb.Nifti1Image(rng.random((8, 8, 8)).astype("float32"), np.diag([4.0, 4.0, 4.0, 1.0]))
        img.to_filename(anat / f"sub-{sub}_T1w.nii.gz")
        (anat / f"sub-{sub}_T1w.json").write_text(json.dumps({"Manufacturer": "Acme"}))
    return root


def test_version_and_help(capsys):
    code, out = _run(["--version"], capsys)
    assert code == 0 and __version__ in out
    code, out = _run(["--help"], capsys)
    assert code == 0 and "--participant-label" in out and "--random-seed" in out


def test_console_script_version():
    out = subprocess.run([sys.executable, "-m", "bidsharmony", "--version"], capture_output=True, text=True)
    assert out.returncode == 0 and out.stdout.strip() == f"bidsharmony {__version__}"


def test_usage_error_is_64(tiny_bids, tmp_path, capsys):
    code, out = _run([tiny_bids, tmp_path / "out", "participant", "--nprocs", "zero"], capsys)
    assert code == 64 and "--nprocs" in out
    code, out = _run([tiny_bids], capsys)
    assert code == 64


def test_unknown_level_is_17(tiny_bids, tmp_path, capsys):
    code, out = _run([tiny_bids, tmp_path / "out", "subject"], capsys)
    assert code == 17
    assert "unknown analysis level 'subject'" in out and "participant, group" in out


def test_missing_input_is_66(tmp_path, capsys):
    code, out = _run([tmp_path / "nowhere", tmp_path / "out", "participant"], capsys)
    assert code == 66 and "nowhere" in out and "does not exist" in out


def test_not_bids_is_16(tmp_path, capsys):
    folder = tmp_path / "notbids"
    folder.mkdir()
    code, out = _run([folder, tmp_path / "out", "participant"], capsys)
    assert code == 16 and "dataset_description.json" in out


def test_invalid_file_name_is_16_unless_skipped(tiny_bids, tmp_path, capsys):
    bad = tiny_bids / "sub-01" / "anat" / "sub-01_T1weighted.nii.gz"
    bad.write_bytes(b"")
    code, out = _run([tiny_bids, tmp_path / "out", "participant"], capsys)
    assert code == 16 and "sub-01_T1weighted.nii.gz" in out and "--skip-bids-validation" in out
    # Skipping validation gets past it; the unknown subject then stops the run with 18.
    code, out = _run(
        [tiny_bids, tmp_path / "out", "participant", "--skip-bids-validation", "--participant-label", "09"],
        capsys,
    )
    assert code == 18


def test_unknown_participant_is_18(tiny_bids, tmp_path, capsys):
    before = _checksum(tiny_bids)
    code, out = _run([tiny_bids, tmp_path / "out", "participant", "--participant-label", "sub-03"], capsys)
    assert code == 18 and "sub-03" in out and "sub-01" in out
    assert _checksum(tiny_bids) == before


def test_filters_selecting_nothing_is_18(tiny_bids, tmp_path, capsys):
    filters = tmp_path / "filters.json"
    filters.write_text(json.dumps({"t1w": {"acquisition": "mprage"}}))
    code, out = _run([tiny_bids, tmp_path / "out", "participant", "--bids-filter-file", filters], capsys)
    assert code == 18 and "acquisition=mprage" in out


def test_output_inside_input_is_refused(tiny_bids, capsys):
    before = _checksum(tiny_bids)
    code, out = _run([tiny_bids, tiny_bids / "derivatives" / "bidsharmony", "participant"], capsys)
    assert code == 64 and "inside the input dataset" in out
    assert _checksum(tiny_bids) == before


def test_group_error_is_1_and_one_line(tiny_bids, tmp_path, capsys):
    # No participant outputs yet: the group level has nothing to harmonize.
    code, out = _run([tiny_bids, tmp_path / "out", "group", "--skip-bids-validation"], capsys)
    assert code == 66 and "run the participant level first" in out
    assert "Traceback" not in out


def test_config_is_written_and_reloads(tiny_bids, tmp_path):
    config = parse_args([str(tiny_bids), str(tmp_path / "out"), "participant", "--random-seed", "42",
                         "--output-spaces", "MNI152NLin2009aSym:res-2"])
    path = config.write_log()
    assert path.parent == tmp_path / "out" / "logs" and path.name.startswith("config-")
    again = Config.from_toml(path)
    assert again.random_seed == 42
    assert (again.template, again.template_resolution) == ("MNI152NLin2009aSym", 2)
    assert again.bids_dir == tiny_bids.absolute()


def test_resources_default_to_the_cpus_this_process_may_use(tmp_path, monkeypatch):
    """As fMRIPrep: ``--nprocs`` = the CPU affinity (a scheduler's allocation, not the
    machine's core count), ``--omp-nthreads`` = one fewer, at least 1, at most 8."""
    for cpus, threads in ((1, 1), (2, 1), (6, 5), (32, 8)):
        monkeypatch.setattr("os.sched_getaffinity", lambda pid, n=cpus: set(range(n)))
        config = parse_args([str(tmp_path), str(tmp_path / "out"), "participant"])
        assert (config.nprocs, config.omp_nthreads) == (cpus, threads)
    config = parse_args([str(tmp_path), str(tmp_path / "out"), "participant", "--nprocs", "3", "--omp-nthreads", "2"])
    assert (config.nprocs, config.omp_nthreads) == (3, 2)


def test_flow_scm_defaults_of_the_command_line_are_the_harmonizers(tmp_path):
    """``--flow`` and ``--epochs`` are written in the parser, the config and the constructor:
    all three must give the same default (and the parser's choices the flows there are)."""
    from bidsharmony.harmonize import registry
    from bidsharmony.scm.flows import FLOWS

    constructor = registry.parameters("flow-scm")
    config = parse_args([str(tmp_path), str(tmp_path / "out"), "group"])
    defaults = Config(bids_dir=tmp_path, output_dir=tmp_path / "out", analysis_level="group")
    for setting, parameter in registry.method("flow-scm").settings.items():
        assert getattr(config, parameter) == getattr(defaults, parameter) == constructor[setting], setting
    flow_action = next(a for a in build_parser()._actions if "--flow" in a.option_strings)
    assert tuple(flow_action.choices) == FLOWS
