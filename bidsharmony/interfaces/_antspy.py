"""Run antspyx work with a chosen ITK thread count and ANTs random seed.

ITK reads ``ITK_GLOBAL_DEFAULT_NUMBER_OF_THREADS`` once, the first time a process uses it
(measured: changing the variable afterwards changes nothing). Setting the variable "for one
call" therefore only works in a process that has not used ITK yet. :func:`run_antspyx` runs
a call in the current process when that process already asks ITK for the requested number
of threads (the variable is set to it, e.g. by the command line at start-up from
``--omp-nthreads``), and otherwise in a fresh Python subprocess whose environment carries
the thread count. Either way ``ANTS_RANDOM_SEED`` is set for the call, and antspyx's
temporary files land in a scratch folder of the working directory that is removed after.

The functions run this way take and return only JSON-able values (paths, numbers, lists),
so they can cross the process boundary; they live at module level so the subprocess can
import them by name.
"""

from __future__ import annotations

import importlib
import json
import os
import shutil
import subprocess
import sys
import tempfile
import traceback
from contextlib import contextmanager
from pathlib import Path

from ..errors import BidsharmonyError

ITK_THREADS_VAR = "ITK_GLOBAL_DEFAULT_NUMBER_OF_THREADS"
ANTS_SEED_VAR = "ANTS_RANDOM_SEED"
_PACKAGE_PARENT = str(Path(__file__).resolve().parents[2])


def ants_seed(seed: int) -> int:
    """The seed ANTs receives for our ``random_seed``: ``seed + 1`` (mod 2^31 - 1).

    ANTs reads a seed of 0 as "seed from the clock" (antsRegistration ``--random-seed``:
    "any nonzero int value"; measured: two runs with seed 0 differed), while 0 is our
    default; shifting by one keeps every seed, 0 included, reproducible and distinct.
    """
    return int(seed) % (2**31 - 1) + 1


def itk_threads_of_this_process() -> int | None:
    """The ITK thread count this process asks for, if it sets one through the environment."""
    value = os.environ.get(ITK_THREADS_VAR, "")
    return int(value) if value.strip().isdigit() else None


@contextmanager
def _patched_environ(values: dict[str, str]):
    """Set environment variables for the duration of a block, then restore them."""
    saved = {key: os.environ.get(key) for key in values}
    os.environ.update(values)
    try:
        yield
    finally:
        for key, old in saved.items():
            if old is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = old


@contextmanager
def _scratch_tempdir(workdir: Path):
    """Point :mod:`tempfile` at a scratch folder in ``workdir`` and delete it afterwards.

    antspyx writes intermediate files (Atropos probabilities, registration outputs) with
    ``tempfile.mktemp`` and never removes them; keeping them in the node's folder stops
    ``/tmp`` from filling up over a large dataset.
    """
    scratch = Path(tempfile.mkdtemp(prefix=".antspyx-tmp-", dir=workdir))
    saved = tempfile.tempdir
    tempfile.tempdir = str(scratch)
    try:
        yield scratch
    finally:
        tempfile.tempdir = saved
        shutil.rmtree(scratch, ignore_errors=True)


def _resolve(module: str, name: str):
    return getattr(importlib.import_module(module), name)


def run_antspyx(func, *, num_threads: int = 1, seed: int = 0, workdir=None, **kwargs):
    """Call ``func(**kwargs)`` with ITK on ``num_threads`` threads and ANTs seeded.

    Parameters
    ----------
    func : callable
        A module-level function taking and returning JSON-able values.
    num_threads : int
        ITK threads for the call.
    seed : int
        Sets ``ANTS_RANDOM_SEED`` (to :func:`ants_seed`) for the call; functions that run
        antsRegistration also take it as their own ``random_seed`` argument.
    workdir : path-like, optional
        Folder for the scratch files and the subprocess log (default: current folder).
    **kwargs
        Arguments of ``func``.

    Returns
    -------
    object
        What ``func`` returns.
    """
    workdir = Path(workdir or os.getcwd())
    env = {ITK_THREADS_VAR: str(int(num_threads)), ANTS_SEED_VAR: str(ants_seed(seed))}
    if itk_threads_of_this_process() == int(num_threads):
        with _patched_environ(env), _scratch_tempdir(workdir):
            return func(**kwargs)
    return _run_in_subprocess(func, env, workdir, kwargs)


def _run_in_subprocess(func, env: dict[str, str], workdir: Path, kwargs: dict):
    """Run ``func`` in a new Python process with ``env`` added to its environment."""
    request = {"module": func.__module__, "name": func.__name__, "kwargs": kwargs}
    fd, request_file = tempfile.mkstemp(prefix=".antspyx-call-", suffix=".json", dir=workdir)
    os.close(fd)
    request_file = Path(request_file)
    result_file = request_file.with_suffix(".result.json")
    log_file = workdir / f"antspyx_{func.__name__}.log"
    request_file.write_text(json.dumps(request))
    child_env = dict(os.environ, **env)
    # The package may run from a source checkout that is not installed; make it importable.
    child_env["PYTHONPATH"] = os.pathsep.join(
        p for p in (_PACKAGE_PARENT, os.environ.get("PYTHONPATH", "")) if p
    )
    try:
        with open(log_file, "w") as log:
            completed = subprocess.run(
                [sys.executable, "-m", __name__, str(request_file), str(result_file)],
                cwd=workdir,
                env=child_env,
                stdout=log,
                stderr=subprocess.STDOUT,
                check=False,
            )
        if not result_file.exists():
            tail = log_file.read_text()[-2000:]
            raise RuntimeError(
                f"{func.__name__} crashed in its antspyx subprocess (exit code "
                f"{completed.returncode}); its output ends with:\n{tail}"
            )
        result = json.loads(result_file.read_text())
    finally:
        request_file.unlink(missing_ok=True)
        result_file.unlink(missing_ok=True)
    if "error" in result:
        _raise_child_error(func.__name__, result["error"])
    return result["value"]


def _raise_child_error(name: str, error: dict):
    """Re-raise an error of the subprocess: a user-facing one keeps its class and line."""
    try:
        cls = _resolve(error["module"], error["type"])
    except (ImportError, AttributeError):
        cls = None
    if isinstance(cls, type) and issubclass(cls, BidsharmonyError):
        raise cls(error["message"])
    raise RuntimeError(f"{name} failed in its antspyx subprocess:\n{error['traceback']}")


def _child_main(request_file: str, result_file: str) -> int:
    """Entry point of the subprocess: run the requested function, write its result."""
    request = json.loads(Path(request_file).read_text())
    workdir = Path(os.getcwd())
    try:
        func = _resolve(request["module"], request["name"])
        with _scratch_tempdir(workdir):
            outcome = {"value": func(**request["kwargs"])}
    except Exception as exc:  # reported to the parent, which re-raises it
        outcome = {
            "error": {
                "module": type(exc).__module__,
                "type": type(exc).__name__,
                "message": str(exc),
                "traceback": traceback.format_exc(),
            }
        }
    Path(result_file).write_text(json.dumps(outcome))
    return 0


if __name__ == "__main__":
    sys.exit(_child_main(sys.argv[1], sys.argv[2]))
