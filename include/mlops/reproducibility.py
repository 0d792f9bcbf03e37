"""Reproducibility manifest: what it takes to rebuild a model version, and the key that tells
whether a new run would train the same model again (data + code + params)."""

from __future__ import annotations

import hashlib
import json
import platform
import subprocess
from functools import lru_cache
from importlib import metadata
from pathlib import Path
from typing import Any

from include.mlops import __version__
from include.mlops.config import DatasetConfig

PACKAGE_ROOT = Path(__file__).resolve().parent
TRACKED_PACKAGES = ("scikit-learn", "pandas", "numpy", "pyarrow", "mlflow-skinny", "mlflow",
                    "great-expectations", "skops", "scipy", "xgboost", "xgboost-cpu")


# The code that turns a partition into a model: these modules, what they import from this
# package (at module level or inside functions), and these functions of pipeline.py (the rest of
# pipeline.py evaluates, gates and registers: editing it must not retrain every model).
TRAINING_MODULES = ("modeling", "ingest")
TRAINING_PIPELINE_FUNCTIONS = ("ingest", "build_features", "train")


def _package_imports(path: Path) -> set[str]:
    """This package's modules that ``path`` imports anywhere (``include.mlops.<name>``)."""
    from include.mlops.sources import imported_names

    prefix = f"{__package__}."
    return {name[len(prefix):] for name in imported_names(path)
            if name.startswith(prefix) and (PACKAGE_ROOT / f"{name[len(prefix):]}.py").is_file()}


def training_sources() -> list[str]:
    """The package's modules the training path imports, closed over their imports; sorted."""
    todo, seen = list(TRAINING_MODULES), set()
    while todo:
        name = todo.pop()
        if name not in seen:
            seen.add(name)
            todo.extend(_package_imports(PACKAGE_ROOT / f"{name}.py"))
    return sorted(seen)


@lru_cache(maxsize=1)
def source_hash() -> str:
    """sha256 of the code that trains a model: the modules of :func:`training_sources` (path
    and content) and the training functions of pipeline.py (their source). An edit anywhere
    else in the package (drift, scoring, the gate, a docstring of ``promote``) leaves it, and
    so every champion's repro key, unchanged."""
    import ast

    digest = hashlib.sha256()
    for name in training_sources():
        digest.update(f"{name}.py".encode())
        digest.update((PACKAGE_ROOT / f"{name}.py").read_bytes())
    pipeline = (PACKAGE_ROOT / "pipeline.py").read_text()
    functions = {node.name: ast.get_source_segment(pipeline, node)
                 for node in ast.parse(pipeline).body if isinstance(node, ast.FunctionDef)}
    for name in TRAINING_PIPELINE_FUNCTIONS:
        digest.update(f"pipeline.{name}".encode())
        digest.update(functions[name].encode())
    return digest.hexdigest()


@lru_cache(maxsize=1)
def code_version() -> str:
    """The git commit when the code is a clean checkout; else package version + source hash."""
    try:
        sha = subprocess.run(["git", "-C", str(PACKAGE_ROOT), "rev-parse", "HEAD"],
                             capture_output=True, text=True, timeout=5, check=True).stdout.strip()
        dirty = subprocess.run(["git", "-C", str(PACKAGE_ROOT), "status", "--porcelain", "--",
                                str(PACKAGE_ROOT)], capture_output=True, text=True, timeout=5,
                               check=True).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return f"{__version__}+src.{source_hash()[:12]}"
    return f"git:{sha}" + (f"+dirty.{source_hash()[:12]}" if dirty else "")


def package_versions() -> dict[str, str]:
    out = {"python": platform.python_version()}
    for name in TRACKED_PACKAGES:
        try:
            out[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            continue
    return out


def training_params(config: DatasetConfig) -> dict[str, Any]:
    """Everything in the config that changes the trained model."""
    return {
        "task": config.task,
        "target": config.target,
        "features": [c.model_dump() for c in config.feature_columns],
        "training": config.training.model_dump(),
    }


def repro_key(data_fingerprint: str, config: DatasetConfig) -> str:
    """Same key = same model. Code enters as the hash of the ML sources (include/mlops), not the
    git commit, so a docs-only commit does not force a retrain."""
    payload = {"data": data_fingerprint, "code": source_hash(), "params": training_params(config)}
    return hashlib.sha256(json.dumps(payload, sort_keys=True, default=str).encode()).hexdigest()


def manifest(*, config: DatasetConfig, data_manifest: dict[str, Any],
             snapshot_uri: str) -> dict[str, Any]:
    return {
        "repro_key": repro_key(data_manifest["fingerprint"], config),
        "data": {
            "fingerprint": data_manifest["fingerprint"],
            "source_uri": data_manifest["source_uri"],
            "partitions": data_manifest["partitions"],
            "files": data_manifest["files"],
            "row_count": data_manifest["row_count"],
            "snapshot_uri": snapshot_uri,
        },
        "code_version": code_version(),
        "source_hash": source_hash(),
        "package_version": __version__,
        "params": training_params(config),
        "seed": config.training.seed,
        "packages": package_versions(),
    }
