"""docs/rest-api.md, run as written: every ```python block of the page, in order, in one
namespace, with the official client against the scheduler stack's api-server (auth on), the way
a user pastes them. The page's settings come from the environment, as it says."""

from __future__ import annotations

import re
from datetime import UTC, datetime, timedelta
from pathlib import Path

from include.mlops_core.demo_data import write_partitions
from tests.integration.conftest import APPROVAL_DATASET, champion_of

PAGE = Path(__file__).resolve().parents[2] / "docs" / "rest-api.md"


def recipes() -> list[str]:
    return re.findall(r"```python\n(.*?)```", PAGE.read_text(), flags=re.S)


STUMP = {"family": "hist_gradient_boosting",
         "hyperparameters": {"max_iter": 1, "max_leaf_nodes": 2, "learning_rate": 0.1}}


def test_every_recipe_runs_as_written(services, airflow, run_dag, monkeypatch, capfd):
    model, source = "it_rest", "s3://mlops-data/it_rest"
    # No logical date: the run covers the last full UTC day, so that is the day with data.
    yesterday = datetime.now(UTC).date() - timedelta(days=1)
    write_partitions(services.store(), source, yesterday - timedelta(days=1), 2, rows=1000)
    # A weak champion v1 before the recipes run (dag.test, in this process): the recipes' run
    # beats it, and the rollback recipe has a champion to go back to.
    seeded = run_dag(str(yesterday), model_name=model, source_uri=source,  # reads the day before
                     training=STUMP, gate={"thresholds": []})
    assert seeded.state == "success" and champion_of(services.mlflow_client(), model) == "1", \
        seeded.error_lines()
    capfd.readouterr()
    monkeypatch.setenv("AIRFLOW_URL", airflow.api.url)
    monkeypatch.setenv("AIRFLOW_USERNAME", "operator")
    monkeypatch.setenv("AIRFLOW_PASSWORD", services.secrets["MLOPS_AIRFLOW_OPERATOR_PASSWORD"])
    monkeypatch.setenv("AIRFLOW_VIEWER_PASSWORD", services.secrets["MLOPS_AIRFLOW_VIEWER_PASSWORD"])
    monkeypatch.setenv("MLOPS_RUN_CONF",
                       f'{{"dataset": "{APPROVAL_DATASET}", "model_name": "{model}", '
                       f'"source_uri": "{source}"}}')
    blocks = recipes()
    assert len(blocks) == 9, "a recipe was added or removed: say here what it must print"

    namespace: dict = {"__name__": "recipes"}
    for block in blocks:
        exec(compile(block, str(PAGE), "exec"), namespace)  # noqa: S102 - the page's own code
    out = capfd.readouterr().out

    run_id = namespace["run_id"]
    assert f"triggered {run_id}" in out
    # The dataset asks for approval: the recipe found the request and answered it.
    assert f"Promote {model} v2?" in out and "answered Approve" in out, out[-3000:]
    assert f"{run_id} success" in out, out[-3000:]
    assert re.search(r"^promote\s+success\s+try 1$", out, flags=re.M), out
    assert "Training: " in out and "champion v1" in out  # check_changed's log, over REST
    links = namespace["links"]
    assert links["MLflow run"].startswith(f"{services.mlflow_url}/#/runs/")
    assert links["Model version"] == f"{services.mlflow_url}/#/models/{model}/versions/2"
    # The rollback recipe: v2 → v1, the champion before it in the audit trail.
    rolled = re.search(r"^rollback success (\{.*\})$", out, flags=re.M)
    assert rolled, out[-3000:]
    assert "'version': '1'" in rolled.group(1) and "'previous': '2'" in rolled.group(1), rolled
    assert champion_of(services.mlflow_client(), model) == "1"
    assert isinstance(namespace["events"], list)
    assert "viewer may not trigger: 403" in out
    assert out.rstrip().endswith("success")  # the viewer reads the run
