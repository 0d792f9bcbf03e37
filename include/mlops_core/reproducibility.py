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

from include.mlops_core import __version__
from include.mlops_core.config import DatasetConfig

PACKAGE_ROOT = Path(__file__).resolve().parent
TRACKED_PACKAGES = ("scikit-learn", "pandas", "numpy", "pyarrow", "mlflow-skinny", "mlflow",
                    "great-expectations", "skops", "scipy", "xgboost", "xgboost-cpu")


# The code that turns a partition into a model: these modules, what they import from this
# package (at module level or inside functions), and these functions of pipeline.py (the rest of
# pipeline.py evaluates, gates and registers: editing it must not retrain every model).
TRAINING_MODULES = ("modeling", "ingest")
TRAINING_PIPELINE_FUNCTIONS = ("ingest", "build_features", "train")


def _package_imports(path: Path) -> set[str]:
    """This package's modules that ``path`` imports anywhere (``include.mlops_core.<name>``)."""
    from include.mlops_core.sources import imported_names

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


def _training_code() -> dict[str, bytes]:
    """The pieces :func:`source_hash` covers, by name: ``<module>.py`` and ``pipeline.<function>``."""
    import ast

    pieces = {f"{name}.py": (PACKAGE_ROOT / f"{name}.py").read_bytes() for name in training_sources()}
    pipeline = (PACKAGE_ROOT / "pipeline.py").read_text()
    functions = {node.name: ast.get_source_segment(pipeline, node)
                 for node in ast.parse(pipeline).body if isinstance(node, ast.FunctionDef)}
    for name in TRAINING_PIPELINE_FUNCTIONS:
        pieces[f"pipeline.{name}"] = functions[name].encode()
    return pieces


@lru_cache(maxsize=1)
def source_digests() -> dict[str, str]:
    """sha256 of each piece of the training code (:func:`_training_code`): what the manifest
    records, so that a later run can name the modules that changed."""
    return {name: hashlib.sha256(body).hexdigest() for name, body in _training_code().items()}


@lru_cache(maxsize=1)
def source_hash() -> str:
    """sha256 of the code that trains a model: the modules of :func:`training_sources` (path
    and content) and the training functions of pipeline.py (their source). An edit anywhere
    else in the package (drift, scoring, the gate, a docstring of ``promote``) leaves it, and
    so every champion's repro key, unchanged."""
    digest = hashlib.sha256()
    for name, body in _training_code().items():
        digest.update(name.encode())
        digest.update(body)
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
    """Same key = same model. Code enters as the hash of the ML sources (include/mlops_core), not the
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
        "sources": source_digests(),
        "package_version": __version__,
        "params": training_params(config),
        "seed": config.training.seed,
        "packages": package_versions(),
    }


# -- what differs from the champion -----------------------------------------------------------------
SHOWN = 5  # names listed per kind of change; the rest are counted


def _names(items: list[str]) -> str:
    shown = ", ".join(items[:SHOWN])
    return shown + (f" and {len(items) - SHOWN} more" if len(items) > SHOWN else "")


def _flat(value: Any, prefix: str = "") -> dict[str, Any]:
    """``{"training.hyperparameters.max_iter": 150, ...}``; lists of named dicts by name."""
    if isinstance(value, dict):
        out: dict[str, Any] = {}
        for key, item in value.items():
            out.update(_flat(item, f"{prefix}{key}."))
        return out
    if isinstance(value, list) and value and all(isinstance(v, dict) and "name" in v for v in value):
        return _flat({v["name"]: {k: x for k, x in v.items() if k != "name"} for v in value}, prefix)
    return {prefix.rstrip("."): value}


def _compare(old: dict[str, Any], new: dict[str, Any]) -> tuple[list[str], list[str], list[str]]:
    """Keys added, removed, and present in both with another value; each sorted."""
    return (sorted(set(new) - set(old)), sorted(set(old) - set(new)),
            sorted(k for k in set(old) & set(new) if old[k] != new[k]))


def _listed(kinds: list[tuple[str, list[str]]]) -> list[str]:
    """``"<label>: <names>"`` for each kind of change that has any."""
    return [f"{label}: {_names(items)}" for label, items in kinds if items]


def data_changes(old_files: list[dict[str, Any]], new_files: list[dict[str, Any]]) -> list[str]:
    """Files added, removed and changed (same name, other size or ETag), by their key under the
    source root: the same files under another prefix are no change."""
    def by_key(files: list[dict[str, Any]]) -> dict[str, tuple[Any, Any]]:
        return {str(f.get("key") or f["uri"]): (f.get("size"), f.get("etag")) for f in files}

    old, new = by_key(old_files), by_key(new_files)
    added, removed, changed = _compare(old, new)
    details = [f"{k} (size {old[k][0]} -> {new[k][0]})" if old[k][0] != new[k][0]
               else f"{k} (same size, new content)" for k in changed]
    return _listed([(f"{len(added)} file(s) added", added),
                    (f"{len(removed)} file(s) removed", removed),
                    (f"{len(changed)} file(s) changed", details)])


def code_changes(old_sources: dict[str, str] | None, old_hash: str | None) -> list[str]:
    """The training-code pieces (modules, pipeline functions) whose content differs."""
    new = source_digests()
    if old_sources is None:
        if old_hash is None or old_hash == source_hash():
            return []
        return [f"training code changed (source hash {old_hash[:12]} -> {source_hash()[:12]}; "
                "the champion's manifest predates per-module hashes)"]
    added, removed, changed = _compare(old_sources, new)
    return _listed([("source changed", changed), ("source added to the training path", added),
                    ("source no longer on the training path", removed)])


def param_changes(old_params: dict[str, Any], new_params: dict[str, Any]) -> list[str]:
    """Each training param that differs, with its old and new value."""
    old, new = _flat(old_params), _flat(new_params)
    keys = sorted(set(old) | set(new))
    diffs = [f"{k}: {json.dumps(old.get(k), default=str)} -> {json.dumps(new.get(k), default=str)}"
             for k in keys if old.get(k) != new.get(k)]
    return [f"param {_names(diffs)}"] if diffs else []


def differences(champion_manifest: dict[str, Any], files: list[dict[str, Any]],
                config: DatasetConfig) -> list[str]:
    """What differs between the champion's reproducibility manifest and this run's inputs: one
    line per kind of change, naming files, source modules and params with their values.
    ``champion_manifest`` may be partial (rebuilt from the version's tags): what it lacks is
    not compared."""
    lines: list[str] = []
    old_data = champion_manifest.get("data") or {}
    if "files" in old_data:
        lines += data_changes(old_data["files"], files)
    elif old_data.get("fingerprint") and old_data["fingerprint"] != _fingerprint(files):
        lines.append(f"data fingerprint {old_data['fingerprint'][:12]} -> "
                     f"{_fingerprint(files)[:12]} (the champion's file list is not available)")
    lines += code_changes(champion_manifest.get("sources"), champion_manifest.get("source_hash"))
    if "params" in champion_manifest:
        old_params = champion_manifest["params"]
        new_params = {k: v for k, v in training_params(config).items() if k in old_params}
        lines += param_changes(old_params, new_params)
    return lines


def _fingerprint(files: list[dict[str, Any]]) -> str:
    from include.mlops_core.ingest import fingerprint

    return fingerprint(files)
