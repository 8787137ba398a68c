"""Imports run one way (issue 23, points 2 and 4).

cli -> workflows -> evaluation -> features / images -> flows / scm -> harmonize -> utils: the
two families of methods (feature-table and image harmonizers) build on the blocks they share
(the flow layers, the causal-model engine) and on the interface in ``harmonize`` (base
classes, registry, validation), never the reverse, and neither family imports the other.

Every ``import`` statement of a package module — at the top or inside a function, relative or
absolute — is read with :mod:`ast` (nothing is imported), so a lazy import that dodges a cycle
is caught as well as a top-level one.
"""

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "bidsharmony"

#: layer -> packages of bidsharmony it must never import
ABOVE_HARMONIZERS = ("cli", "workflows", "evaluation", "reports", "interfaces")
FORBIDDEN = {
    "workflows": ("cli",),
    "evaluation": ("cli", "workflows", "interfaces"),
    # the two families of methods and the flow blocks they use, above the shared interface
    "features": ABOVE_HARMONIZERS + ("images",),
    "images": ABOVE_HARMONIZERS + ("features",),
    "flows": ABOVE_HARMONIZERS + ("features", "images"),
    "scm": ABOVE_HARMONIZERS + ("features", "images"),
    "harmonize": ABOVE_HARMONIZERS + ("features", "images", "flows", "scm"),
    "utils": ABOVE_HARMONIZERS + ("harmonize", "features", "images", "flows", "scm"),
}


def imported_modules(path: Path) -> list[tuple[int, str]]:
    """``(line, absolute module name)`` of every import in the module at ``path``."""
    parts = list(path.relative_to(PACKAGE.parent).with_suffix("").parts)
    package = parts[:-1]  # what ``from .`` means, for a module and for an ``__init__`` alike
    found = []
    for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
        if isinstance(node, ast.Import):
            found += [(node.lineno, alias.name) for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = package[: len(package) - node.level + 1] if node.level else []
            module = ".".join(base + ([node.module] if node.module else []))
            # ``from .. import evaluation`` names the module in the alias
            found += [(node.lineno, module)] + [(node.lineno, f"{module}.{alias.name}") for alias in node.names]
    return found


def test_relative_imports_are_resolved():
    here = PACKAGE / "evaluation" / "representation.py"
    names = {name for _, name in imported_modules(here)}
    assert "bidsharmony.harmonize.validation" in names and "bidsharmony.evaluation.distance" in names


@pytest.mark.parametrize("layer", sorted(FORBIDDEN))
def test_no_module_imports_a_layer_above_it(layer):
    above = tuple(f"bidsharmony.{name}" for name in FORBIDDEN[layer])
    offending = {}  # one entry per import statement, naming the first forbidden module it reaches
    for path in sorted((PACKAGE / layer).rglob("*.py")):
        for line, name in imported_modules(path):
            if name in above or name.startswith(tuple(f"{a}." for a in above)):
                offending.setdefault(f"{path.relative_to(PACKAGE.parent)}:{line}", name)
    assert not offending, "\n".join(f"{where} imports {name}" for where, name in offending.items())
