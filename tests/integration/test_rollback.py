"""Rollback end to end, against a real MLflow server and a real S3 store (dag.test):

- ``performance_monitor`` rolls a champion promoted minutes ago back to the one before it when
  its live metrics fall below the floor (``rollback.auto_window_hours`` of the dataset), the
  smoke test checks the restored version predicts and that the serving endpoint serves it, an
  alert says so, and the retrain alert still goes out;
- the ``rollback`` DAG by hand: to a version named in ``to_version`` (roll forward), then to the
  previous champion from the audit trail; a version that does not exist is refused with the
  classified line and nothing moves.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import date
from pathlib import Path
from typing import Any

import pytest

from include.mlops_core.demo_data import write_labels, write_partitions
from tests.integration.conftest import REPO, champion_of, datasets_dir

STUMP = {"family": "hist_gradient_boosting",
         "hyperparameters": {"max_iter": 1, "max_leaf_nodes": 2, "learning_rate": 0.1}}
DATASET = "churn_rollback"


@pytest.fixture
def rollback_datasets(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> str:
    """The bundled datasets plus ``churn_rollback``: the demo with automatic rollback within
    24 h of a promotion (a deployment's setting: no run can change it)."""
    folder = datasets_dir(tmp_path / "datasets", {DATASET: "rollback:\n  auto_window_hours: 24\n"})
    monkeypatch.setenv("MLOPS_DATASETS_DIR", str(folder))
    return DATASET


@contextmanager
def serving(services: Any, model: str, log: Path) -> Iterator[str]:
    """``python -m include.mlops_core.serving serve`` for ``model`` as ./deploy.sh serve runs it (the
    read-only MLflow login; the alias checked every second); its URL once it serves."""
    from stack import MLFLOW_VIEWER, free_port

    from include.mlops_core.serving import served_models

    port = free_port()
    env = {key: value for key, value in os.environ.items()
           if not key.startswith(("MLFLOW_", "AWS_", "AIRFLOW_CONN_"))}
    env.update(MLFLOW_TRACKING_USERNAME=MLFLOW_VIEWER, PYTHONPATH=str(REPO),
               MLFLOW_TRACKING_PASSWORD=services.secrets["MLOPS_MLFLOW_VIEWER_PASSWORD"])
    with log.open("wb") as out:
        proc = subprocess.Popen(
            [sys.executable, "-m", "include.mlops_core.serving", "serve", "--model", model,
             "--tracking-uri", services.mlflow_url, "--port", str(port), "--poll-seconds", "1"],
            cwd=log.parent, env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 90
        while True:
            assert proc.poll() is None, f"the server exited:\n{log.read_text()[-3000:]}"
            try:
                if served_models(url, timeout=2).get(model):
                    break
            except Exception:  # noqa: BLE001 - not up yet
                pass
            assert time.monotonic() < deadline, f"not serving after 90 s:\n{log.read_text()}"
            time.sleep(0.3)
        yield url
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            proc.kill()


def test_a_fresh_champion_below_the_floor_is_rolled_back_then_by_hand_forward_and_back(
        services, run_dag, run_any_dag, dagbag, rollback_datasets, alert_sinks, tmp_path,
        monkeypatch):
    store, client, model = services.store(), services.mlflow_client(), "it_rollback"
    source, labels = f"s3://mlops-data/{model}", f"s3://mlops-data/{model}-labels"
    write_partitions(store, source, date(2025, 10, 1), 3, rows=1500)
    write_labels(store, labels, date(2025, 10, 3), 1, rows=1500)
    common = {"dataset": DATASET, "model_name": model}
    # v1 a weak stump, v2 a full model that beats it: v2 is @champion, promoted from v1.
    first = run_dag("2025-10-02", **common, source_uri=source, training=STUMP,
                    gate={"thresholds": []})
    assert first.state == "success", first.error_lines()
    # (dag.test keeps the last run's Params on the DAG object: every run says all it sets.)
    second = run_dag("2025-10-03", **common, source_uri=source, lookback_days=2,
                     training={"hyperparameters": {"max_iter": 150, "max_leaf_nodes": 31}},
                     gate={"thresholds": []})
    assert second.state == "success", second.error_lines()
    assert champion_of(client, model) == "2"

    with serving(services, model, tmp_path / "serving.log") as url:
        monkeypatch.setenv("MLOPS_SERVING_URL", url)  # the workers' setting (dag.test: here)
        _rolled_back_and_served(services, run_dag, run_any_dag, dagbag, alert_sinks, url,
                                model=model, source=source, labels=labels, common=common)


def _rolled_back_and_served(services, run_dag, run_any_dag, dagbag, alert_sinks, url, *, model,
                            source, labels, common):
    from include.mlops_core.serving import served_models

    store, client = services.store(), services.mlflow_client()
    assert served_models(url) == {model: "2"}
    monitoring = {"scoring_uri": source, "labels_uri": labels}
    conf = {**common, "partition_date": "2025-10-03", "monitoring": monitoring}
    scored = run_any_dag(dagbag.get_dag("batch_scoring"), "2025-10-04", **conf)
    assert scored.state == "success", scored.error_lines()
    # No model reaches roc_auc 0.999 on live labels: v2, promoted a minute ago, is below it.
    perf = run_any_dag(dagbag.get_dag("performance_monitor"), "2025-10-05",
                       **{**conf, "monitoring": {**monitoring,
                                                 "performance_floor": ["roc_auc >= 0.999"]}})

    assert perf.state == "success", perf.error_lines()
    assert {t: perf.tasks[t] for t in ("auto_rollback", "smoke_test", "performance_degraded")} \
        == dict.fromkeys(("auto_rollback", "smoke_test", "performance_degraded"), "success")
    assert champion_of(client, model) == "1"
    assert f"Rolled back {model} @champion from v2 to v1; verified; audit s3://mlops/audit/" \
           f"{model}/rollback-v000001-from-2-" in perf.log
    assert f"{model} v1 loads and predicts 5 rows of its training data" in perf.log
    # The smoke test waited for the server to pick up v1 (no restart) and asked it.
    assert f"Serving endpoint {url} serves {model} v1 and answered 5 rows in " in perf.log
    assert served_models(url) == {model: "1"}
    tags = client.get_model_version(model, "2").tags
    assert tags["audit.rolled_back_to"] == "1"
    assert "below the floor (roc_auc >= 0.999 (observed 0." in tags["audit.rolled_back_reason"]
    assert "within rollback.auto_window_hours 24 h" in tags["audit.rolled_back_reason"]
    records = {o.uri.rsplit("/", 1)[-1]: json.loads(store.read_bytes(o.uri))
               for o in store.list(f"s3://mlops/audit/{model}")}
    auto = next(r for name, r in records.items() if name.startswith("rollback-"))
    assert (auto["from_version"], auto["to_version"], auto["trigger"]) == \
        ("2", "1", "automatic (performance_monitor)")
    assert "audit trail: v2 was promoted from v1" in auto["how"]
    alert_sinks.wait(3)  # promoted v1, promoted v2, rolled back
    post = next(p for p in alert_sinks.posts if p["event"] == "rolled_back")
    assert post["subject"] == f"[mlops] ROLLED BACK: performance_monitor.auto_rollback ({model})"
    assert post["reason"].startswith(f"{model} @champion rolled back from v2 to v1, automatic "
                                     "(performance_monitor): live performance of"), post["reason"]
    assert post["runbook"] == "docs/runbooks/rollback.md"
    assert post["links"]["Audit record"].startswith(f"s3://mlops/audit/{model}/rollback-")

    rollback = dagbag.get_dag("rollback")
    # By hand, forward to v2 (a version that passed the gate), then back along the audit trail.
    forward = run_any_dag(rollback, "2025-10-06", **common, to_version="2",
                          reason="the floor was set too high")
    assert forward.state == "success", forward.error_lines()
    assert forward.tasks == {"rollback": "success", "smoke_test": "success"}
    assert not forward.error_lines(), forward.error_lines()  # a success logs no error line
    assert champion_of(client, model) == "2"
    assert f"Serving endpoint {url} serves {model} v2 and answered 5 rows" in forward.log
    back = run_any_dag(rollback, "2025-10-07", **common, to_version=None,
                       reason="back to the audit trail's previous champion")
    assert back.state == "success", back.error_lines()
    assert champion_of(client, model) == "1"
    assert "the champion before v2 (audit trail: v2 was promoted from v1" in back.log
    assert client.get_model_version(model, "1").tags["audit.restored_by"] == \
        f"airflow:rollback/{back.run_id}"

    # A version that does not exist: refused with the classified line, nothing moves.
    refused = run_any_dag(rollback, "2025-10-08", **common, to_version="9",
                          reason="typo in the version")
    assert refused.state == "failed" and refused.tasks["smoke_test"] == "upstream_failed"
    assert refused.final_error().endswith(
        f"{model} has no version 9 in the registry (runbook: docs/runbooks/rollback.md)"), \
        refused.final_error()
    assert champion_of(client, model) == "1"
    assert len([n for n in (o.uri for o in store.list(f"s3://mlops/audit/{model}"))
                if "/rollback-" in n]) == 3
    everything = "\n".join([perf.log, forward.log, back.log, refused.log,
                            *(m.raw for m in alert_sinks.mails), *map(str, alert_sinks.posts)])
    for secret in [*alert_sinks.secrets(), *services.secrets.values()]:
        assert len(secret) < 8 or secret not in everything, "a secret reached a log or alert"
