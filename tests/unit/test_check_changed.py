"""``check_changed`` names what differs from the champion: files added, removed or changed,
source modules, params with their old and new values (include/mlops_core/pipeline.py,
include/mlops_core/reproducibility.py). Real files under a temporary folder, the package's real
sources; the champion's manifest is the one ``reproducibility.manifest`` writes."""

from __future__ import annotations

import json
import shutil
from datetime import date
from pathlib import Path
from typing import Any

import pytest

from include.mlops_core import reproducibility
from include.mlops_core.demo_data import write_partitions
from include.mlops_core.ingest import discover
from include.mlops_core.pipeline import check_changed
from include.mlops_core.storage import ObjectStore
from tests.unit.helpers import churn_config

DAYS = [date(2025, 3, 1), date(2025, 3, 2)]


@pytest.fixture
def source(tmp_path: Path) -> str:
    root = tmp_path / "data"
    write_partitions(ObjectStore(), str(root), DAYS[0], 2, rows=200)
    return str(root)


def champion_of(config: Any, source: str, *, run_id: str = "other-run") -> tuple[dict, dict]:
    """A champion trained on ``source`` with ``config``: its alias lookup and its manifest."""
    listing = discover(config, ObjectStore(), DAYS)
    data = {"fingerprint": listing.fingerprint, "source_uri": config.source_uri,
            "partitions": sorted({f["partition"] for f in listing.files}), "row_count": 400,
            "files": [{**f, "rows": 200} for f in listing.files]}
    manifest = json.loads(json.dumps(reproducibility.manifest(
        config=config, data_manifest=data, snapshot_uri="s3://x/snap.parquet"), default=str))
    tags = {"mlops.repro_key": manifest["repro_key"], "airflow.run_id": run_id,
            "mlops.data_fingerprint": listing.fingerprint,
            "mlops.source_hash": manifest["source_hash"],
            "mlops.params": json.dumps(manifest["params"]["training"], sort_keys=True)}
    return {"version": "3", "run_id": "r1", "tags": tags}, manifest


def run(config: Any, champion: dict, manifest: dict | None) -> dict[str, Any]:
    return check_changed(config, ObjectStore(), DAYS, champion, dag_run_id="this-run",
                         champion_manifest=(lambda: manifest) if manifest is not None else None)


def test_the_same_inputs_elsewhere_are_unchanged(source: str, tmp_path: Path) -> None:
    """The user's case: identical files moved to another prefix retrain nothing."""
    champion, manifest = champion_of(churn_config(source_uri=source), source)
    moved = tmp_path / "moved"
    shutil.copytree(source, moved)

    result = run(churn_config(source_uri=str(moved)), champion, manifest)

    assert result["changed"] is False, result
    assert "equal those of champion churn_demo v3" in result["reason"]


def test_names_added_removed_and_changed_files(source: str) -> None:
    config = churn_config(source_uri=source)
    champion, manifest = champion_of(config, source)
    root = Path(source)
    (root / "date=2025-03-01" / "part-1.csv").write_bytes(
        (root / "date=2025-03-01" / "part-0.csv").read_bytes())
    (root / "date=2025-03-02" / "part-0.csv").unlink()
    (root / "date=2025-03-02" / "part-2.csv").write_bytes(b"a,b\n1,2\n")
    with (root / "date=2025-03-01" / "part-0.csv").open("ab") as fh:
        fh.write(b"")  # same bytes: no change
    result = run(config, champion, manifest)

    assert result["changed"] is True
    assert result["differences"] == [
        "2 file(s) added: date=2025-03-01/part-1.csv, date=2025-03-02/part-2.csv",
        "1 file(s) removed: date=2025-03-02/part-0.csv"], result
    assert result["reason"].startswith("differs from champion churn_demo v3: 2 file(s) added")


def test_names_a_file_rewritten_in_place_with_its_sizes(source: str) -> None:
    config = churn_config(source_uri=source)
    champion, manifest = champion_of(config, source)
    path = Path(source) / "date=2025-03-02" / "part-0.csv"
    before = path.stat().st_size
    lines = path.read_bytes().splitlines(keepends=True)
    path.write_bytes(b"".join(lines[:-1]))

    result = run(config, champion, manifest)

    assert result["differences"] == [
        f"1 file(s) changed: date=2025-03-02/part-0.csv (size {before} -> {path.stat().st_size})"]


def test_names_each_param_with_old_and_new_value(source: str) -> None:
    champion, manifest = champion_of(churn_config(source_uri=source), source)
    config = churn_config(source_uri=source, training={"seed": 7,
                                                       "hyperparameters": {"max_iter": 300}})
    result = run(config, champion, manifest)

    assert result["differences"] == [
        "param training.hyperparameters.max_iter: 150 -> 300, training.seed: 42 -> 7"], result


def test_without_the_manifest_the_tags_still_name_the_params(source: str) -> None:
    champion, _ = champion_of(churn_config(source_uri=source), source)
    config = churn_config(source_uri=source, training={"test_size": 0.3})

    result = run(config, champion, None)

    assert result["differences"] == ["param training.test_size: 0.25 -> 0.3"], result


def test_a_manifest_that_cannot_be_read_falls_back_to_the_tags(source: str,
                                                               caplog: Any) -> None:
    champion, _ = champion_of(churn_config(source_uri=source), source)
    (Path(source) / "date=2025-03-01" / "part-9.csv").write_bytes(b"x\n")

    def unreadable() -> dict:
        raise OSError("artifact store down")

    result = check_changed(churn_config(source_uri=source), ObjectStore(), DAYS, champion,
                           dag_run_id="this-run", champion_manifest=unreadable)

    assert result["changed"] is True
    assert len(result["differences"]) == 1
    assert result["differences"][0].startswith("data fingerprint ")
    assert "champion's file list is not available" in result["differences"][0]
    assert "artifact store down" in caplog.text


def test_names_the_source_module_that_changed(source: str, package_copy: Path) -> None:
    config = churn_config(source_uri=source)
    champion, manifest = champion_of(config, source)
    with (package_copy / "modeling.py").open("a") as fh:
        fh.write("\n# a change to the training code\n")
    reproducibility.source_hash.cache_clear()
    reproducibility.source_digests.cache_clear()

    result = run(config, champion, manifest)

    assert result["differences"] == ["source changed: modeling.py"], result
    del manifest["sources"]  # a champion from before per-module hashes
    older = run(config, champion, manifest)
    assert older["differences"][0].startswith("training code changed (source hash "), older


def test_no_champion_and_force_say_so(source: str) -> None:
    config = churn_config(source_uri=source)
    assert check_changed(config, ObjectStore(), DAYS, None, dag_run_id="r")["reason"] == \
        "no champion yet"
    champion, manifest = champion_of(config, source)
    forced = check_changed(config, ObjectStore(), DAYS, champion, dag_run_id="r", force=True)
    assert forced["changed"] is True and forced["reason"] == "forced by the 'force' param"
