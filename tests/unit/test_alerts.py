"""include/mlops_core/alerts.py: what an alert says, for each event."""

from __future__ import annotations

from pathlib import Path

import pytest
from airflow.sdk.exceptions import AirflowFailException

from include.mlops_core import alerts
from include.mlops_core.errors import SchemaError, ServiceUnavailableError

REPO = Path(__file__).resolve().parents[2]


def make(**overrides) -> alerts.Alert:
    values = {"event": "task_failed", "dag_id": "training", "run_id": "manual__2025-01-02",
              "task_id": "ingest", "reason": "missing column 'x'", "runbook": "schema-mismatch.md",
              "try_number": 2, "model": "churn_demo",
              "links": {"Airflow task": "http://af/dags/training/runs/r/tasks/ingest",
                        "MLflow run": "http://mlflow/#/runs/abc"}}
    return alerts.Alert(**{**values, **overrides})


def test_a_pipeline_error_gives_its_message_and_runbook() -> None:
    assert alerts.classify(SchemaError("s3://d/f.csv: column 'age' missing")) == \
        ("s3://d/f.csv: column 'age' missing", "schema-mismatch.md")
    assert alerts.classify(ServiceUnavailableError("MLflow down"))[1] == "service-unreachable.md"


def test_the_operators_fail_exception_is_read_back_to_reason_and_runbook() -> None:
    """Operators re-raise a PipelineError as AirflowFailException(str(err)): the runbook is at
    the end of the text."""
    err = AirflowFailException(str(SchemaError("f.csv, column 'age': missing")))
    assert alerts.classify(err) == ("f.csv, column 'age': missing", "schema-mismatch.md")
    anchored = AirflowFailException("refused (runbook: docs/runbooks/refused-by-policy.md#a-model)")
    assert alerts.classify(anchored) == ("refused", "refused-by-policy.md#a-model")


def test_any_other_error_names_its_type_and_the_runbook_index() -> None:
    assert alerts.classify(KeyError("partition")) == ("KeyError: 'partition'", "README.md")
    assert alerts.classify(None)[1] == "README.md"
    long = alerts.classify(ValueError("x" * 5000))[0]
    assert len(long) == alerts.REASON_LIMIT and long.endswith("…")


def test_every_field_is_in_the_text_the_html_and_the_payload() -> None:
    alert = make()
    text, body, payload = alerts.text(alert), alerts.html_body(alert), alerts.payload(alert)
    assert text.splitlines()[0] == "[mlops] FAILED: training.ingest (churn_demo)"
    for needle in ("training", "manual__2025-01-02", "ingest", "missing column", "churn_demo",
                   "docs/runbooks/schema-mismatch.md", "http://mlflow/#/runs/abc"):
        assert needle in text
    assert "missing column &#x27;x&#x27;" in body  # escaped
    assert '<a href="http://mlflow/#/runs/abc">' in body
    assert payload["runbook"] == "docs/runbooks/schema-mismatch.md"
    assert payload["links"]["MLflow run"] == "http://mlflow/#/runs/abc"
    assert payload["text"] == text and payload["event"] == "task_failed"


def test_a_runbook_base_url_makes_the_runbook_a_link() -> None:
    payload = alerts.payload(make(), "https://docs.example.com/runbooks/")
    assert payload["runbook"] == "https://docs.example.com/runbooks/schema-mismatch.md"
    assert '<a href="https://docs.example.com/runbooks/schema-mismatch.md">' in \
        alerts.html_body(make(), "https://docs.example.com/runbooks")


def test_markup_in_a_reason_stays_text() -> None:
    body = alerts.html_body(make(reason="<script>alert(1)</script>"))
    assert "<script>" not in body and "&lt;script&gt;" in body


def test_outcome_reasons() -> None:
    decision = {"approved": False, "reasons": ["PASS threshold accuracy >= 0.6: observed 0.7",
                                               "FAIL threshold roc_auc >= 0.99: observed 0.82"]}
    assert alerts.gate_reason(decision) == "FAIL threshold roc_auc >= 0.99: observed 0.82"
    drift = {"partition_date": "2025-01-05", "share": 0.42, "threshold": 0.3,
             "columns": [f"c{i}" for i in range(12)]}
    assert alerts.drift_reason(drift) == ("dataset drift on 2025-01-05: share 0.42 >= 0.3; "
                                          "drifted columns: c0, c1, c2, c3, c4, c5, c6, c7, c8, "
                                          "c9 and 2 more")
    assert alerts.promotion_reason({"model_name": "m", "version": "3", "previous": "2"}) == \
        "m v3 is now @champion (previous: 2)"


def test_an_unknown_event_is_refused() -> None:
    with pytest.raises(ValueError, match="unknown alert event 'paged'"):
        make(event="paged")


def test_approval_and_rollback_reasons_and_runbooks() -> None:
    assert alerts.approval_request_reason("m", "4", 24) == (
        "m v4 passed the gate and waits for a person to Approve or Reject its promotion (Airflow "
        "UI: Required actions, or REST) within 24 h; no answer rejects it")
    rejected = {"approved": False, "outcome": "rejected", "by": "operator", "model_name": "m",
                "version": "4", "timeout_hours": 24}
    assert alerts.approval_outcome(rejected) == (
        "Approval rejected by operator: m v4 is not promoted", "approval-rejected.md")
    timed_out = {**rejected, "outcome": "timed_out", "by": None, "timeout_hours": 0.5}
    assert alerts.approval_outcome(timed_out) == (
        "Approval timed out: no answer within 0.5 h; m v4 is not promoted", "approval-timeout.md")
    rolled = {"model_name": "m", "version": "2", "previous": "3", "trigger": "by hand (alice)",
              "reason": "v3 mis-scores EU rows"}
    assert alerts.rollback_reason(rolled) == ("m @champion rolled back from v3 to v2, by hand "
                                              "(alice): v3 mis-scores EU rows")
    alert = make(event="rolled_back", task_id="rollback", reason=alerts.rollback_reason(rolled),
                 runbook=alerts.EVENT_RUNBOOKS["rolled_back"])
    assert alerts.subject(alert) == "[mlops] ROLLED BACK: training.rollback (churn_demo)"
    assert "docs/runbooks/rollback.md" in alerts.text(alert)
    for event in ("approval_requested", "approval_rejected", "rolled_back"):
        assert (REPO / "docs" / "runbooks" / alerts.EVENT_RUNBOOKS[event]).is_file(), event
