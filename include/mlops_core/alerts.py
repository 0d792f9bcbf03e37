"""What an alert says: one message per event, the same for e-mail and webhook (docs/alerts.md).

Plain Python, no Airflow import: ``plugins/mlops_airflow/notifiers.py`` collects the facts from a task's
context and sends what this module renders. Every alert names the DAG, the run, the task, the
reason in one classified line, the runbook to read, and links to the Airflow task and the MLflow
run where there is one. Nothing here reads a secret; the message holds only ids, the task's
classified reason and links.
"""

from __future__ import annotations

import html
import re
from dataclasses import dataclass, field
from typing import Any

from include.mlops_core.errors import RUNBOOKS, PipelineError

EVENTS = ("task_failed", "gate_rejected", "drift_detected", "promoted", "approval_requested",
          "approval_rejected", "rolled_back")
# The runbook of each event that is not a failure (a failure's comes from its error class).
EVENT_RUNBOOKS = {"gate_rejected": "gate-rejected.md", "drift_detected": "drift-detected.md",
                  "promoted": "promoted.md", "approval_requested": "approval-requested.md",
                  "approval_rejected": "approval-rejected.md", "rolled_back": "rollback.md"}
_RUNBOOK_SUFFIX = re.compile(r"\s*\(runbook: (?:" + re.escape(RUNBOOKS) + r"/)?([^)\s]+)\)\s*$")
REASON_LIMIT = 1000  # characters of a reason kept in the message


@dataclass(frozen=True)
class Alert:
    """One alert. ``links``: label -> URL (Airflow task, MLflow run, report, ...)."""

    event: str
    dag_id: str
    run_id: str
    task_id: str
    reason: str
    runbook: str
    try_number: int | None = None
    model: str | None = None
    links: dict[str, str] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.event not in EVENTS:
            raise ValueError(f"unknown alert event {self.event!r}; one of {', '.join(EVENTS)}")


def classify(error: BaseException | str | None) -> tuple[str, str]:
    """(reason, runbook page) of a task failure. A :class:`PipelineError` carries both; the
    operators re-raise it as Airflow's fail exception with the runbook at the end of the text,
    which is read back here. Anything else is reported with its type and the runbook index."""
    if isinstance(error, PipelineError):
        return _short(str(error.args[0])), error.runbook
    text = "" if error is None else str(error)
    found = _RUNBOOK_SUFFIX.search(text)
    if found:
        return _short(text[:found.start()]), found.group(1)
    if isinstance(error, BaseException):
        text = f"{type(error).__name__}: {text}" if text else type(error).__name__
    return _short(text or "the task failed without an error message"), "README.md"


def _short(text: str) -> str:
    text = " ".join(text.split())
    return text if len(text) <= REASON_LIMIT else text[:REASON_LIMIT - 1] + "…"


def runbook_url(runbook: str, base: str | None = None) -> str:
    """``base`` + page (``MLOPS_RUNBOOK_BASE_URL``, e.g. the docs of your fork), else the page's
    path in the checkout."""
    return f"{base.rstrip('/')}/{runbook}" if base else f"{RUNBOOKS}/{runbook}"


TITLES = {"task_failed": "FAILED", "gate_rejected": "gate rejected", "drift_detected": "drift detected",
          "promoted": "promoted", "approval_requested": "approval requested",
          "approval_rejected": "approval rejected", "rolled_back": "ROLLED BACK"}


def subject(alert: Alert) -> str:
    what = f"{alert.dag_id}.{alert.task_id}"
    model = f" ({alert.model})" if alert.model else ""
    return f"[mlops] {TITLES[alert.event]}: {what}{model}"


def fields(alert: Alert, runbook_base: str | None = None) -> list[tuple[str, str]]:
    rows = [("DAG", alert.dag_id), ("Run", alert.run_id), ("Task", alert.task_id)]
    if alert.try_number is not None:
        rows.append(("Try", str(alert.try_number)))
    if alert.model:
        rows.append(("Model", alert.model))
    rows += [("Reason", alert.reason), ("Runbook", runbook_url(alert.runbook, runbook_base))]
    rows += [(label, url) for label, url in alert.links.items()]
    return rows


def text(alert: Alert, runbook_base: str | None = None) -> str:
    """The plain-text body (also the webhook's ``text``, which chat webhooks show)."""
    rows = fields(alert, runbook_base)
    width = max(len(label) for label, _ in rows)
    return subject(alert) + "\n\n" + "\n".join(f"{label:<{width}}  {value}" for label, value in rows)


def html_body(alert: Alert, runbook_base: str | None = None) -> str:
    def cell(label: str, value: str) -> str:
        shown = html.escape(value)
        if value.startswith(("http://", "https://")):
            shown = f'<a href="{html.escape(value, quote=True)}">{shown}</a>'
        return f"<tr><th align='left'>{html.escape(label)}</th><td>{shown}</td></tr>"

    rows = "".join(cell(label, value) for label, value in fields(alert, runbook_base))
    return f"<h3>{html.escape(subject(alert))}</h3><table>{rows}</table>"


def payload(alert: Alert, runbook_base: str | None = None) -> dict[str, Any]:
    """The webhook's JSON body: every field by name, and ``text`` for chat webhooks."""
    return {"event": alert.event, "dag_id": alert.dag_id, "run_id": alert.run_id,
            "task_id": alert.task_id, "try_number": alert.try_number, "model": alert.model,
            "reason": alert.reason, "runbook": runbook_url(alert.runbook, runbook_base),
            "links": dict(alert.links), "subject": subject(alert),
            "text": text(alert, runbook_base)}


def gate_reason(decision: dict[str, Any]) -> str:
    """The rejected gate's failed checks, one line."""
    reasons = [str(r) for r in decision.get("reasons") or []]
    failed = [r for r in reasons if r.startswith("FAIL")] or reasons
    return _short("; ".join(failed) or "the gate rejected the model")


def drift_reason(result: dict[str, Any]) -> str:
    columns = list(result.get("columns") or [])
    shown = ", ".join(columns[:10]) + (f" and {len(columns) - 10} more" if len(columns) > 10 else "")
    return _short(f"dataset drift on {result.get('partition_date')}: share {result.get('share')} "
                  f">= {result.get('threshold')}; drifted columns: {shown or 'none listed'}")


def promotion_reason(result: dict[str, Any], alias: str | None = None) -> str:
    return (f"{result.get('model_name')} v{result.get('version')} is now "
            f"@{alias or 'champion'} (previous: {result.get('previous') or 'none'})")


def approval_request_reason(model_name: Any, version: Any, hours: float) -> str:
    return (f"{model_name} v{version} passed the gate and waits for a person to Approve or Reject "
            f"its promotion (Airflow UI: Required actions, or REST) within {hours:g} h; no "
            "answer rejects it")


def approval_outcome(result: dict[str, Any]) -> tuple[str, str]:
    """(reason, runbook) of an approval that did not approve: rejected by a person, or no answer
    in time."""
    what = f"{result.get('model_name')} v{result.get('version')}"
    if result.get("outcome") == "timed_out":
        return (f"Approval timed out: no answer within {result.get('timeout_hours'):g} h; "
                f"{what} is not promoted", "approval-timeout.md")
    return f"Approval rejected by {result.get('by')}: {what} is not promoted", \
        "approval-rejected.md"


def rollback_reason(result: dict[str, Any]) -> str:
    return _short(f"{result.get('model_name')} @champion rolled back from "
                  f"v{result.get('previous')} to v{result.get('version')}, "
                  f"{result.get('trigger')}: {result.get('reason')}")
