"""A person's approval before a model is promoted, when the dataset config asks for one
(``approval.required``): Airflow 3's human-in-the-loop ``ApprovalOperator`` from the standard
provider. The approver sees the model, version, the gate's reasons and the promotion card's link
in the request, and answers Approve or Reject in the Airflow UI (Required actions) or over REST
(docs/rest-api.md). No answer within ``approval.timeout_hours``: the default outcome, Reject,
applies. A rejection skips ``promote``; the task log and an alert say who rejected, or that time
ran out, with the runbook.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import timedelta
from typing import TYPE_CHECKING, Any

from airflow.providers.standard.operators.hitl import ApprovalOperator

from mlops_airflow.links import PROMOTION_CARD

if TYPE_CHECKING:
    from airflow.sdk import Context


class PromotionApprovalOperator(ApprovalOperator):
    """Approve or reject the promotion of the registered version.

    Returns ``{"approved", "required", "by", "outcome", "model_name", "version",
    "timeout_hours"}`` (``outcome``: ``approved``, ``rejected``, ``timed_out`` or
    ``not_required``); a dataset that requires no approval is approved at once (``required``
    false) and never waits. Alerts (docs/alerts.md): ``approval_requested`` when it starts to
    wait, ``approval_rejected`` when a person rejects or time runs out.

    :param decision: the gate task's XCom (templated)
    :param registration: the register task's XCom (templated)
    """

    template_fields: Sequence[str] = (*ApprovalOperator.template_fields, "decision",
                                      "registration")
    ui_color = "#f3e8ff"

    def __init__(self, *, decision: Any, registration: Any, **kwargs: Any) -> None:
        from mlops_airflow.notifiers import alerts_for

        kwargs.setdefault("notifiers", alerts_for("approval_requested"))
        kwargs.setdefault("on_success_callback", alerts_for("approval_rejected"))
        super().__init__(subject="Promote the model?", defaults=self.REJECT, **kwargs)
        self.decision = decision
        self.registration = registration

    def execute(self, context: Context) -> Any:
        from include.mlops_core.config import resolve_config
        from mlops_airflow.run_context import run_params

        config = resolve_config(run_params(context))
        name, version = self.registration["model_name"], self.registration["version"]
        if not config.approval.required:
            self.log.info("No approval needed: dataset %r does not require one "
                          "(approval.required)", config.name)
            return {"approved": True, "required": False, "by": None, "outcome": "not_required",
                    "model_name": name, "version": version, "timeout_hours": None}
        hours = config.approval.timeout_hours
        self.response_timeout = timedelta(hours=hours)
        self.subject = f"Promote {name} v{version}?"
        card = self.card_link(context)
        reasons = "\n".join(f"- {reason}" for reason in self.decision.get("reasons") or [])
        self.body = (f"The gate approved **{name} v{version}**:\n\n{reasons}\n\n"
                     + (f"[Promotion card]({card})\n\n" if card else "")
                     + f"No answer within {hours:g} h rejects it "
                       "(approval.timeout_hours).")
        self.log.info("Waiting up to %g h for a person to approve %s v%s (Airflow UI: Required "
                      "actions, or REST); no answer rejects it", hours, name, version)
        return super().execute(context)

    def card_link(self, context: Context) -> str | None:
        """The gate's "Promotion card" link, as the grid shows it (mlops_airflow.links)."""
        from mlops_airflow.operators.training import QualityGateOperator

        gates = [t.task_id for t in self.upstream_list if isinstance(t, QualityGateOperator)]
        return context["ti"].xcom_pull(task_ids=gates[0], key=PROMOTION_CARD.xcom_key) \
            if gates else None

    def execute_complete(self, context: Context, event: dict[str, Any]) -> Any:
        """Say who answered, or that time ran out, then let ``ApprovalOperator`` act on it: it
        skips ``promote`` on Reject (by raising, so nothing after it would run)."""
        from include.mlops_core.config import resolve_config
        from mlops_airflow.run_context import run_params

        name, version = self.registration["model_name"], self.registration["version"]
        by = event.get("responded_by_user") or {}
        who = by.get("name") or by.get("id")
        approved = event.get("chosen_options") == [self.APPROVE]
        hours = resolve_config(run_params(context)).approval.timeout_hours
        outcome = "approved" if approved else "rejected" if who else "timed_out"
        if approved:
            self.log.info("Approved by %s: promoting %s v%s", who, name, version)
        elif who:
            self.log.warning("Approval rejected by %s: %s v%s is not promoted (runbook: "
                             "docs/runbooks/approval-rejected.md)", who, name, version)
        elif "chosen_options" in event:
            self.log.warning("Approval timed out: no answer within %g h, the default outcome "
                             "Reject applies; %s v%s is not promoted (runbook: "
                             "docs/runbooks/approval-timeout.md)", hours, name, version)
        result = {"approved": approved, "required": True, "by": who, "outcome": outcome,
                  "model_name": name, "version": version, "timeout_hours": hours}
        if not approved:  # ApprovalOperator skips promote by raising: keep the result first
            context["ti"].xcom_push(key="return_value", value=result)
        super().execute_complete(context=context, event=event)
        return result
