"""Rollback of ``@champion`` and the serving smoke test after it; the work is in
:mod:`include.mlops_core.rollback` and :mod:`include.mlops_core.serving`.

``RollbackOperator`` runs by hand in the ``rollback`` DAG (the champion before the current one,
or the ``to_version`` Param) and automatically in ``performance_monitor`` (``automatic=True``:
only for a champion promoted within the dataset's ``rollback.auto_window_hours`` whose live
performance fell below the floor). Both run in the one-slot ``mlops_promotion`` pool, so a
rollback never interleaves with a promotion.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from mlops_airflow.links import MODEL_VERSION
from mlops_airflow.operators.training import PROMOTION_POOL, MlopsStageOperator
from mlops_airflow.run_context import run_params

if TYPE_CHECKING:
    from airflow.sdk import Context

SERVING_URL_ENV = "MLOPS_SERVING_URL"


class RollbackOperator(MlopsStageOperator):
    """Move ``@champion`` back, verify the alias, tag both versions and write the audit record.

    Returns ``{"model_name", "version", "previous", "rolled_back", "reason", "trigger",
    "audit_uri"}``; with ``automatic`` and nothing to roll back, ``{"rolled_back": None,
    "reason"}`` and the tasks after it (the smoke test) are skipped.

    :param automatic: decide from ``live`` (the live-performance task's XCom) and the dataset's
        ``rollback.auto_window_hours`` instead of the ``to_version`` and ``reason`` Params
    :param live: the live-performance task's XCom (templated; with ``automatic``)
    :param skip_when_kept: task ids to skip when an automatic rollback is not done
    """

    operator_extra_links = (MODEL_VERSION,)
    template_fields: Sequence[str] = (*MlopsStageOperator.template_fields, "live")
    ui_color = "#ffe4c4"
    uses_mlflow_run = False

    def __init__(self, *, automatic: bool = False, live: Any = None,
                 skip_when_kept: Sequence[str] = ("smoke_test",), pool: str = PROMOTION_POOL,
                 **kwargs: Any) -> None:
        super().__init__(pool=pool, **kwargs)
        self.automatic = automatic
        self.live = live
        self.skip_when_kept = list(skip_when_kept)
        self.conf_keys = "performance_monitor" if automatic else "rollback"

    def run(self, run_ctx: None, context: Context) -> dict[str, Any]:
        from include.mlops_core.config import resolve_config
        from include.mlops_core.rollback import auto_rollback_reason, rollback

        params = run_params(context)
        config = resolve_config(params)
        client = self.mlflow_hook.client
        dag_run = context["dag_run"]
        by = f"airflow:{dag_run.dag_id}/{dag_run.run_id}"
        if self.automatic:
            name = str(self.live.get("model_name") or config.registered_model_name)
            roll, why = auto_rollback_reason(client, dict(self.live),
                                             window_hours=config.rollback.auto_window_hours)
            if not roll:
                self.log.info("No automatic rollback: %s", why)
                result = {"model_name": name, "rolled_back": None, "reason": why}
                self.skip_downstream(context, result, task_ids=self.skip_when_kept)
                return result
            to_version, reason, trigger = None, why, "automatic (performance_monitor)"
        else:
            name = config.registered_model_name
            to_version = params.get("to_version") or None
            reason = str(params.get("reason") or "rolled back by hand")
            user = getattr(dag_run, "triggering_user_name", None)
            trigger = f"by hand ({user or 'a user'})"
        return rollback(client, self.s3_hook.store, artifacts_uri=self.artifacts_uri,
                        model_name=name, to_version=to_version, reason=reason, by=by,
                        dag_run_id=dag_run.run_id, trigger=trigger)


class ServingSmokeTestOperator(MlopsStageOperator):
    """After a rollback: the restored version loads through the trusted loader and predicts a few
    rows of the data it was trained on; where a serving endpoint is configured
    (``MLOPS_SERVING_URL``), the endpoint serves that version and answers those rows.

    Returns ``{"model_name", "version", "rows", "serving"}`` (``serving``: the endpoint's answer,
    or None without one).

    :param rollback: the rollback task's XCom (templated)
    :param serving_url: the serving endpoint (templated; default ``$MLOPS_SERVING_URL``; never
        a run's conf)
    :param timeout: seconds to wait for the endpoint to serve the restored version
    :param conf_keys: the DAG whose run conf this task reads (``rollback`` or
        ``performance_monitor``)
    """

    operator_extra_links = (MODEL_VERSION,)
    template_fields: Sequence[str] = (*MlopsStageOperator.template_fields, "rollback")
    ui_color = "#e6ffe6"
    uses_mlflow_run = False

    def __init__(self, *, rollback: Any, serving_url: str | None = None, timeout: float = 60.0,
                 conf_keys: str = "rollback", **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.conf_keys = conf_keys
        self.rollback = rollback
        self.serving_url = serving_url
        self.timeout = timeout

    def run(self, run_ctx: None, context: Context) -> dict[str, Any]:
        from include.mlops_core import tracking
        from include.mlops_core.config import resolve_config
        from include.mlops_core.rollback import json_rows, sample_frame
        from include.mlops_core.scoring import predict

        config = resolve_config(run_params(context))
        name, version = str(self.rollback["model_name"]), str(self.rollback["version"])
        client = self.mlflow_hook.client
        frame = sample_frame(client, self.s3_hook.store, name, version,
                             [c.name for c in config.feature_columns])
        model = tracking.load_version(client, name, version)
        predictions, _ = predict(model, frame, config)
        if len(predictions) != len(frame):
            from include.mlops_core.errors import RollbackError

            raise RollbackError(f"{name} v{version} gave {len(predictions)} predictions for "
                                f"{len(frame)} rows")
        self.log.info("%s v%s loads and predicts %d rows of its training data", name, version,
                      len(frame))
        url = self.serving_url or os.environ.get(SERVING_URL_ENV)
        served = None
        if url:
            from include.mlops_core.serving import served_models, smoke_test

            models = served_models(url)
            if name in models:
                answer = smoke_test(url, model_name=name, expected_version=version,
                                    rows=json_rows(frame), timeout=self.timeout)
                served = {**answer, "predictions": len(answer.get("predictions") or [])}
                self.log.info("Serving endpoint %s serves %s v%s and answered %d rows in %.1f ms",
                              url, name, version, served["predictions"],
                              float(served.get("latency_ms") or 0))
            else:
                self.log.info("The serving endpoint %s does not serve %s (it serves %s): "
                              "nothing to check there", url, name, ", ".join(models) or "none")
        else:
            self.log.info("No serving endpoint to check (%s is not set)", SERVING_URL_ENV)
        return {"model_name": name, "version": version, "rows": len(frame), "serving": served}
