"""Entry point of the ``bidsharmony`` command: levels, exit codes, one-line errors."""

from __future__ import annotations

import copy
import logging
import os
import sys
import traceback
import uuid
from datetime import datetime, timezone
from pathlib import Path

from ..config import ANALYSIS_LEVELS, Config
from ..errors import EXIT_ERROR, EXIT_OK, BidsharmonyError, UnknownLevelError

LOGGER = logging.getLogger("bidsharmony")


def _make_run_id_unique(config: Config) -> None:
    """Append a random suffix to the run id (a start-up time stamp) unless it has one.

    Array jobs start many processes into one output folder within the same second; the
    suffix keeps their log and settings files (named after the run id) apart.
    """
    if "_" not in config.run_uuid:
        config.run_uuid = f"{config.run_uuid}_{uuid.uuid4().hex[:8]}"


def _setup_logging(config: Config) -> Path:
    """Log to the console (level from -v) and to ``<output>/logs/bidsharmony-<run>.log``."""
    log_file = config.output_dir / "logs" / f"bidsharmony-{config.run_uuid}.log"
    log_file.parent.mkdir(parents=True, exist_ok=True)
    console = logging.StreamHandler(sys.stdout)
    console.setLevel(logging.DEBUG if config.verbosity > 1 else logging.INFO)
    console.setFormatter(logging.Formatter("%(asctime)s %(name)s %(levelname)s: %(message)s", "%H:%M:%S"))
    to_file = logging.FileHandler(log_file)
    to_file.setLevel(logging.DEBUG)
    to_file.setFormatter(logging.Formatter("%(asctime)s %(name)s %(levelname)s: %(message)s"))
    LOGGER.handlers[:] = [console, to_file]
    LOGGER.setLevel(logging.DEBUG)
    LOGGER.propagate = False
    return log_file


def check_inputs(config: Config) -> None:
    """Everything that can be refused before any work starts, each with its exit code."""
    from ..utils.bids import check_paths, check_writable, read_dataset_description, validate_bids

    if config.analysis_level not in ANALYSIS_LEVELS:
        raise UnknownLevelError(
            f"unknown analysis level {config.analysis_level!r}: choose one of "
            f"{', '.join(ANALYSIS_LEVELS)}"
        )
    check_paths(config.bids_dir, config.output_dir, config.work_dir)
    if config.skip_bids_validation:
        read_dataset_description(config.bids_dir)
    else:
        # the group level on tables given on the command line reads no subject folder
        tables = [t for t in (config.features, config.covariates) if t] if config.analysis_level == "group" else []
        validate_bids(config.bids_dir, require_subjects=not tables, exempt=tables)
    check_writable(config.output_dir, config.work_dir)


def run(config: Config) -> int:
    """Run one analysis level; return the exit code."""
    check_inputs(config)
    _make_run_id_unique(config)
    _setup_logging(config)
    from ..templates import use_templateflow_home
    from ..utils.seeding import seed_everything

    # ITK reads its thread count once per process: set it before any antspyx import, so
    # the interfaces run in-process instead of paying for a subprocess each.
    os.environ["ITK_GLOBAL_DEFAULT_NUMBER_OF_THREADS"] = str(config.omp_nthreads)
    os.environ.setdefault("NIPYPE_NO_ET", "1")
    use_templateflow_home(config.templateflow_home)
    seed_everything(config.random_seed)
    config_file = config.write_log()
    LOGGER.info("bidsharmony %s, %s level; settings in %s", config.version, config.analysis_level, config_file)
    if config.analysis_level == "participant":
        from .participant import run_participant

        run_participant(config)
    else:
        from ..harmonize.errors import CovariateError, FeatureError
        from .group import run_group

        try:
            run_group(config)
        except (CovariateError, FeatureError) as err:
            raise _naming_group_source(config, err) from None
    return EXIT_OK


def _naming_group_source(config: Config, error: BidsharmonyError) -> BidsharmonyError:
    """Prefix a harmonizer's covariate or feature error with the file the values came from.

    The harmonizers know nothing of files (they take tables), so their messages name columns,
    codes and sites; the user needs the file to edit as well. Same class, same exit code.
    """
    from ..harmonize.errors import CovariateError

    if isinstance(error, CovariateError):
        source = str(config.covariates or Path(config.bids_dir) / "participants.tsv")
    else:
        source = str(config.features or f"the ROI tables under {config.output_dir}")
    message = str(error)
    if source in message:
        return error
    named = copy.copy(error)
    named.args = (f"{source}: {message}",)
    return named


def _crash_report(config: Config | None, error: BaseException) -> Path | None:
    """Keep the full traceback in the output's logs folder, for a bug report."""
    if config is None:
        return None
    stamp = datetime.now(timezone.utc).strftime("%Y%m%d-%H%M%S")
    path = config.output_dir / "logs" / f"crash-{stamp}_{uuid.uuid4().hex[:8]}.txt"  # unique under job arrays
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text("".join(traceback.format_exception(error)))
    except OSError:
        return None
    return path


def main(argv: list[str] | None = None) -> None:
    """``bidsharmony bids_dir output_dir {participant,group} [options]``."""
    from .parser import parse_args

    config = None
    try:
        config = parse_args(argv)
        code = run(config)
    except BidsharmonyError as err:
        print(f"bidsharmony: error: {err}", file=sys.stderr)
        code = err.exit_code
    except KeyboardInterrupt:
        print("bidsharmony: interrupted; re-run the same command to resume", file=sys.stderr)
        code = 130
    except Exception as err:  # noqa: BLE001 - last line of defence: one line, traceback on disk
        report = _crash_report(config, err)
        where = f" (traceback in {report})" if report else ""
        print(f"bidsharmony: error: {type(err).__name__}: {err}{where}", file=sys.stderr)
        code = EXIT_ERROR
    sys.exit(code)
