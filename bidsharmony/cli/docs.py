"""Parts of the documentation generated from the code, kept in step by a test.

``python -m bidsharmony.cli.docs README.md`` rewrites the README's table of harmonizers (between
:data:`BEGIN` and :data:`END`) from :mod:`bidsharmony.harmonize.registry`.
"""

from __future__ import annotations

import sys
from pathlib import Path

from ..harmonize import registry

BEGIN = "<!-- harmonizers: generated from bidsharmony/harmonize/registry.py by python -m bidsharmony.cli.docs README.md -->"
END = "<!-- harmonizers: end -->"


def with_method_table(text: str) -> str:
    """``text`` with the block between :data:`BEGIN` and :data:`END` replaced by the registry's table."""
    start, stop = text.index(BEGIN) + len(BEGIN), text.index(END)
    return text[:start] + "\n" + registry.markdown_table() + text[stop:]


def main(argv: list[str] | None = None) -> None:
    """Rewrite the method table of the Markdown file given (default: README.md)."""
    argv = sys.argv[1:] if argv is None else argv
    path = Path(argv[0] if argv else "README.md")
    path.write_text(with_method_table(path.read_text()))


if __name__ == "__main__":
    main()
