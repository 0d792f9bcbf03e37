"""Layering: include/ is plain Python (no Airflow), and parsing a DAG file stays cheap (no
pandas, scikit-learn, MLflow, Great Expectations or Evidently at import time)."""

from __future__ import annotations

import ast
import json
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
INCLUDE_FILES = sorted((REPO / "include").rglob("*.py"))
HEAVY = ("pandas", "sklearn", "mlflow", "great_expectations", "evidently")


def imported_modules(path: Path) -> set[str]:
    names: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names.add(node.module)
        elif isinstance(node, ast.Call) and getattr(node.func, "attr", getattr(node.func, "id", "")) \
                in ("import_module", "__import__") and node.args \
                and isinstance(node.args[0], ast.Constant) and isinstance(node.args[0].value, str):
            names.add(node.args[0].value)
    return names


def test_the_scan_covers_every_module_of_the_include_package() -> None:
    """The files the layering tests read are exactly the modules Python can import from
    ``include`` (found by the import system, not by a file glob): none is left unchecked."""
    import pkgutil

    import include

    importable = {"include", *(m.name for m in pkgutil.walk_packages(include.__path__, "include."))}
    scanned = {".".join(p.relative_to(REPO).with_suffix("").parts).removesuffix(".__init__")
               for p in INCLUDE_FILES}
    assert scanned == importable
    assert {"include.mlops_core.config", "include.mlops_core.pipeline", "include.mlops_core.tuning"} <= scanned


def test_import_scan_sees_every_import_form(tmp_path: Path) -> None:
    sample = tmp_path / "sample.py"
    sample.write_text(
        "import os, airflow\n"
        "from airflow.sdk import DAG\n"
        "from . import sibling\n"
        "def f():\n"
        "    import airflow.models.dag as d\n"
        "    importlib.import_module('airflow.hooks')\n")
    assert imported_modules(sample) == {"os", "airflow", "airflow.sdk", "airflow.models.dag",
                                        "airflow.hooks"}


@pytest.mark.parametrize(
    "path", [pytest.param(p, id=str(p.relative_to(REPO))) for p in INCLUDE_FILES])
def test_include_module_does_not_import_airflow(path: Path) -> None:
    offending = sorted(m for m in imported_modules(path) if m == "airflow" or m.startswith("airflow."))
    assert offending == [], f"{path.relative_to(REPO)} imports {offending}"


def run_python(code: str) -> dict[str, object]:
    """Run ``code`` in a fresh interpreter with the repo and plugins/ on sys.path (as Airflow's
    dag-processor has them) and the test environment from tests/conftest.py."""
    prelude = f"import sys, json\nsys.path[:0] = [{str(REPO)!r}, {str(REPO / 'plugins')!r}]\n"
    done = subprocess.run([sys.executable, "-c", prelude + code], cwd=REPO, capture_output=True,
                          text=True, timeout=120, check=False)
    assert done.returncode == 0, done.stderr[-3000:]
    return json.loads(done.stdout.strip().splitlines()[-1])


def test_importing_every_include_module_does_not_import_airflow() -> None:
    modules = sorted(
        ".".join(p.relative_to(REPO).with_suffix("").parts) for p in INCLUDE_FILES
        if p.name != "__init__.py")
    code = "".join(f"import {m}\n" for m in modules) + \
        "print(json.dumps(sorted(m for m in sys.modules if m.split('.')[0] == 'airflow')))\n"
    assert run_python(code) == []


def test_parsing_the_training_dag_does_not_import_ml_libraries() -> None:
    code = (
        "import importlib.util\n"
        f"spec = importlib.util.spec_from_file_location('training_dag', {str(REPO / 'dags' / 'training.py')!r})\n"
        "module = importlib.util.module_from_spec(spec)\n"
        "spec.loader.exec_module(module)\n"
        "assert module.__dict__.get('DAG') is not None\n"
        f"print(json.dumps({{m: m in sys.modules for m in {list(HEAVY)!r} + ['airflow']}}))\n"
    )
    loaded = run_python(code)
    assert loaded.pop("airflow") is True  # the file really was parsed with Airflow
    assert loaded == dict.fromkeys(HEAVY, False)
