"""Alerts: a task failure, a gate rejection, detected drift, a promotion, an approval asked for
or refused, and a rollback, sent by e-mail and to a webhook (docs/alerts.md).

Each channel is a Connection; without it the channel is off, and with neither nothing is sent:
- ``mlops_alerts_smtp``: an SMTP Connection of the SMTP provider (host, port, login,
  password; ``from_email`` in its extra), plus ``to`` in its extra: one address or a list.
- ``mlops_alerts_webhook``: an HTTP Connection of the HTTP provider; the alert is POSTed as
  JSON to its URL (``text`` holds the whole message, which chat webhooks show).

The message comes from :mod:`include.mlops_core.alerts`. A channel that fails is logged as a
warning and never fails the task: the task's own outcome is what the run records.
"""

from __future__ import annotations

import os
from typing import TYPE_CHECKING, Any

from airflow.sdk import BaseNotifier

if TYPE_CHECKING:
    from airflow.sdk import Context

    from include.mlops_core.alerts import Alert

SMTP_CONN_ID = "mlops_alerts_smtp"
WEBHOOK_CONN_ID = "mlops_alerts_webhook"


class MlopsAlertNotifier(BaseNotifier):
    """Send one alert for ``event`` of the task in ``context``.

    As a task's ``on_failure_callback`` (``task_failed``, every DAG, from ``dag_defaults``) or
    ``on_success_callback`` (``gate_rejected``: only when the gate's decision is a rejection;
    ``promoted``; ``drift_detected``: the task that emits the event ran, so drift was found).

    :param event: one of :data:`include.mlops_core.alerts.EVENTS`
    :param smtp_conn_id: the e-mail channel's Connection
    :param webhook_conn_id: the webhook channel's Connection
    """

    template_fields = ()

    def __init__(self, *, event: str, smtp_conn_id: str = SMTP_CONN_ID,
                 webhook_conn_id: str = WEBHOOK_CONN_ID) -> None:
        from include.mlops_core.alerts import EVENTS

        super().__init__()
        if event not in EVENTS:
            raise ValueError(f"unknown alert event {event!r}; one of {', '.join(EVENTS)}")
        self.event = event
        self.smtp_conn_id = smtp_conn_id
        self.webhook_conn_id = webhook_conn_id

    def notify(self, context: Context) -> None:
        channels = [(name, conn) for name, conn in (("e-mail", self._connection(self.smtp_conn_id)),
                                                    ("webhook", self._connection(self.webhook_conn_id)))
                    if conn is not None]
        if not channels:
            return  # alerts are off: no Connection
        alert = self.alert(context)
        if alert is None:
            return
        from include.mlops_core.alerts import subject

        for name, conn in channels:
            try:
                (self._email if name == "e-mail" else self._webhook)(conn, alert)
            except Exception as err:  # noqa: BLE001 - an alert never changes the task's outcome
                self.log.warning("Alert %r not sent by %s (Connection %r): %s: %s", subject(alert),
                                 name, conn.conn_id, type(err).__name__, err)
            else:
                self.log.info("Alert sent by %s: %s", name, subject(alert))

    # -- what the alert says ---------------------------------------------------------------------
    def alert(self, context: Context) -> Alert | None:
        """The alert of this event, or None when there is nothing to report (an approved gate)."""
        from include.mlops_core import alerts

        ti = context["ti"]
        result = ti.xcom_pull(task_ids=ti.task_id) if self.event != "task_failed" else None
        result = result if isinstance(result, dict) else {}
        if self.event == "task_failed":
            reason, runbook = alerts.classify(context.get("exception"))
        elif self.event == "gate_rejected":
            if result.get("approved", True):
                return None
            reason, runbook = alerts.gate_reason(result), alerts.EVENT_RUNBOOKS[self.event]
        elif self.event == "drift_detected":
            reason, runbook = alerts.drift_reason(result), alerts.EVENT_RUNBOOKS[self.event]
        elif self.event == "approval_requested":  # from the HITL task as it starts to wait
            task = context["task"]
            result = dict(getattr(task, "registration", None) or {})
            hours = getattr(task, "response_timeout", None)
            reason = alerts.approval_request_reason(
                result.get("model_name"), result.get("version"),
                hours.total_seconds() / 3600 if hours else float("inf"))
            runbook = alerts.EVENT_RUNBOOKS[self.event]
        elif self.event == "approval_rejected":
            if result.get("approved", True):
                return None  # approved: the promotion's own alert follows
            reason, runbook = alerts.approval_outcome(result)
        elif self.event == "rolled_back":
            if not result.get("rolled_back"):
                return None  # an automatic rollback that found nothing to roll back
            reason, runbook = alerts.rollback_reason(result), alerts.EVENT_RUNBOOKS[self.event]
        else:
            reason = alerts.promotion_reason(result, getattr(ti.task, "alias", None))
            runbook = alerts.EVENT_RUNBOOKS[self.event]
        from mlops_airflow.hooks.mlflow import MlflowHook
        from mlops_airflow.links import MLFLOW_RUN_XCOM

        links = {"Airflow task": ti.log_url}
        mlflow_run = ti.xcom_pull(task_ids=ti.task_id, key=MLFLOW_RUN_XCOM)
        if mlflow_run:
            links["MLflow run"] = f"{MlflowHook().ui_url}/#/runs/{mlflow_run}"
        if self.event == "approval_requested" and hasattr(ti.task, "card_link"):
            card = ti.task.card_link(context)
            if card:
                links["Promotion card"] = str(card)
        for key, label in (("card_uri", "Promotion card"), ("report_uri", "Drift report"),
                           ("audit_uri", "Audit record")):
            if result.get(key):
                links[label] = str(result[key])
        dag_run = context["dag_run"]
        return alerts.Alert(event=self.event, dag_id=dag_run.dag_id, run_id=dag_run.run_id,
                            task_id=ti.task_id, try_number=ti.try_number, reason=reason,
                            runbook=runbook, model=_model(context, result), links=links)

    # -- channels ----------------------------------------------------------------------------------
    @staticmethod
    def _connection(conn_id: str) -> Any | None:
        from airflow.sdk import BaseHook
        from airflow.sdk.exceptions import AirflowNotFoundException

        try:
            return BaseHook.get_connection(conn_id)
        except AirflowNotFoundException:
            return None

    @staticmethod
    def _email(conn: Any, alert: Alert) -> None:
        from airflow.providers.smtp.hooks.smtp import SmtpHook

        from include.mlops_core.alerts import html_body, subject

        to = conn.extra_dejson.get("to")
        if not to:
            raise ValueError(f"Connection {conn.conn_id!r} has no 'to' in its extra: whom to mail")
        with SmtpHook(smtp_conn_id=conn.conn_id) as hook:
            hook.send_email_smtp(to=to, subject=subject(alert),
                                 html_content=html_body(alert, _runbook_base()),
                                 from_email=conn.extra_dejson.get("from_email"))

    @staticmethod
    def _webhook(conn: Any, alert: Alert) -> None:
        from airflow.providers.http.hooks.http import HttpHook

        from include.mlops_core.alerts import payload

        HttpHook(method="POST", http_conn_id=conn.conn_id).run(
            json=payload(alert, _runbook_base()), extra_options={"timeout": 15})


def _runbook_base() -> str | None:
    return os.environ.get("MLOPS_RUNBOOK_BASE_URL") or None


def _model(context: Context, result: dict[str, Any]) -> str | None:
    if result.get("model_name"):
        return str(result["model_name"])
    params = context.get("params") or {}
    return str(params.get("model_name") or params.get("dataset") or "") or None


def alerts_for(event: str) -> list[MlopsAlertNotifier]:
    """The callback list of a task: ``on_failure_callback=alerts_for("task_failed")``."""
    return [MlopsAlertNotifier(event=event)]
