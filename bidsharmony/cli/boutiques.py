"""The Boutiques descriptor of the command line, generated from the parser.

``python -m bidsharmony.cli.boutiques boutiques/bidsharmony.json`` rewrites the committed
descriptor; a test checks that the committed file equals this function's output, so the
descriptor cannot drift from the parser.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from .. import __version__
from ..errors import (
    EXIT_BIDS_INVALID,
    EXIT_ERROR,
    EXIT_MISSING_INPUT,
    EXIT_NO_DATA,
    EXIT_UNKNOWN_LEVEL,
    EXIT_USAGE,
)
from .parser import build_parser

_ERROR_CODES = (
    (EXIT_ERROR, "Processing error (the message names the file and the fix)"),
    (EXIT_BIDS_INVALID, "The input is not a valid BIDS dataset"),
    (EXIT_UNKNOWN_LEVEL, "Unknown analysis level"),
    (EXIT_NO_DATA, "The filters selected no data"),
    (EXIT_USAGE, "Command-line usage error"),
    (EXIT_MISSING_INPUT, "An input file or folder is missing"),
)
_FILE_DESTS = {
    "bids_dir", "work_dir", "use_plugin", "bids_filters", "templateflow_home",
    "features", "covariates", "harmonizer_model",
}


def _input(action: argparse.Action) -> dict:
    entry = {
        "id": action.dest,
        "name": action.dest.replace("_", " ").capitalize(),
        "value-key": f"[{action.dest.upper()}]",
        "description": (action.help or "").replace("%(default)s", str(action.default)),
        "optional": bool(action.option_strings) and not action.required,
    }
    if action.option_strings:
        entry["command-line-flag"] = action.option_strings[0]
    if isinstance(action, (argparse._StoreTrueAction, argparse._CountAction)):
        entry["type"] = "Flag"
        return entry
    if action.dest in _FILE_DESTS:
        entry["type"] = "File"
    elif action.type is int or getattr(action.type, "__name__", "") == "_positive_int":
        entry.update({"type": "Number", "integer": True})
        if action.type is not int:
            entry["minimum"] = 1
    elif action.type is float:
        entry["type"] = "Number"
    else:
        entry["type"] = "String"
    if action.choices:
        entry["value-choices"] = list(action.choices)
    if action.dest == "analysis_level":
        entry["value-choices"] = ["participant", "group"]
    if action.nargs == "+":
        entry["list"] = True
        entry["min-list-entries"] = 1
    if action.default not in (None, [], {}, False) and action.option_strings:
        entry["default-value"] = action.default
    return entry


def build_descriptor() -> dict:
    """Return the Boutiques descriptor (schema 0.5) of ``bidsharmony``."""
    parser = build_parser()
    actions = [
        a for a in parser._actions
        if not isinstance(a, (argparse._HelpAction, argparse._VersionAction))
    ]
    inputs = [_input(a) for a in actions]
    return {
        "name": "bidsharmony",
        "tool-version": __version__,
        "schema-version": "0.5",
        "description": parser.description,
        "author": "The bidsharmony developers",
        "url": "https://github.com/bidsharmony/bidsharmony",
        "command-line": " ".join(["bidsharmony"] + [i["value-key"] for i in inputs]),
        "container-image": {"type": "docker", "image": f"bidsharmony/bidsharmony:{__version__}"},
        "inputs": inputs,
        "output-files": [
            {
                "id": "output_derivatives",
                "name": "BIDS-Derivatives folder",
                "path-template": "[OUTPUT_DIR]",
                "description": "Preprocessed images, ROI tables, reports and harmonized tables",
            }
        ],
        "error-codes": [{"code": code, "description": text} for code, text in _ERROR_CODES],
        "suggested-resources": {"cpu-cores": 2, "ram": 4, "walltime-estimate": 1800},
        "tags": {"domain": ["neuroinformatics", "mri", "harmonization"], "bids-app": True},
    }


def main(argv: list[str] | None = None) -> None:
    """Write the descriptor to the given path (default: stdout)."""
    argv = sys.argv[1:] if argv is None else argv
    text = json.dumps(build_descriptor(), indent=2) + "\n"
    if argv:
        Path(argv[0]).write_text(text)
    else:
        sys.stdout.write(text)


if __name__ == "__main__":
    main()
