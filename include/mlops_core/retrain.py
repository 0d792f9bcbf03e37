"""Cooldown for alert-triggered retraining: at most one per window per model, however many
drift or performance events arrive.

Each granted retrain leaves a claim object ``<artifacts_uri>/<model>/retrain-claims/<time>--<run>.json``
(create-only). A later alert-triggered run within ``cooldown_hours`` of the newest claim is
refused with the claim's details. A retry of the run that made a claim finds its own claim and
goes on. Training runs are serialized (``max_active_runs=1``), so two claims never race; the
create-only write guards the rest.
"""

from __future__ import annotations

import json
import logging
from datetime import UTC, datetime, timedelta
from typing import Any

from include.mlops_core.storage import ObjectExistsError, ObjectStore, join, safe_name

log = logging.getLogger(__name__)

_STAMP = "%Y%m%dT%H%M%SZ"


def claims_dir(artifacts_uri: str, model_name: str) -> str:
    return join(artifacts_uri, model_name, "retrain-claims")


def _claims(store: ObjectStore, folder: str) -> list[tuple[datetime, str, str]]:
    found = []
    for obj in store.list(folder):
        name = obj.uri.rsplit("/", 1)[-1]
        stamp, _, run = name.removesuffix(".json").partition("--")
        try:
            found.append((datetime.strptime(stamp, _STAMP).replace(tzinfo=UTC), run, obj.uri))
        except ValueError:
            log.warning("Ignoring unexpected object %s in %s", obj.uri, folder)
    return found


def blocked(store: ObjectStore, artifacts_uri: str, model_name: str, *, at: datetime,
            dag_run_id: str, cooldown_hours: float) -> str | None:
    """Why an alert-triggered retrain may not start now (None: it may). Reads only."""
    at = at.astimezone(UTC)
    claims = _claims(store, claims_dir(artifacts_uri, model_name))
    if any(run == safe_name(dag_run_id) for _, run, _ in claims):
        return None  # a retry of the run that holds the slot
    earlier = [c for c in claims if c[0] <= at]
    if not earlier:
        return None
    last_at, last_run, last_uri = max(earlier)
    until = last_at + timedelta(hours=cooldown_hours)
    if at >= until:
        return None
    return (f"cooldown: an alert-triggered retrain of {model_name} already started at "
            f"{last_at:%Y-%m-%d %H:%M} UTC (run {last_run}, claim {last_uri}); the next one may "
            f"start after {until:%Y-%m-%d %H:%M} UTC (monitoring.retrain_cooldown_hours="
            f"{cooldown_hours:g}). Trigger the training DAG by hand with force=true to retrain now")


def claim(store: ObjectStore, artifacts_uri: str, model_name: str, *, at: datetime,
          dag_run_id: str, cooldown_hours: float, trigger: dict[str, Any]) -> tuple[bool, str]:
    """Claim the retrain slot: ``(granted, reason)``.

    :param at: when the triggered run was created (its ``run_after``), so a retry decides the same
    :param trigger: the alert (asset name and event extra), stored in the claim
    """
    reason = blocked(store, artifacts_uri, model_name, at=at, dag_run_id=dag_run_id,
                     cooldown_hours=cooldown_hours)
    if reason:
        return False, reason
    at = at.astimezone(UTC)
    uri = join(claims_dir(artifacts_uri, model_name), f"{at.strftime(_STAMP)}--{safe_name(dag_run_id)}.json")
    record = {"model_name": model_name, "at": at.isoformat(), "dag_run_id": dag_run_id,
              "cooldown_hours": cooldown_hours, "trigger": trigger}
    try:
        store.write_bytes(uri, json.dumps(record, indent=2, default=str).encode(), create_only=True)
    except ObjectExistsError:
        pass  # this run wrote it on an earlier try
    return True, (f"claimed the retrain slot ({uri}); the next alert-triggered retrain may start "
                  f"after {at + timedelta(hours=cooldown_hours):%Y-%m-%d %H:%M} UTC")
