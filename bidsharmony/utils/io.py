"""Atomic file writing: a crash never leaves a half-written file under its final name."""

from __future__ import annotations

import filecmp
import json
import os
import shutil
import tempfile
from contextlib import contextmanager
from pathlib import Path


@contextmanager
def atomic_path(path: str | os.PathLike):
    """Yield a temporary path beside ``path``; rename it onto ``path`` on success.

    The temporary file sits in the same folder (so the rename is atomic on POSIX) and keeps
    the final name's suffixes, so writers that pick a format from the extension
    (``.nii.gz``, ``.tsv``) still do the right thing. On error it is removed.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    suffixes = "".join(path.suffixes)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=f".tmp{suffixes}", dir=path.parent)
    os.close(fd)
    tmp = Path(tmp)
    try:
        yield tmp
        os.chmod(tmp, 0o644)
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()


def atomic_write_text(path: str | os.PathLike, text: str, keep_identical: bool = False) -> Path:
    """Write ``text`` to ``path`` atomically and return the path.

    ``keep_identical``: leave ``path`` untouched (same mtime) when it already holds ``text``.
    """
    if keep_identical and Path(path).is_file() and Path(path).read_text() == text:
        return Path(path)
    with atomic_path(path) as tmp:
        tmp.write_text(text)
    return Path(path)


def atomic_write_json(path: str | os.PathLike, data, keep_identical: bool = False) -> Path:
    """Write ``data`` as indented, key-sorted JSON to ``path`` atomically (see :func:`atomic_write_text`)."""
    return atomic_write_text(path, json.dumps(data, indent=2, sort_keys=True, default=str) + "\n", keep_identical)


def atomic_copy(src: str | os.PathLike, dst: str | os.PathLike, keep_identical: bool = False) -> Path:
    """Copy ``src`` to ``dst`` atomically (metadata not kept) and return ``dst``.

    ``keep_identical``: leave ``dst`` untouched (same mtime) when its bytes equal ``src``'s.
    """
    if keep_identical and Path(dst).is_file() and filecmp.cmp(src, dst, shallow=False):
        return Path(dst)
    with atomic_path(dst) as tmp:
        shutil.copyfile(src, tmp)
    return Path(dst)
