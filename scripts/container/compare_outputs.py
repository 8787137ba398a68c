"""Compare two bidsharmony output folders of the same run: outside vs inside the container.

    python scripts/container/compare_outputs.py HOST_OUT CONTAINER_OUT \
        --same-path HOST_BIDS=/data/bids

Both runs used the same inputs, options and ``--random-seed``, so every image, table, figure
and report must be byte-identical, and every JSON sidecar equal except for what records
where and when the run happened (see ``RUN_SPECIFIC``) and the paths mapped by
``--same-path``. Two binary formats carry timestamps of their own and are compared on their
content: ``.npz`` (zip member times) array by array, exactly; ``.h5`` (ITK transforms; HDF5
object headers hold modification times) byte by byte outside the first ``HDF5_HEADER_BYTES``,
and with at most 4-byte runs of differences inside it. The work folder and logs are skipped.
Exit 0 when the folders agree, 1 with one line per difference otherwise.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np

SKIPPED_DIRS = {"work", "logs"}
#: JSON keys whose values record the run, not its result: creation times, durations, the
#: interpreter (Debian's Python 3.11 in the image vs the host's), checksums of ``.npz``
#: archives (their zip headers hold times; the arrays are compared instead).
RUN_SPECIFIC = {"created", "fit_seconds", "transform_seconds", "elapsed_seconds", "sha256"}
PYTHON_KEYS = {"python", "Python"}
HDF5_HEADER_BYTES = 65536


def _files(root: Path) -> set[str]:
    return {
        p.relative_to(root).as_posix()
        for p in root.rglob("*")
        if p.is_file() and p.relative_to(root).parts[0] not in SKIPPED_DIRS
    }


def _json_differences(a, b, where: str, mapping: dict[str, str]) -> list[str]:
    if isinstance(a, dict) and isinstance(b, dict):
        out = [f"{where}: keys {sorted(set(a) ^ set(b))} in one only"] if set(a) != set(b) else []
        python_entry = str(a.get("Name")).lower() == "python"  # a GeneratedBy entry of the interpreter
        for key in sorted(set(a) & set(b)):
            if key in RUN_SPECIFIC or key in PYTHON_KEYS or (python_entry and key == "Version"):
                continue
            out += _json_differences(a[key], b[key], f"{where}.{key}", mapping)
        return out
    if isinstance(a, list) and isinstance(b, list):
        if len(a) != len(b):
            return [f"{where}: {len(a)} vs {len(b)} items"]
        return [d for i, (x, y) in enumerate(zip(a, b)) for d in _json_differences(x, y, f"{where}[{i}]", mapping)]
    if isinstance(a, str) and isinstance(b, str):
        for host, container in mapping.items():
            a = a.replace(host, container)
    return [] if a == b else [f"{where}: {a!r} vs {b!r}"]


def _h5_difference(a: bytes, b: bytes) -> str | None:
    if len(a) != len(b):
        return f"sizes {len(a)} vs {len(b)}"
    diff = np.flatnonzero(np.frombuffer(a, np.uint8) != np.frombuffer(b, np.uint8))
    if diff.size == 0:
        return None
    if diff.max() >= HDF5_HEADER_BYTES:
        return f"{diff.size} bytes differ, some in the data (offset {diff.max()})"
    runs = np.split(diff, np.flatnonzero(np.diff(diff) > 1) + 1)
    longest = max(len(r) for r in runs)
    return None if longest <= 4 else f"a {longest}-byte run differs in the HDF5 headers"


def _npz_difference(a: Path, b: Path) -> str | None:
    with np.load(a, allow_pickle=False) as x, np.load(b, allow_pickle=False) as y:
        if sorted(x.files) != sorted(y.files):
            return f"arrays {sorted(set(x.files) ^ set(y.files))} in one only"
        unequal = [k for k in x.files if not np.array_equal(x[k], y[k], equal_nan=x[k].dtype.kind == "f")]
    return f"arrays differ: {unequal[:5]}" if unequal else None


def compare(host: Path, container: Path, mapping: dict[str, str]) -> tuple[list[str], dict[str, int]]:
    """Differences between the two folders, and how many files of each kind were compared."""
    problems, counts = [], {}
    host_files, container_files = _files(host), _files(container)
    for name in sorted(host_files ^ container_files):
        problems.append(f"{name}: only {'outside' if name in host_files else 'inside'} the container")
    for name in sorted(host_files & container_files):
        a, b = host / name, container / name
        kind = "".join(Path(name).suffixes[-2:]) if name.endswith(".gz") else Path(name).suffix
        counts[kind] = counts.get(kind, 0) + 1
        if kind == ".json":
            problems += [f"{name}{d}" for d in _json_differences(
                json.loads(a.read_text()), json.loads(b.read_text()), "", mapping)]
        elif kind == ".h5":
            why = _h5_difference(a.read_bytes(), b.read_bytes())
            problems += [f"{name}: {why}"] if why else []
        elif kind == ".npz":
            why = _npz_difference(a, b)
            problems += [f"{name}: {why}"] if why else []
        elif a.read_bytes() != b.read_bytes():
            problems.append(f"{name}: contents differ")
    return problems, counts


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("host", type=Path)
    parser.add_argument("container", type=Path)
    parser.add_argument("--same-path", action="append", default=[], metavar="HOST=CONTAINER",
                        help="a path that the two runs saw under different names")
    args = parser.parse_args(argv)
    mapping = dict(item.split("=", 1) for item in args.same_path)
    problems, counts = compare(args.host, args.container, mapping)
    summary = ", ".join(f"{n} {k or 'other'}" for k, n in sorted(counts.items()))
    if problems:
        print("\n".join(problems))
        print(f"outputs differ inside vs outside the container ({len(problems)} differences; compared {summary})")
        return 1
    print(f"outputs inside and outside the container agree: {sum(counts.values())} files ({summary})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
