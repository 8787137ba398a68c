"""The ``bidsharmony-templateflow DIR [--resolutions 1 2]`` console script."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from ..errors import BidsharmonyError
from .cache import _populate
from .layout import DEFAULT_RESOLUTIONS



def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="bidsharmony-templateflow",
        description="Build an offline TemplateFlow cache (MNI152NLin2009aSym with tissue "
        "probabilities and the Neuromorphometrics atlas, MNI152NLin2009cAsym) from files in "
        "installed wheels. Nothing is downloaded. Then: export TEMPLATEFLOW_HOME=DIR",
    )
    parser.add_argument("home", metavar="DIR", type=Path, help="cache folder (empty or ours)")
    parser.add_argument("--resolutions", nargs="+", type=int, default=list(DEFAULT_RESOLUTIONS),
                        metavar="MM", help="voxel sizes in mm, written as res-0N (default: 1 2)")
    return parser


def main(argv=None) -> int:
    """Console script ``bidsharmony-templateflow DIR [--resolutions 1 2]``."""
    args = _parser().parse_args(argv)
    try:
        written = _populate(args.home, args.resolutions)
    except BidsharmonyError as err:
        print(f"bidsharmony-templateflow: error: {err}", file=sys.stderr)
        return err.exit_code
    home = args.home.absolute()
    for path in written:
        print(f"wrote {path}")
    if not written:
        print(f"{home} is up to date (nothing written)")
    print(f"export TEMPLATEFLOW_HOME={home}")
    return 0
