"""What a Python source file imports, read with :mod:`ast` (nothing is imported). Used for the
reproducibility key's training sources (include/mlops_core/reproducibility.py) and the scheduler's
preload list (plugins/mlops_airflow/worker_preload.py)."""

from __future__ import annotations

import ast
from pathlib import Path


def imported_names(source: Path) -> set[str]:
    """Absolute module names that ``source`` imports anywhere, at module level or inside a
    function (``from a import b`` gives ``a`` and ``a.b``: ``b`` may be a module)."""
    names: set[str] = set()
    for node in ast.walk(ast.parse(source.read_text(), str(source))):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
            names.add(node.module)
            names.update(f"{node.module}.{alias.name}" for alias in node.names
                         if alias.name != "*")
    return names
