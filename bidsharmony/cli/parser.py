"""The BIDS-App command line: argument parsing only.

``bidsharmony bids_dir output_dir {participant,group} [options]``. Checks that need the file
system (does the input exist, is it BIDS, do the filters select anything) live in
:mod:`bidsharmony.cli.run`, so that each failure gets its own BIDS-App exit code.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from .. import __version__
from ..config import DEFAULT_ATLAS, DEFAULT_TEMPLATE, Config
from ..errors import EXIT_USAGE
from ..harmonize import registry


class _BIDSAppParser(argparse.ArgumentParser):
    """An ArgumentParser whose usage errors exit with EX_USAGE (64), as BIDS Apps do."""

    def error(self, message):
        self.print_usage(sys.stderr)
        self.exit(EXIT_USAGE, f"{self.prog}: error: {message}\n")


def _label(value: str) -> str:
    """Accept ``sub-01`` or ``01`` (and ``ses-``/``ses``) and return the bare label."""
    for prefix in ("sub-", "ses-"):
        if value.startswith(prefix):
            value = value[len(prefix):]
    if not value or not value.isalnum():
        raise argparse.ArgumentTypeError(f"{value!r} is not a BIDS label (letters and digits only)")
    return value


def _positive_int(value: str) -> int:
    number = int(value)
    if number < 1:
        raise argparse.ArgumentTypeError(f"{value} must be a positive integer")
    return number


def _filter_file(value: str) -> dict:
    path = Path(value)
    if not path.is_file():
        raise argparse.ArgumentTypeError(f"BIDS filter file {path} does not exist")
    try:
        filters = json.loads(path.read_text())
    except json.JSONDecodeError as err:
        raise argparse.ArgumentTypeError(f"BIDS filter file {path} is not valid JSON: {err}")
    if not isinstance(filters, dict):
        raise argparse.ArgumentTypeError(
            f"BIDS filter file {path} must hold a JSON object such as "
            '{"t1w": {"acquisition": "mprage"}}'
        )
    return filters


def _existing_file(value: str) -> Path:
    path = Path(value)
    if not path.is_file():
        raise argparse.ArgumentTypeError(f"file {path} does not exist")
    return path


def _harmonizer_param(value: str) -> tuple[str, object]:
    """``KEY=VALUE`` → ``(key, value)``; the value is read as JSON when it can be (numbers, true)."""
    key, sep, text = value.partition("=")
    key = key.strip().replace("-", "_")
    if not sep or not key.isidentifier():
        raise argparse.ArgumentTypeError(f"{value!r} is not KEY=VALUE (e.g. flow_epochs=40)")
    try:
        parsed = json.loads(text)
    except json.JSONDecodeError:
        return key, text
    return key, text if parsed is None else parsed  # settings are saved as TOML, which has no null


def _intervention(value: str) -> tuple[str, str]:
    """``NODE=VALUE`` kept as text: ``age=+10`` is relative, ``age=70`` absolute."""
    node, sep, text = value.partition("=")
    if not sep or not node.strip() or not text.strip():
        raise argparse.ArgumentTypeError(f"{value!r} is not NODE=VALUE (e.g. age=+10, sex=F)")
    return node.strip(), text.strip()


def build_parser() -> argparse.ArgumentParser:
    """Return the parser of the ``bidsharmony`` command."""
    parser = _BIDSAppParser(
        prog="bidsharmony",
        description=(
            "Multi-site brain MRI harmonization as a BIDS App. The participant level "
            "preprocesses each T1w image (N4, brain extraction, registration to a template, "
            "tissues, atlas ROI volumes); the group level harmonizes the ROI volumes, or the "
            "template-space images, across sites."
        ),
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    _add_positional_and_general(parser)
    _add_bids_options(parser)
    _add_execution_options(parser)
    _add_participant_options(parser)
    _add_group_options(parser)
    return parser


def _add_positional_and_general(parser: argparse.ArgumentParser) -> None:
    """The three BIDS-App positional arguments, --version and --verbose."""
    parser.add_argument(
        "bids_dir", type=Path,
        help="the root folder of a BIDS dataset (read only); for the group level on tables given "
        "with --features/--covariates it needs no sub-<label> folders",
    )
    parser.add_argument("output_dir", type=Path, help="where BIDS-Derivatives are written")
    parser.add_argument(
        "analysis_level",
        metavar="{participant,group}",
        help="participant: preprocess each subject; group: harmonize across sites",
    )
    parser.add_argument("--version", action="version", version=f"bidsharmony {__version__}")
    parser.add_argument(
        "-v", "--verbose", dest="verbosity", action="count", default=0,
        help="more log output (repeat for more)",
    )


def _add_bids_options(parser: argparse.ArgumentParser) -> None:
    """Which subjects, sessions and files of the BIDS dataset are read."""
    bids = parser.add_argument_group("Selecting the data")
    bids.add_argument(
        "--participant-label", "--participant_label", nargs="+", type=_label, default=[],
        metavar="LABEL", help="subjects to process (with or without 'sub-'); default: all",
    )
    bids.add_argument(
        "--session-label", nargs="+", type=_label, default=[], metavar="LABEL",
        help="sessions to process (with or without 'ses-'); default: all",
    )
    bids.add_argument(
        "--bids-filter-file", dest="bids_filters", type=_filter_file, default={},
        metavar="FILE",
        help='JSON file of PyBIDS filters per query, e.g. {"t1w": {"acquisition": "mprage"}}',
    )
    bids.add_argument(
        "--skip-bids-validation", action="store_true", help="do not validate the input dataset"
    )


def _add_execution_options(parser: argparse.ArgumentParser) -> None:
    """Work folder, processes, threads, memory, plugin and seed."""
    perf = parser.add_argument_group("Resources and execution")
    perf.add_argument("-w", "--work-dir", type=Path, help="Nipype work folder (re-runs resume from it); default: <output_dir>/work")
    perf.add_argument("--nprocs", "--nthreads", type=_positive_int,
                      help="processes run at once (default: every CPU this process may use)")
    perf.add_argument("--omp-nthreads", type=_positive_int,
                      help="threads per process, ITK and torch (default: --nprocs - 1, at least 1, at most 8)")
    perf.add_argument("--mem-gb", type=float, help="memory the scheduler may use, in GB")
    perf.add_argument(
        "--use-plugin", type=_existing_file, metavar="FILE",
        help="Nipype plugin YAML (e.g. 'plugin: SLURMGraph' with plugin_args)",
    )
    perf.add_argument(
        "--random-seed", type=int, default=0,
        help="seeds Python, NumPy, torch and ANTs; recorded in every sidecar",
    )


def _add_participant_options(parser: argparse.ArgumentParser) -> None:
    """Template, atlas, registration, brain extraction, QC and reused derivatives."""
    anat = parser.add_argument_group("Participant level")
    anat.add_argument(
        "--output-spaces", "--template", dest="output_spaces", nargs="+",
        default=[DEFAULT_TEMPLATE], metavar="TEMPLATE",
        help="TemplateFlow template name(s); the first is the registration target",
    )
    anat.add_argument(
        "--atlas", default=DEFAULT_ATLAS,
        help="atlas name in the TemplateFlow cache, or a NIfTI label image in template space "
        "with a BIDS dseg.tsv beside it",
    )
    anat.add_argument(
        "--reg-quality", choices=("fast", "standard"), default="standard",
        help="registration iterations: fast for tests and previews",
    )
    anat.add_argument(
        "--n4-shrink-factor", type=_positive_int,
        help="N4 bias correction shrink factor (1 is full resolution and slow; default: 4, "
        "or more on voxels finer than 1.5 mm, so that N4 fits on a grid of at least 6 mm)",
    )
    anat.add_argument(
        "--skull-strip", choices=("deepbet", "ants"), default="deepbet",
        help="brain extraction: deepbet (default) segments the brain with deepbet's neural "
        "networks on the CPU, then the brain is registered to the brain template; ants "
        "registers the head (cropped to 170 mm below its top) to the template and warps the "
        "template's brain mask back",
    )
    anat.add_argument(
        "--fail-on-qc", action="store_true",
        help="exit non-zero when a scan fails a sanity check of its brain mask (volume, "
        "position in the head, field of view, tissue shares); without it a failed check is "
        "written into the sidecars, the report and the final summary, and the run goes on",
    )
    anat.add_argument(
        "--derivatives", type=Path, nargs="+", metavar="PATH",
        help="existing preprocessing derivatives (fMRIPrep/sMRIPrep: desc-preproc_T1w, "
        "desc-brain_mask, transforms to the template) reused instead of recomputed",
    )
    anat.add_argument(
        "--templateflow-home", type=Path,
        help="TemplateFlow cache folder (default: $TEMPLATEFLOW_HOME, else a bidsharmony "
        "cache filled from data shipped in installed packages)",
    )


def _add_group_options(parser: argparse.ArgumentParser) -> None:
    """Sites, harmonizers and their settings, inputs, saved models and evaluation."""
    group = parser.add_argument_group("Group level")
    group.add_argument(
        "--site-column",
        help="participants.tsv column naming the site; default: derived from the T1w sidecars "
        "(Manufacturer, ManufacturersModelName, MagneticFieldStrength, InstitutionName)",
    )
    group.add_argument(
        "--harmonizer", nargs="+", choices=registry.names(), default=[], metavar="METHOD",
        help=registry.help_text(),
    )
    group.add_argument(
        "--harmonizer-param", nargs="+", type=_harmonizer_param, default=[], metavar="KEY=VALUE",
        dest="harmonizer_params",
        help="constructor argument of the chosen harmonizer(s), e.g. flow_epochs=40 "
        "slice_size=32 (see the harmonizer's documentation); given to every chosen harmonizer "
        "that has it",
    )
    group.add_argument("--reference-site", help="site every scan is harmonized to")
    group.add_argument(
        "--counterfactual", nargs="+", type=_intervention, default=[], metavar="NODE=VALUE",
        help="deepscm-image: also draw each scan's counterfactual under each intervention "
        "(nodes age, sex, site, brain_volume, ventricle_volume; +/- makes it relative, e.g. "
        "age=+10) with difference maps, in group/figures/",
    )
    group.add_argument(
        "--features", type=_existing_file, metavar="FILE",
        help="harmonize an existing feature table (TSV/CSV with participant_id, optional "
        "session_id) instead of the participant level's ROI tables: one row per scan, every "
        "other column a number (site, age, sex, diagnosis are ignored), volumes > 0 (modelled "
        "on a log scale; for features that are not volumes pass --harmonizer-param "
        "log_features=false); a table breaking a rule is refused naming the rows and columns",
    )
    group.add_argument(
        "--covariates", type=_existing_file, metavar="FILE",
        help="TSV with participant_id (optional session_id), age, sex and site, one row per "
        "participant (or scan); default: the dataset's participants.tsv (and sessions.tsv)",
    )
    group.add_argument(
        "--protect", nargs="+", default=[], metavar="COLUMN",
        help="covariate columns (participants.tsv or --covariates) whose effect every harmonizer "
        "keeps, e.g. a diagnosis: numbers are modelled linearly, a column with two values as 0/1. "
        "An effect not declared here that differs between sites (a disease more common at one "
        "site) cannot be told apart from the site effect and is partly removed",
    )
    group.add_argument(
        "--harmonizer-model", type=Path, metavar="DIR",
        help="apply a saved model (group/models/<method>) to new scans without refitting",
    )
    group.add_argument(
        "--flow", choices=("affine", "linear-spline", "quadratic-spline"), default="affine",
        help="flow-scm: conditional flow of the ROI features",
    )
    group.add_argument(
        "--adapt-new-site", action="store_true",
        help="with --harmonizer-model (flow-scm): learn only the conditioning of sites the model "
        "never saw, every fitted weight frozen, then harmonize",
    )
    group.add_argument(
        "--epochs", type=_positive_int, default=20,
        help="flow-scm: training epochs (enough for the affine flow; the spline flows need ~100)",
    )
    group.add_argument(
        "--min-site-size", type=_positive_int, default=10,
        help="refuse sites with fewer scans than this (estimates of small sites are unreliable)",
    )
    group.add_argument(
        "--evaluate", action="store_true",
        help="compare the harmonizers leakage-safely (cross-validated) and write an HTML report",
    )
    group.add_argument(
        "--evaluate-repeats", type=_positive_int, default=3,
        help="--evaluate: repeat the cross-validation with new folds and seeds (--random-seed, +1, ...) "
             "this many times; the report's ± is the SD over all folds of all repeats",
    )


def parse_args(argv: list[str] | None = None) -> Config:
    """Parse ``argv`` (default: ``sys.argv[1:]``) into a :class:`~bidsharmony.config.Config`."""
    args = vars(build_parser().parse_args(argv))
    args["harmonizer_params"] = dict(args["harmonizer_params"])
    args["counterfactual"] = dict(args["counterfactual"])
    return Config(**args)
