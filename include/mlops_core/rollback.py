"""Rolling ``@champion`` back: to the champion before it (from the audit trail) or to a version
named by hand, verified, audited, then smoke-tested where it is served.

The audit trail is what :func:`include.mlops_core.pipeline.promote` writes: each champion's model
version carries ``audit.promoted_from`` (the version it replaced), and an audit record lies under
``<artifacts_uri>/audit/<model>/``. A rollback moves the alias back, tags both versions
(``audit.rolled_back_*`` on the one taken down, ``audit.restored_*`` on the one restored) and
writes its own record there (``rollback-v…``). It restores only a version that was
``@champion`` before and whose training run has an approved gate decision.

An automatic rollback (:func:`auto_rollback_reason`) happens only for the version that is still
``@champion``, that the live-performance check found below the floor, and that was promoted
within ``rollback.auto_window_hours`` of the check: an older champion is retrained, not rolled
back, and a restored champion is never rolled back again automatically (no cascade).

Plain Python, no Airflow import; the operators in plugins/mlops_airflow/operators/rollback.py call it.
"""

from __future__ import annotations

import json
import logging
from datetime import UTC, datetime, timedelta
from typing import Any

from include.mlops_core import tracking
from include.mlops_core.errors import RollbackError
from include.mlops_core.storage import ObjectExistsError, ObjectStore, join, safe_name

log = logging.getLogger(__name__)

PREFIX = "audit."  # the champion's audit tags (pipeline.promote)


def audit_uri(artifacts_uri: str, model_name: str, *, to_version: str, from_version: str,
              dag_run_id: str) -> str:
    return join(artifacts_uri, "audit", model_name,
                f"rollback-v{int(to_version):06d}-from-{from_version}-{safe_name(dag_run_id)}.json")


def _gate_approved(client: Any, mv: Any) -> bool:
    if (mv.tags or {}).get("mlops.gate") == "approved":
        return True
    return client.get_run(mv.run_id).data.tags.get("mlops.gate") == "approved"


def plan(client: Any, model_name: str, *, to_version: str | None = None,
         by: str | None = None) -> dict[str, Any]:
    """Where ``@champion`` goes: ``{"from", "to", "how", "done"}``.

    ``to_version`` None: the version the current champion replaced (its ``audit.promoted_from``).
    ``done`` is true when this same rollback (``by``) already moved the alias (a task retry).
    """
    current = tracking.alias_version(client, model_name)
    if current is None:
        raise RollbackError(f"{model_name} has no @champion: nothing to roll back. Promote a "
                            "version through the training DAG first")
    tags = dict(current.tags or {})
    if by and tags.get(f"{PREFIX}rollback.pending_by") == by:
        return {"from": tags[f"{PREFIX}rollback.pending_from"], "to": str(current.version),
                "how": "this rollback moved the alias already (task retry)", "done": True}
    if to_version:
        target = str(to_version).strip().lstrip("v")
        if not target.isdigit():
            raise RollbackError(f"to_version {to_version!r} is not a version number of "
                                f"{model_name} (e.g. 3)")
        how = "the version given in to_version"
    else:
        target = tags.get(f"{PREFIX}promoted_from", "none")
        if target in ("", "none"):
            raise RollbackError(f"{model_name} v{current.version} was the first @champion: the "
                                "audit trail names no champion before it. Give the version to "
                                "restore in the to_version Param")
        when = tags.get(f"{PREFIX}promoted_at", "an unknown time")
        how = (f"the champion before v{current.version} (audit trail: v{current.version} was "
               f"promoted from v{target} at {when} by {tags.get(f'{PREFIX}promoted_by', '?')})")
    if target == str(current.version):
        raise RollbackError(f"{model_name} v{target} is @champion already: nothing to roll back")
    try:
        mv = client.get_model_version(model_name, target)
    except Exception as err:
        if tracking.is_not_found(err):
            raise RollbackError(f"{model_name} has no version {target} in the registry") from None
        raise
    if not _gate_approved(client, mv):
        raise RollbackError(f"refusing to restore {model_name} v{target}: its training run "
                            f"{mv.run_id} has no approved gate decision. Name a version that "
                            "passed the gate")
    if not (mv.tags or {}).get(f"{PREFIX}promoted_by"):
        # Passing the gate is not enough where a person approves promotions (approval.required):
        # a version that was never @champion may have been rejected by that person.
        raise RollbackError(f"refusing to restore {model_name} v{target}: it was never "
                            "@champion (no audit.promoted_by tag), so it never passed a "
                            "promotion, and its approval where one is required. A rollback "
                            "restores a version that served before; promote a new one through "
                            "the training DAG")
    return {"from": str(current.version), "to": target, "how": how, "done": False}


def rollback(client: Any, store: ObjectStore, *, artifacts_uri: str, model_name: str,
             to_version: str | None, reason: str, by: str, dag_run_id: str,
             trigger: str) -> dict[str, Any]:
    """Move ``@champion`` as :func:`plan` says, verify it, tag both versions and write the audit
    record. Safe to re-run: a retry after the alias moved completes the same record."""
    step = plan(client, model_name, to_version=to_version, by=by)
    source, target = step["from"], step["to"]
    if not step["done"]:
        log.info("Rolling %s @champion back from v%s to v%s: %s", model_name, source, target,
                 step["how"])
        # Kept before the move, so a retry after it still knows where the alias came from.
        client.set_model_version_tag(model_name, target, f"{PREFIX}rollback.pending_from", source)
        client.set_model_version_tag(model_name, target, f"{PREFIX}rollback.pending_by", by)
        client.set_registered_model_alias(model_name, tracking.CHAMPION, target)
    check = tracking.alias_version(client, model_name)
    if check is None or str(check.version) != target:
        raise RollbackError(f"@champion of {model_name} points at "
                            f"v{getattr(check, 'version', None)} after setting it to v{target}: "
                            "a promotion ran concurrently; check the audit records and roll "
                            "back again if needed")
    at = (check.tags or {}).get(f"{PREFIX}restored_at") if step["done"] else None
    at = at or datetime.now(UTC).isoformat()
    record = {"action": "rollback", "model_name": model_name, "alias": tracking.CHAMPION,
              "from_version": source, "to_version": target, "rolled_back_at": at, "by": by,
              "trigger": trigger, "reason": reason, "how": step["how"]}
    for version, tags in ((source, {"rolled_back_at": at, "rolled_back_by": by,
                                    "rolled_back_to": target, "rolled_back_reason": reason}),
                          (target, {"restored_at": at, "restored_by": by,
                                    "restored_from": source})):
        for key, value in tags.items():
            client.set_model_version_tag(model_name, version, f"{PREFIX}{key}", value[:4000])
    uri = audit_uri(artifacts_uri, model_name, to_version=target, from_version=source,
                    dag_run_id=dag_run_id)
    try:
        store.write_bytes(uri, json.dumps(record, indent=2).encode(), create_only=True)
    except ObjectExistsError:
        log.info("Audit record %s already written (task retry)", uri)
    log.info("Rolled back %s @champion from v%s to v%s; verified; audit %s", model_name, source,
             target, uri)
    return {"model_name": model_name, "version": target, "previous": source,
            "rolled_back": source, "reason": reason, "trigger": trigger, "audit_uri": uri}


def auto_rollback_reason(client: Any, live: dict[str, Any], *, window_hours: float,
                         now: datetime | None = None) -> tuple[bool, str]:
    """Whether the live-performance result ``live`` calls for an automatic rollback, and why
    (or why not), in one sentence."""
    name, version = live.get("model_name"), str(live.get("model_version"))
    if not live.get("below_floor"):
        return False, f"{name} v{version} is above its performance floor"
    if window_hours <= 0:
        return False, ("automatic rollback is off for this dataset (rollback.auto_window_hours "
                       "is 0); retraining is triggered instead")
    current = tracking.alias_version(client, name)
    if current is None or str(current.version) != version:
        return False, (f"v{version} is no longer @champion (now "
                       f"{'v' + str(current.version) if current else 'none'}): nothing to roll "
                       "back")
    tags = dict(current.tags or {})
    previous = tags.get(f"{PREFIX}promoted_from", "none")
    if previous in ("", "none"):
        return False, f"{name} v{version} was the first champion: no previous one to restore"
    promoted = tags.get(f"{PREFIX}promoted_at")
    try:
        promoted_at = datetime.fromisoformat(promoted) if promoted else None
    except ValueError:
        promoted_at = None
    if promoted_at is None:
        return False, f"{name} v{version} has no promotion time in the audit trail"
    if promoted_at.tzinfo is None:
        promoted_at = promoted_at.replace(tzinfo=UTC)
    age = (now or datetime.now(UTC)) - promoted_at
    if age > timedelta(hours=window_hours):
        return False, (f"{name} v{version} was promoted {age.total_seconds() / 3600:.1f} h ago, "
                       f"outside rollback.auto_window_hours ({window_hours:g} h): retraining "
                       "is triggered instead")
    failed = "; ".join(live.get("failed") or []) or "below the performance floor"
    return True, (f"live performance of {name} v{version} on {live.get('partition_date')} is "
                  f"below the floor ({failed}), {age.total_seconds() / 3600:.1f} h after its "
                  f"promotion (within rollback.auto_window_hours {window_hours:g} h)")


def sample_frame(client: Any, store: ObjectStore, model_name: str, version: str,
                 columns: list[str], n: int = 5) -> Any:
    """``n`` rows of the feature ``columns`` from the data ``version`` was trained on (its
    ``mlops.data_snapshot``): what the smoke test predicts on."""
    import io

    import pandas as pd

    mv = client.get_model_version(model_name, version)
    snapshot = (mv.tags or {}).get("mlops.data_snapshot")
    if not snapshot:
        raise RollbackError(f"{model_name} v{version} has no mlops.data_snapshot tag: no rows to "
                            "smoke-test it with")
    frame = pd.read_parquet(io.BytesIO(store.read_bytes(snapshot)))
    missing = [c for c in columns if c not in frame.columns]
    if missing:
        raise RollbackError(f"the training snapshot {snapshot} of {model_name} v{version} lacks "
                            f"the feature columns {', '.join(missing)} of the dataset config")
    return frame[columns].head(n).reset_index(drop=True)


def json_rows(frame: Any) -> list[dict[str, Any]]:
    """The rows as JSON objects (dates in ISO format, nulls as null): a serving request."""
    return json.loads(frame.to_json(orient="records", date_format="iso"))
