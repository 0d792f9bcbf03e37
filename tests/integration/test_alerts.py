"""Alerts from real DAG runs to a real SMTP server and a real HTTP endpoint (alert_sinks.py):
a failed task, a gate rejection and a promotion of the training DAG, and drift from the drift
monitor (tests/integration/test_monitoring.py). Each alert names the DAG, the run, the task,
the classified reason and its runbook, links to the Airflow task and the MLflow run, and holds
no secret: neither the channels' own nor the stack's."""

from __future__ import annotations

from datetime import date
from typing import Any

from include.mlops_core.demo_data import encode, generate, write_partitions
from tests.integration.alert_sinks import AlertSinks


def assert_no_secret(sinks: AlertSinks, services: Any, *texts: str) -> None:
    everything = "\n".join([*texts, *(m.raw for m in sinks.mails), *map(str, sinks.posts)])
    for secret in [*sinks.secrets(), *services.secrets.values()]:
        if len(secret) >= 8:
            assert secret not in everything, "a secret reached an alert"


def test_failure_rejection_and_promotion_alert_by_mail_and_webhook(services, run_dag, alert_sinks):
    model, source = "it_alerts", "s3://mlops-data/it_alerts"
    store = services.store()
    bad = f"{source}/date=2025-09-01/part-0.csv"
    store.write_bytes(bad, encode(generate(date(2025, 9, 1), 500).drop(columns=["tenure_months"]),
                                  "csv"))

    failed = run_dag("2025-09-02", model_name=model, source_uri=source)

    assert failed.state == "failed" and failed.tasks["ingest"] == "failed", failed.tasks
    alert_sinks.wait(1)
    mail, post = alert_sinks.mails[0], alert_sinks.posts[0]
    assert mail.subject == f"[mlops] FAILED: training.ingest ({model})"
    assert mail.recipients == ["oncall@example.com", "ml-team@example.com"]
    assert mail.sender == "mlops@example.com"
    assert [login for login, _ in alert_sinks.logins] == ["alerts"]
    assert post["path"] == "/hooks/mlops" and post["event"] == "task_failed"
    assert alert_sinks.headers[0]["Authorization"] == f"Bearer {alert_sinks.webhook_token}"
    assert (post["dag_id"], post["run_id"], post["task_id"]) == ("training", failed.run_id, "ingest")
    # The classified line of the task log: what failed and where (file, column).
    assert "tenure_months" in post["reason"] and bad in post["reason"], post["reason"]
    assert post["runbook"] == "docs/runbooks/schema-mismatch.md"
    assert post["links"]["Airflow task"].endswith(
        f"/dags/training/runs/{failed.run_id.replace(':', '%3A').replace('+', '%2B')}"
        "/tasks/ingest?try_number=1"), post["links"]
    assert post["links"]["MLflow run"].startswith("http://mlflow.example.test/#/runs/")
    for needle in (failed.run_id, "ingest", "schema-mismatch.md", "tenure_months",
                   "http://mlflow.example.test/#/runs/"):
        assert needle in mail.body and needle in post["text"], needle

    # The same day fixed: the model is promoted, and says so.
    store.delete(bad)
    write_partitions(store, source, date(2025, 9, 2), 1, rows=1500)
    promoted = run_dag("2025-09-03", model_name=model, source_uri=source)
    assert promoted.state == "success", promoted.error_lines()
    alert_sinks.wait(2)
    post = alert_sinks.posts[1]
    assert post["event"] == "promoted" and post["task_id"] == "promote", post
    assert post["reason"] == f"{model} v1 is now @champion (previous: none)"
    assert post["links"]["Audit record"].startswith("s3://")
    assert alert_sinks.mails[1].subject == f"[mlops] promoted: training.promote ({model})"

    # A stricter gate rejects the retrained model: one alert with the failed check.
    rejected = run_dag("2025-09-03", model_name=model, source_uri=source, force=True,
                       gate={"thresholds": ["roc_auc >= 0.999"]})
    assert rejected.state == "success" and rejected.tasks["promote"] == "skipped", rejected.tasks
    alert_sinks.wait(3)
    assert len(alert_sinks.posts) == 3, [p["event"] for p in alert_sinks.posts]
    post = alert_sinks.posts[2]
    assert post["event"] == "gate_rejected" and post["task_id"] == "gate"
    assert post["reason"].startswith("FAIL threshold roc_auc >= 0.999"), post["reason"]
    assert post["runbook"] == "docs/runbooks/gate-rejected.md"
    assert post["links"]["Promotion card"].startswith("s3://")
    assert_no_secret(alert_sinks, services, failed.log, promoted.log, rejected.log)


def test_no_connection_no_alert_and_an_approved_gate_sends_nothing(services, run_dag, monkeypatch):
    """Without the Connections the runs behave as before: no alert, no warning about alerts."""
    for key in ("AIRFLOW_CONN_MLOPS_ALERTS_SMTP", "AIRFLOW_CONN_MLOPS_ALERTS_WEBHOOK"):
        monkeypatch.delenv(key, raising=False)
    model, source = "it_alerts_off", "s3://mlops-data/it_alerts_off"
    write_partitions(services.store(), source, date(2025, 9, 2), 1, rows=1000)

    run = run_dag("2025-09-03", model_name=model, source_uri=source)

    assert run.state == "success", run.error_lines()
    assert "Alert" not in run.log
