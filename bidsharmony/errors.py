"""Errors that end a run with one clear line and a BIDS-App exit code.

The exit codes follow the BIDS Apps execution specification: anything a user can
fix (bad arguments, missing or invalid input, filters that select nothing) has its
own code, so schedulers and wrappers can tell a data problem from a crash.
"""

EXIT_OK = 0
EXIT_ERROR = 1
EXIT_BIDS_INVALID = 16
EXIT_UNKNOWN_LEVEL = 17
EXIT_NO_DATA = 18
EXIT_USAGE = 64
EXIT_MISSING_INPUT = 66


class BidsharmonyError(Exception):
    """An error the user can act on; its message names the file and the fix."""

    exit_code = EXIT_ERROR


class UsageError(BidsharmonyError):
    exit_code = EXIT_USAGE


class MissingInputError(BidsharmonyError):
    exit_code = EXIT_MISSING_INPUT


class BIDSInvalidError(BidsharmonyError):
    exit_code = EXIT_BIDS_INVALID


class UnknownLevelError(BidsharmonyError):
    exit_code = EXIT_UNKNOWN_LEVEL


class NoDataSelectedError(BidsharmonyError):
    exit_code = EXIT_NO_DATA


class InputDataError(BidsharmonyError):
    """An input file exists but cannot be used as it is (corrupt, 4D, NaN...)."""

    exit_code = EXIT_ERROR


class QualityCheckError(BidsharmonyError):
    """Outputs were written, but a scan failed a sanity check (``--fail-on-qc``)."""

    exit_code = EXIT_ERROR
