"""What a running task reads from its Airflow context: the data interval, the Asset events that
started the run, the run's Params (with the dataset and model an alert names), the partition
days it reads and the date that names its outputs. Shared by the operators of every DAG; no
operator class lives here."""

from __future__ import annotations

from datetime import date, datetime, timedelta
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from airflow.sdk import Context


def data_interval(context: Context) -> tuple[datetime, datetime]:
    """The run's data interval; a run triggered without a logical date has none, so it gets
    the last full UTC day before it was triggered (what a scheduled run would have covered)."""
    start, end = context.get("data_interval_start"), context.get("data_interval_end")
    if start is not None and end is not None:
        return start, end
    after = context["dag_run"].run_after
    end = after.replace(hour=0, minute=0, second=0, microsecond=0)
    return end - timedelta(days=1), end


def asset_events(context: Context, asset: Any) -> list[Any]:
    """The events of ``asset`` that started this run ([] for runs it did not start)."""
    events = context.get("triggering_asset_events") or {}
    try:
        return list(events[asset])
    except (KeyError, LookupError):
        return []


def retrain_trigger(context: Context) -> dict[str, Any] | None:
    """The alert that started this run (a ``drift_detected`` or ``performance_degraded`` Asset
    event): ``{"asset", "extra", ...}`` of the latest such event, or None for other runs."""
    from mlops_airflow.assets import DRIFT_DETECTED, PERFORMANCE_DEGRADED

    found = [(asset.name, event) for asset in (DRIFT_DETECTED, PERFORMANCE_DEGRADED)
             for event in asset_events(context, asset)]
    if not found:
        return None
    name, event = max(found, key=lambda item: str(getattr(item[1], "timestamp", "")))
    return {"asset": name, "extra": dict(event.extra or {}),
            "source": f"{getattr(event, 'source_dag_id', None)}/"
                      f"{getattr(event, 'source_run_id', None)}",
            "events": len(found)}


def run_params(context: Context) -> dict[str, Any]:
    """The run's Params; a run started by an alert trains the dataset and model the alert names."""
    params = dict(context["params"])
    trigger = retrain_trigger(context)
    if trigger:
        for key in ("dataset", "model_name"):
            if trigger["extra"].get(key):
                params[key] = trigger["extra"][key]
        if trigger["extra"].get("source_uri") and not params.get("source_uri"):
            params["source_uri"] = trigger["extra"]["source_uri"]  # the champion's source
    return params


def run_partition_dates(context: Context, config: Any) -> list[date]:
    """The partition days this run reads (the ``partition_date`` Param overrides the interval).

    A run started by a drift or performance alert reads ``monitoring.retrain_lookback_days``
    ending with the day the alert is about: the recent data the champion is failing on.
    """
    from include.mlops_core.ingest import partition_dates

    override = context["params"].get("partition_date")
    trigger = retrain_trigger(context)
    if not override and trigger and trigger["extra"].get("partition_date"):
        day = date.fromisoformat(trigger["extra"]["partition_date"])
        return partition_dates(datetime.min, datetime.min,
                               config.monitoring.retrain_lookback_days, day)
    start, end = data_interval(context)
    return partition_dates(start, end, config.lookback_days,
                           date.fromisoformat(override) if override else None)


def run_date(context: Context) -> datetime:
    """What names this run's outputs: the logical date; runs without one (asset-triggered, or
    triggered with none) are named by when they were created, so no two share a folder."""
    return context.get("logical_date") or context["dag_run"].run_after


def trigger_summary(trigger: dict[str, Any]) -> str:
    extra = trigger["extra"]
    what = "drift" if trigger["asset"] == "drift_detected" else "performance below floor"
    detail = (f"columns {', '.join(extra.get('columns') or [])} (share {extra.get('share')})"
              if trigger["asset"] == "drift_detected" else f"{extra.get('failed')}")
    report = f"; report {extra['report_uri']}" if extra.get("report_uri") else ""
    return (f"{what} on partition {extra.get('partition_date')} of {extra.get('model_name')} "
            f"v{extra.get('model_version')}: {detail}{report}; event from {trigger['source']}")


def trigger_tags(trigger: dict[str, Any]) -> dict[str, str]:
    extra = trigger["extra"]
    tags = {"mlops.trigger": trigger["asset"], "mlops.trigger.reason": trigger_summary(trigger),
            "mlops.trigger.partition_date": str(extra.get("partition_date")),
            "mlops.trigger.source": trigger["source"]}
    for key in ("columns", "share", "report_uri", "failed"):
        if extra.get(key) is not None:
            value = extra[key]
            tags[f"mlops.trigger.{key}"] = (",".join(value) if isinstance(value, list)
                                            else str(value))[:4000]
    return tags
