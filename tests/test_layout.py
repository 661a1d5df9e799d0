"""The libraries stay libraries: ``predictor/`` and ``search_spaces/`` never import the
search or the CLI (they are used by it, not the other way round)."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).parent.parent
FORBIDDEN = ("nars.search", "nars.cli", "nars.commands")


def _imports(path: Path) -> list[str]:
    names = []
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            names += [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.append(node.module)
    return names


@pytest.mark.parametrize("library", ["predictor", "search_spaces"])
def test_libraries_never_import_the_search_or_the_cli(library):
    files = sorted((ROOT / library).rglob("*.py"))
    assert files
    upward = [f"{f.relative_to(ROOT)}: {name}" for f in files for name in _imports(f)
              if name.startswith(FORBIDDEN)]
    assert upward == []
