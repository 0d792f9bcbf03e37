"""Thin operators for scoring and monitoring; the work is in :mod:`include.mlops_core.scoring` and
:mod:`include.mlops_core.monitor`.

They share the training operators' base (config from Params, hooks, error policy: bad data
fails at once, an unreachable service is retried) and chain through Assets: ``score`` emits
``predictions``; the drift check and the live-performance check end in a small task that emits
``drift_detected`` / ``performance_degraded`` only when there is something to report (a skipped
task emits no event).
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import date
from typing import TYPE_CHECKING, Any

from airflow.sdk import BaseOperator

from mlops_airflow.assets import PREDICTIONS
from mlops_airflow.links import DRIFT_REPORT
from mlops_airflow.operators.training import PROMOTION_POOL, MlopsStageOperator
from mlops_airflow.run_context import asset_events, data_interval

if TYPE_CHECKING:
    from airflow.sdk import Asset, Context

    from include.mlops_core.pipeline import RunContext


def run_day(context: Context) -> date:
    """The one day a scoring or monitoring run is about: the ``partition_date`` Param, else the
    last day of the data interval."""
    from datetime import timedelta

    override = context["params"].get("partition_date")
    if override:
        return date.fromisoformat(override)
    start, end = data_interval(context)
    return (end - timedelta(microseconds=1)).date() if end > start else start.date()


class BatchScoreOperator(MlopsStageOperator):
    """Score one day's partition with ``@champion`` (and ``@challenger`` in shadow/canary
    rollout) and commit the predictions partition; emits the ``predictions`` Asset with the
    partition URI and model version in its extra.

    Returns ``{"partition_uri", "predictions_uri", "model_version", "challenger_version", "rows",
    "canary_rows", "partition_date", "scoring_run_id", ...}``.
    """

    ui_color = "#fdf2d4"
    conf_keys = "batch_scoring"
    waits_for_data = True

    def __init__(self, *, outlets: list[Asset] | None = None, **kwargs: Any) -> None:
        super().__init__(outlets=outlets if outlets is not None else [PREDICTIONS], **kwargs)

    def run(self, run_ctx: RunContext, context: Context) -> dict[str, Any]:
        from include.mlops_core.scoring import score

        result = score(run_ctx, run_day(context))
        for asset in self.outlets:
            context["outlet_events"][asset].extra = result
        return result


class MonitorOperator(MlopsStageOperator):
    """Base for monitoring tasks about one (dataset, day): from the triggering ``predictions``
    event when there is one, else from the Params and the data interval."""

    operator_extra_links = ()  # they open no DAG-run MLflow run
    uses_mlflow_run = False  # they log to the scoring run / per-version monitoring runs
    waits_for_labels = False  # True: the day is the interval's minus monitoring.label_delay_days

    def target(self, context: Context) -> tuple[dict[str, Any], date]:
        from datetime import timedelta

        from include.mlops_core.config import resolve_config

        params = dict(context["params"])
        day = run_day(context)
        if self.waits_for_labels and not params.get("partition_date"):
            day -= timedelta(days=resolve_config(params).monitoring.label_delay_days)
        latest = asset_events(context, PREDICTIONS)
        if latest:
            extra = dict(latest[-1].extra or {})
            params.update({k: extra[k] for k in ("dataset", "model_name") if extra.get(k)})
            day = date.fromisoformat(extra["partition_date"])
            if len(latest) > 1:
                self.log.warning("%d predictions events arrived together; checking the latest "
                                 "(%s). Run drift_monitor with partition_date for the others",
                                 len(latest), extra["partition_date"])
        return params, day

    def monitor_context(self, context: Context, params: dict[str, Any],
                      mlflow_run_id: str = "") -> RunContext:
        from include.mlops_core.config import resolve_config
        from include.mlops_core.pipeline import RunContext, run_key
        from mlops_airflow.run_context import run_date

        return RunContext(config=resolve_config(params), store=self.s3_hook.store,
                     client=self.mlflow_hook.client, mlflow_run_id=mlflow_run_id,
                     artifacts_uri=self.artifacts_uri, run_key=run_key(run_date(context)),
                     loosened=tuple(self.loosened))


class DriftCheckOperator(MonitorOperator):
    """Data and prediction drift of one scored day against the champion's training snapshot
    (Evidently 0.7 tests on all rows; HTML report + JSON in S3 and on the scoring run).

    The task log ends with one line: drifted share, drifted columns, report URI. Without dataset
    drift, the downstream ``drift_detected`` task is skipped.
    """

    operator_extra_links = (DRIFT_REPORT,)  # on the day's scoring run in MLflow
    ui_color = "#fde2e2"
    conf_keys = "drift_monitor"

    def run(self, run_ctx: None, context: Context) -> dict[str, Any]:
        from include.mlops_core.monitor import check_drift

        params, day = self.target(context)
        result = check_drift(self.monitor_context(context, params), day)
        if not result["drifted"]:
            self.log.info("No dataset drift for %s on %s (share %.2f < %.2f): no event",
                          result["model_name"], day, result["share"], result["threshold"])
            self.skip_downstream(context, result)
        return result


class LivePerformanceOperator(MonitorOperator):
    """Join one day's delayed labels to its predictions; log live metrics per model version as
    an MLflow time series. Below ``monitoring.performance_floor``: an ALERT log line and the
    downstream ``performance_degraded`` task runs; otherwise it is skipped."""

    ui_color = "#e2f0fd"
    waits_for_labels = True
    conf_keys = "performance_monitor"

    def __init__(self, *, alert_task_ids: Sequence[str] = ("performance_degraded",),
                 **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.alert_task_ids = list(alert_task_ids)

    def run(self, run_ctx: None, context: Context) -> dict[str, Any]:
        from include.mlops_core.monitor import live_performance

        params, day = self.target(context)
        result = live_performance(self.monitor_context(context, params), day)
        if not result["below_floor"]:
            self.skip_downstream(context, result, task_ids=self.alert_task_ids)
        return result


class ABDecisionOperator(MonitorOperator):
    """Champion vs challenger on live labels: promote, keep or reject through the training gate
    plus a bootstrap significance test; the decision and its statistics go into a promotion
    card. A promotion runs in the ``mlops_promotion`` pool like the training DAG's."""

    ui_color = "#e8f4fd"
    waits_for_labels = True
    conf_keys = "performance_monitor"

    def __init__(self, *, pool: str = PROMOTION_POOL, **kwargs: Any) -> None:
        super().__init__(pool=pool, **kwargs)

    def run(self, run_ctx: None, context: Context) -> dict[str, Any]:
        from include.mlops_core import tracking
        from include.mlops_core.config import resolve_config
        from include.mlops_core.monitor import ab_decision
        from include.mlops_core.pipeline import run_key
        from mlops_airflow.run_context import run_date

        params, day = self.target(context)
        config = resolve_config(params)
        if config.rollout.mode == "direct":
            self.log.info("Rollout mode of %s is direct: no challenger, no A/B decision",
                          config.name)
            return {"verdict": "none", "reason": "rollout mode direct"}
        name = config.registered_model_name
        client = self.mlflow_hook.client
        challenger = tracking.alias_version(client, name, tracking.CHALLENGER)
        if challenger is None:
            self.log.info("%s has no @challenger: no A/B decision", name)
            return {"verdict": "none", "reason": f"{name} has no challenger"}
        dag_run = context["dag_run"]
        run_id = tracking.find_or_create_run(
            self.mlflow_hook.client, experiment=config.registered_model_name,
            dag_id=dag_run.dag_id, dag_run_id=dag_run.run_id,
            run_name=f"{dag_run.dag_id}:{run_key(run_date(context))}",
            tags={"mlops.dataset": config.name, "mlops.partition_date": day.isoformat()})
        run_ctx = self.monitor_context(context, params, mlflow_run_id=run_id)
        result = ab_decision(run_ctx, day, dag_context=self.dag_context(context))
        if result["verdict"] != "promote":
            tracking.finish_run(run_ctx.client, run_id, outcome=f"ab:{result['verdict']}")
        return result


class PublishAlertOperator(BaseOperator):
    """Emit an Asset event whose extra is the upstream result (drift or performance alert).

    Skipped (so no event) when the check found nothing. Keeping the event in its own task makes
    "an alert was raised" visible in the grid and keeps the check's own outcome separate.

    :param result: the check task's XCom (templated)
    :param asset: the Asset to emit
    """

    template_fields: Sequence[str] = ("result",)
    ui_color = "#ffd6d6"

    def __init__(self, *, result: Any, asset: Asset, **kwargs: Any) -> None:
        super().__init__(outlets=[asset], **kwargs)
        self.result = result
        self.asset = asset

    def execute(self, context: Context) -> dict[str, Any]:
        extra = {k: v for k, v in dict(self.result).items() if k != "metrics"}
        context["outlet_events"][self.asset].extra = extra
        self.log.warning("Emitting %s for %s on %s: %s", self.asset.name, extra.get("model_name"),
                         extra.get("partition_date"),
                         extra.get("columns") or extra.get("failed"))
        return extra
