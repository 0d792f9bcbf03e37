"""include/mlops_core/reproducibility.py: the repro key (data + code + params) and the manifest."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import pytest

from include.mlops_core import __version__, reproducibility
from include.mlops_core.config import DatasetConfig
from tests.unit.helpers import churn_config

FINGERPRINT = "a" * 64


def test_source_hash_is_stable_and_tracks_source_changes(package_copy: Path) -> None:
    before = reproducibility.source_hash()
    reproducibility.source_hash.cache_clear()
    assert reproducibility.source_hash() == before
    assert re.fullmatch(r"[0-9a-f]{64}", before)

    with (package_copy / "modeling.py").open("a") as fh:
        fh.write("\n# a change to the training code\n")
    reproducibility.source_hash.cache_clear()
    assert reproducibility.source_hash() != before


def _edited(package_copy: Path, module: str, old: str, new: str) -> str:
    path = package_copy / f"{module}.py"
    text = path.read_text()
    assert old in text, f"{old!r} not in {module}.py"
    path.write_text(text.replace(old, new, 1))
    reproducibility.source_hash.cache_clear()
    reproducibility.source_digests.cache_clear()
    return reproducibility.source_hash()


def test_source_hash_covers_only_what_the_training_path_imports(package_copy: Path) -> None:
    """A docstring edit in drift.py, or in pipeline.promote, must not retrain every champion."""
    # metrics: cross-validation scores choose the tuned params, so they shape the model too
    assert reproducibility.training_sources() == ["config", "errors", "ingest", "metrics",
                                                  "modeling", "storage"]
    before = reproducibility.source_hash()
    assert _edited(package_copy, "drift", '"""', '"""Edited. ') == before
    assert _edited(package_copy, "pipeline", "def promote(", "def promote(  ") == before
    assert _edited(package_copy, "scoring", '"""', '"""Edited. ') == before
    # ... while the training functions of pipeline.py, and what modeling imports, count.
    changed = _edited(package_copy, "pipeline", "def train(", "def train(  ")
    assert changed != before
    assert _edited(package_copy, "config", '"""', '"""Edited. ') != changed


def test_a_module_newly_imported_by_the_training_path_joins_the_hash(package_copy: Path) -> None:
    before = reproducibility.source_hash()
    _edited(package_copy, "modeling", "from include.mlops_core.errors import",
            "from include.mlops_core import abtest  # noqa\nfrom include.mlops_core.errors import")
    assert "abtest" in reproducibility.training_sources()
    with_abtest = reproducibility.source_hash()
    assert with_abtest != before
    assert _edited(package_copy, "abtest", '"""', '"""Edited. ') != with_abtest


def test_source_hash_ignores_non_python_files(package_copy: Path) -> None:
    before = reproducibility.source_hash()
    (package_copy / "notes.md").write_text("docs are not code")
    reproducibility.source_hash.cache_clear()
    assert reproducibility.source_hash() == before


def test_code_version_outside_git_is_version_plus_source_hash(package_copy: Path) -> None:
    assert reproducibility.code_version() == f"{__version__}+src.{reproducibility.source_hash()[:12]}"


def test_code_version_in_this_checkout_names_the_commit() -> None:
    assert re.fullmatch(r"git:[0-9a-f]{40}(\+dirty\.[0-9a-f]{12})?", reproducibility.code_version())


def _key(config: DatasetConfig, fingerprint: str = FINGERPRINT) -> str:
    return reproducibility.repro_key(fingerprint, config)


@pytest.mark.parametrize(
    ("overrides", "same"),
    [
        pytest.param({}, True, id="identical"),
        pytest.param({"gate": {"thresholds": ["roc_auc >= 0.99"], "champion_margin": 0.1}}, True,
                     id="gate-does-not-change-the-model"),
        pytest.param({"source_uri": "/elsewhere"}, True, id="location-does-not-matter"),
        pytest.param({"model_name": "renamed"}, True, id="model-name"),
        pytest.param({"min_rows": 10}, True, id="row-bounds"),
        pytest.param({"training": {"seed": 43}}, False, id="seed"),
        pytest.param({"training": {"family": "random_forest"}}, False, id="family"),
        pytest.param({"training": {"hyperparameters": {"max_iter": 151}}}, False, id="hyperparameter"),
        pytest.param({"training": {"test_size": 0.3}}, False, id="test-size"),
        pytest.param({"task": "regression", "target": "monthly_charges",
                      "gate": {"thresholds": [], "champion_metric": "rmse"},
                      "monitoring": {"performance_floor": []}}, False, id="target"),
    ],
)
def test_repro_key_changes_exactly_with_what_changes_the_model(overrides: dict[str, Any],
                                                               same: bool) -> None:
    assert (_key(churn_config()) == _key(churn_config(**overrides))) is same


def test_repro_key_changes_with_the_data() -> None:
    assert _key(churn_config()) != _key(churn_config(), "b" * 64)


def test_repro_key_changes_with_the_ml_code(package_copy: Path) -> None:
    before = _key(churn_config())
    with (package_copy / "modeling.py").open("a") as fh:
        fh.write("\n# a change to the training code\n")
    reproducibility.source_hash.cache_clear()
    reproducibility.code_version.cache_clear()
    assert _key(churn_config()) != before


def test_manifest_records_data_code_params_and_packages() -> None:
    config = churn_config()
    data = {"fingerprint": FINGERPRINT, "source_uri": "s3://mlops-data/churn",
            "partitions": ["date=2025-01-01"], "row_count": 2000, "schema": {},
            "files": [{"key": "date=2025-01-01/part-0.csv", "size": 1, "etag": "e", "rows": 2000}]}

    manifest = reproducibility.manifest(config=config, data_manifest=data,
                                        snapshot_uri="s3://mlops/churn_demo/snapshots/a.parquet")

    assert manifest["repro_key"] == _key(config)
    assert manifest["data"] == {"fingerprint": FINGERPRINT, "source_uri": "s3://mlops-data/churn",
                                "partitions": ["date=2025-01-01"], "files": data["files"],
                                "row_count": 2000,
                                "snapshot_uri": "s3://mlops/churn_demo/snapshots/a.parquet"}
    assert manifest["code_version"] == reproducibility.code_version()
    assert manifest["source_hash"] == reproducibility.source_hash()
    assert set(manifest["sources"]) == {f"{m}.py" for m in reproducibility.training_sources()} | {
        f"pipeline.{f}" for f in reproducibility.TRAINING_PIPELINE_FUNCTIONS}
    assert manifest["package_version"] == __version__
    assert manifest["seed"] == 42
    assert manifest["params"]["training"]["family"] == "hist_gradient_boosting"
    assert [f["name"] for f in manifest["params"]["features"]] == \
        [c.name for c in config.feature_columns]
    assert {"python", "scikit-learn", "pandas", "numpy"} <= set(manifest["packages"])
    assert json.loads(json.dumps(manifest)) == manifest
