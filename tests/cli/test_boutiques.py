"""The committed Boutiques descriptor is the parser's, valid, and its commands parse."""

import json
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from bidsharmony.cli.boutiques import build_descriptor
from bidsharmony.cli.parser import build_parser

DESCRIPTOR = Path(__file__).parents[2] / "boutiques" / "bidsharmony.json"
BOSH = shutil.which("bosh", path=str(Path(sys.executable).parent)) or shutil.which("bosh")


def test_committed_descriptor_matches_parser():
    committed = json.loads(DESCRIPTOR.read_text())
    assert committed == json.loads(json.dumps(build_descriptor())), (
        "boutiques/bidsharmony.json is stale: run python -m bidsharmony.cli.boutiques boutiques/bidsharmony.json"
    )


@pytest.mark.skipif(BOSH is None, reason="boutiques is not installed (pip install .[test])")
def test_bosh_validates_and_simulates_a_command_the_parser_accepts(tmp_path):
    subprocess.run([BOSH, "validate", str(DESCRIPTOR)], check=True, capture_output=True)
    invocation = {
        "bids_dir": "/data/bids",
        "output_dir": "/data/out",
        "analysis_level": "participant",
        "participant_label": ["01", "02"],
        "nprocs": 2,
        "random_seed": 7,
        "skip_bids_validation": True,
        "output_spaces": ["MNI152NLin2009aSym:res-2"],
    }
    path = tmp_path / "invocation.json"
    path.write_text(json.dumps(invocation))
    out = subprocess.run(
        [BOSH, "exec", "simulate", str(DESCRIPTOR), "-i", str(path)], check=True, capture_output=True, text=True
    ).stdout
    command = next(line for line in out.splitlines() if line.startswith("bidsharmony "))
    args = build_parser().parse_args(shlex.split(command)[1:])
    assert args.participant_label == ["01", "02"]
    assert args.nprocs == 2 and args.random_seed == 7 and args.skip_bids_validation
    assert args.output_spaces == ["MNI152NLin2009aSym:res-2"]
    assert str(args.bids_dir) == "/data/bids" and args.analysis_level == "participant"
