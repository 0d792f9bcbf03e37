"""Thin operators for the training pipeline; the work is in :mod:`include.mlops_core.pipeline`.

Every operator reads the dataset config from the DAG run's Params, calls one pipeline stage and
returns a small dict (URIs, ids, metrics). All but the first (check_changed) find or resume the
DAG run's MLflow run by tag.
Bad data fails the task at once (retrying cannot fix it); an unreachable service is retried.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime, timedelta
from functools import cached_property
from typing import TYPE_CHECKING, Any

from airflow.sdk import BaseOperator, SkipMixin
from airflow.sdk.exceptions import AirflowFailException, AirflowSkipException, DownstreamTasksSkipped

from mlops_airflow.hooks.mlflow import MlflowHook
from mlops_airflow.hooks.object_storage import ObjectStorageHook
from mlops_airflow.links import MLFLOW_RUN, MLFLOW_RUN_XCOM, MODEL_VERSION, PROMOTION_CARD
from mlops_airflow.run_context import (
    data_interval,
    retrain_trigger,
    run_date,
    run_params,
    run_partition_dates,
    trigger_summary,
    trigger_tags,
)

if TYPE_CHECKING:
    from airflow.sdk import Context

    from include.mlops_core.pipeline import RunContext

PROMOTION_POOL = "mlops_promotion"


def close_failed_mlflow_run(context: Context) -> None:
    """``on_failure_callback`` of every stage: Airflow calls it once the task has failed for
    good (its last try, or a failure that is not retried), never for a try that is retried.
    Marks the DAG run's MLflow run (the one this task pushed, if any: ``check_changed`` has
    none) ``FAILED`` with ``mlops.outcome=failed:<task_id>``."""
    from include.mlops_core.tracking import finish_run

    ti = context["ti"]
    try:
        run_id = ti.xcom_pull(task_ids=ti.task_id, key=MLFLOW_RUN_XCOM,
                              map_indexes=getattr(ti, "map_index", -1))
        if isinstance(run_id, list):  # several map indexes asked: this one's only
            run_id = run_id[0] if run_id else None
        if run_id:
            finish_run(context["task"].mlflow_hook.client, run_id,
                       outcome=f"failed:{ti.task_id}", failed=True)
    except Exception as err:  # noqa: BLE001 - never hide the task's own error
        import logging

        logging.getLogger(__name__).warning("Could not mark the MLflow run of %s failed: %s",
                                            ti.task_id, err)


class MlopsStageOperator(BaseOperator, SkipMixin):
    """Base for the pipeline's operators: config from Params, hooks, the DAG run's MLflow run.

    Every task first checks the run's conf against the deployment's policy
    (:mod:`include.mlops_core.policy`): a key the run may not set, or a gate it may not loosen,
    fails the task before anything else happens, so the first task of a run stops it.

    :param artifacts_uri: where run outputs, snapshots and audit records go, e.g.
        ``s3://mlops`` (templated; default: the policy's ``artifacts_uri``, never a run's conf)
    :param mlflow_conn_id: connection of the MLflow tracking server
    :param s3_conn_id: connection of the S3-compatible object store
    """

    operator_extra_links = (MLFLOW_RUN,)  # mlops_airflow.links: the DAG run's MLflow run

    template_fields: Sequence[str] = ("artifacts_uri",)
    ui_color = "#e8f4fd"
    uses_mlflow_run = True  # False: run() gets no RunContext and no MLflow run is created
    conf_keys = "training"  # which DAG's run conf keys this task understands (policy.DAG_KEYS)
    # True: a partition missing in a run on its data interval is waited for in the triggerer,
    # up to the dataset's data_wait.timeout_minutes (the first task of training and scoring).
    waits_for_data = False

    def __init__(self, *, artifacts_uri: str | None = None,
                 mlflow_conn_id: str = MlflowHook.default_conn_name,
                 s3_conn_id: str = ObjectStorageHook.default_conn_name, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.artifacts_uri = artifacts_uri
        self.mlflow_conn_id = mlflow_conn_id
        self.s3_conn_id = s3_conn_id
        self.loosened: list[str] = []  # gate loosenings of this run, allowed by the policy
        # A task that failed for good (no retry left, or not retryable) closes the MLflow run
        # first, then the alerts of default_args (mlops_airflow.notifiers) go out.
        callbacks = self.on_failure_callback
        self.on_failure_callback = [close_failed_mlflow_run, *(
            [] if callbacks is None else callbacks if isinstance(callbacks, list | tuple)
            else [callbacks])]

    @cached_property
    def mlflow_hook(self) -> MlflowHook:
        return MlflowHook(self.mlflow_conn_id)

    @cached_property
    def s3_hook(self) -> ObjectStorageHook:
        return ObjectStorageHook(self.s3_conn_id)

    def enforce_policy(self, context: Context) -> None:
        """Refuse a conf key the run may not set, or a gate it may not loosen (the deployment's
        policy decides); note the loosenings it allows. Runs before anything else."""
        from include.mlops_core.policy import DAG_KEYS, check_run_conf, load_policy, resolve

        policy = load_policy()
        check_run_conf(getattr(context["dag_run"], "conf", None), policy,
                       DAG_KEYS[self.conf_keys])
        self.artifacts_uri = self.artifacts_uri or policy.artifacts_uri
        _, self.loosened = resolve(run_params(context), policy)
        if self.loosened:
            self.log.warning("This run loosens the gate (allowed by the deployment's policy): "
                             "%s", "; ".join(self.loosened))

    def dag_context(self, context: Context) -> dict[str, Any]:
        """Who started this run and what it covers, in words (the promotion card, the audit
        record): no ``None`` for a run without a logical date or data interval."""
        dag_run = context["dag_run"]
        run_type = str(getattr(getattr(dag_run, "run_type", None), "value",
                               getattr(dag_run, "run_type", "")) or "")
        user = getattr(dag_run, "triggering_user_name", None)
        trigger = retrain_trigger(context)
        logical = context.get("logical_date")
        start, end = data_interval(context)
        if trigger:
            started_by = f"asset event {trigger['asset']}: {trigger_summary(trigger)}"
            interval = "none: the alert's day and the days before it (see lineage)"
        else:
            started_by = {"scheduled": "the schedule",
                          "manual": f"{user or 'a user'} (manual trigger)",
                          "backfill": f"a backfill{f' by {user}' if user else ''}",
                          "asset_triggered": "an asset event"}.get(run_type, run_type or "unknown")
            interval = f"{start:%Y-%m-%d %H:%M} to {end:%Y-%m-%d %H:%M} UTC" + (
                "" if logical else " (the last full day before the trigger)")
        out = {"dag_id": dag_run.dag_id, "dag_run_id": dag_run.run_id,
               "logical_date": logical.isoformat() if logical else "none",
               "triggered_by": started_by, "data_interval": interval}
        if trigger:
            out["trigger"] = trigger_summary(trigger)
        return out

    def run_context(self, context: Context) -> RunContext:
        from include.mlops_core import tracking
        from include.mlops_core.config import resolve_config
        from include.mlops_core.pipeline import RunContext, run_key

        config = resolve_config(run_params(context))
        dag_run = context["dag_run"]
        when = run_date(context)
        client = self.mlflow_hook.client
        tags = {"airflow.logical_date": str(when), "mlops.dataset": config.name,
                "mlops.trigger": str(getattr(dag_run, "run_type", "") or "")}
        trigger = retrain_trigger(context)
        if trigger:  # why this retrain happened, searchable in MLflow
            tags.update(trigger_tags(trigger))
        mlflow_run_id = tracking.find_or_create_run(
            client, experiment=config.registered_model_name, dag_id=dag_run.dag_id,
            dag_run_id=dag_run.run_id, run_name=f"{dag_run.dag_id}:{run_key(when)}", tags=tags)
        client.set_tag(mlflow_run_id, f"airflow.try.{self.task_id}", str(context["ti"].try_number))
        # For the alert of a failure or an outcome (mlops_airflow.notifiers): the MLflow run to link to.
        context["ti"].xcom_push(key=MLFLOW_RUN_XCOM, value=mlflow_run_id)
        return RunContext(config=config, store=self.s3_hook.store, client=client,
                     mlflow_run_id=mlflow_run_id, artifacts_uri=self.artifacts_uri,
                     run_key=run_key(when), loosened=tuple(self.loosened))

    def execute(self, context: Context) -> Any:
        from include.mlops_core.errors import MissingPartitionError, retryable

        run_ctx = None  # the MLflow run is closed by close_failed_mlflow_run (on_failure_callback)
        try:
            self.enforce_policy(context)
            if self.uses_mlflow_run:
                run_ctx = self.run_context(context)
            try:
                return self.run(run_ctx, context)
            except MissingPartitionError as err:
                failure = self.wait_for_data(err, context)  # defers, or how long it waited
                if failure is err:
                    raise
                raise failure from None  # its message already holds err's: one last line
        except (DownstreamTasksSkipped, AirflowSkipException):
            raise  # an outcome (unchanged data, rejected model), not a failure
        except AirflowFailException:
            raise  # already classified: fails without a retry
        except Exception as err:
            if retryable(err):
                raise  # Airflow retries it; the last failed try closes the MLflow run
            # Bad data, config or registry state: a retry meets the same, so fail now.
            self.log.error("%s", err)
            raise AirflowFailException(str(err)) from err

    def wait_for_data(self, err: Any, context: Context) -> Exception:
        """Defer to :class:`mlops_airflow.triggers.PartitionsArrivedTrigger` until the missing
        partitions arrive or the dataset's ``data_wait`` deadline passes; returns the error to
        fail with when this run does not wait (a ``partition_date`` given by hand, no
        ``data_wait``, a task that does not wait) or waited until the deadline."""
        from datetime import UTC

        from include.mlops_core.config import resolve_config
        from include.mlops_core.errors import MissingPartitionError

        if not self.waits_for_data or not err.missing or context["params"].get("partition_date"):
            return err
        config = resolve_config(run_params(context))
        wait = config.data_wait
        if wait.timeout_minutes <= 0:
            return err
        now = datetime.now(UTC)
        deadline = self._wait_deadline or now + timedelta(minutes=wait.timeout_minutes)
        if now >= deadline:
            return MissingPartitionError(
                f"{err.args[0]}. Waited {wait.timeout_minutes} min for it (data_wait."
                f"timeout_minutes of dataset {config.name!r}), until {deadline:%Y-%m-%d %H:%M} "
                "UTC", missing=err.missing)
        from mlops_airflow.triggers import PartitionsArrivedTrigger

        self.log.info("Waiting for %s until %s UTC (data_wait.timeout_minutes %d of dataset %r), "
                      "in the triggerer: no worker slot is held; the task resumes when the data "
                      "arrives", ", ".join(err.missing), f"{deadline:%Y-%m-%d %H:%M}",
                      wait.timeout_minutes, config.name)
        self.defer(trigger=PartitionsArrivedTrigger(
            prefixes=err.missing, s3_conn_id=self.s3_conn_id, deadline=deadline.isoformat(),
            poll_seconds=wait.poll_seconds), method_name="resume_after_wait")

    _wait_deadline: datetime | None = None

    def resume_after_wait(self, context: Context, event: dict[str, Any]) -> Any:
        """The trigger fired: the data arrived (run the task) or the deadline passed (run it
        once more, which fails with the missing-partition line unless the data came last)."""
        self._wait_deadline = datetime.fromisoformat(event["deadline"])
        if event.get("status") == "arrived":
            self.log.info("Data arrived; running the task")
        return self.execute(context)

    def run(self, run_ctx: RunContext, context: Context) -> Any:
        raise NotImplementedError

    def skip_downstream(self, context: Context, result: Any,
                        task_ids: Sequence[str] | None = None) -> None:
        """Skip all downstream tasks (or those of ``task_ids``), keeping our XCom (``skip``
        raises, so the return value would otherwise be lost)."""
        context["ti"].xcom_push(key="return_value", value=result)
        # Every downstream task at once: nothing after a "no" should run, and a cascade through
        # trigger rules costs a scheduler loop per task.
        tasks = [t for t in self.get_flat_relatives(upstream=False)
                 if task_ids is None or t.task_id in task_ids]
        if tasks:
            self.skip(ti=context["ti"], tasks=tasks)


class IngestOperator(MlopsStageOperator):
    """Read the partitions of the run's data interval, schema-check them, write a manifest.

    Which days: those in the data interval, extended back to ``lookback_days`` of the dataset
    config; the ``partition_date`` Param (YYYY-MM-DD) replaces the interval for a backfill by hand.
    Returns ``{"manifest_uri", "snapshot_uri", "fingerprint", "rows"}``.
    """

    ui_color = "#d4f0d4"

    def run(self, run_ctx: RunContext, context: Context) -> dict[str, Any]:
        from include.mlops_core.pipeline import ingest

        return ingest(run_ctx, run_partition_dates(context, run_ctx.config))


class SkipIfUnchangedOperator(MlopsStageOperator):
    """First task: skip the whole run when the partitions' fingerprint (from a listing, no file
    read), the ML code and the training params equal those of the current champion (the
    ``force`` Param overrides). A skipped run leaves no MLflow run behind.
    """

    operator_extra_links = ()  # opens no MLflow run
    uses_mlflow_run = False
    waits_for_data = True

    def run(self, run_ctx: None, context: Context) -> dict[str, Any]:
        from dataclasses import asdict

        from include.mlops_core.config import resolve_config
        from include.mlops_core.pipeline import check_changed
        from include.mlops_core.tracking import RestRegistry, alias_version

        params = run_params(context)
        config = resolve_config(params)
        self.mlflow_hook.check_available()
        # Over REST: an unchanged run never imports mlflow (docs/architecture.md)
        found = alias_version(RestRegistry(self.mlflow_hook.tracking_uri,
                                           auth=self.mlflow_hook.auth),
                              config.registered_model_name)
        champion = None if found is None else asdict(found)
        dag_run = context["dag_run"]
        trigger = retrain_trigger(context)
        if trigger is not None:
            from include.mlops_core.retrain import blocked

            self.log.info("Started by %s event(s): %s", trigger["events"], trigger_summary(trigger))
            why = blocked(self.s3_hook.store, self.artifacts_uri, config.registered_model_name,
                          at=dag_run.run_after, dag_run_id=dag_run.run_id,
                          cooldown_hours=config.monitoring.retrain_cooldown_hours)
            if why:  # checked first: however many alerts arrive, one retrain per window
                result = {"changed": False, "reason": why, "trigger": trigger_summary(trigger)}
                self.log.info("Skipping training: %s", why)
                self.skip_downstream(context, result)
                return result
        manifest_uri = (champion or {}).get("tags", {}).get("mlops.reproducibility_uri")
        result = check_changed(config, self.s3_hook.store, run_partition_dates(context, config),
                               champion, dag_run_id=dag_run.run_id,
                               force=bool(params.get("force")),
                               champion_manifest=(lambda: self.mlflow_hook.load_dict(manifest_uri))
                               if manifest_uri else None)
        if trigger is not None:
            result["trigger"] = trigger_summary(trigger)
            if result["changed"]:
                from include.mlops_core.retrain import claim

                granted, why = claim(
                    self.s3_hook.store, self.artifacts_uri, config.registered_model_name,
                    at=dag_run.run_after, dag_run_id=dag_run.run_id,
                    cooldown_hours=config.monitoring.retrain_cooldown_hours,
                    trigger={"asset": trigger["asset"], **trigger["extra"]})
                result["changed"] = granted
                result["reason"] = f"{result['reason']}; {why}" if granted else why
        if result["changed"]:
            self.log.info("Training: %s", result["reason"])
        else:
            self.log.info("Skipping training: %s", result["reason"])
            self.skip_downstream(context, result)
        return result


class ValidateDataOperator(MlopsStageOperator):
    """Great Expectations suite derived from the dataset's declared schema; fails on bad data.

    :param ingest_result: the ingest task's XCom (templated)
    """

    template_fields: Sequence[str] = (*MlopsStageOperator.template_fields, "ingest_result")

    def __init__(self, *, ingest_result: Any, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.ingest_result = ingest_result

    def run(self, run_ctx: RunContext, context: Context) -> dict[str, Any]:
        from include.mlops_core.pipeline import validate

        return validate(run_ctx, self.ingest_result["snapshot_uri"])


class BuildFeaturesOperator(MlopsStageOperator):
    """Split into train / held-out rows and record the feature plan.

    :param ingest_result: the ingest task's XCom (templated)
    """

    template_fields: Sequence[str] = (*MlopsStageOperator.template_fields, "ingest_result")

    def __init__(self, *, ingest_result: Any, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.ingest_result = ingest_result

    def run(self, run_ctx: RunContext, context: Context) -> dict[str, Any]:
        from include.mlops_core.pipeline import build_features

        split = build_features(run_ctx, self.ingest_result["snapshot_uri"])
        # What the train task maps over: one entry per candidate, each with the same split.
        return [{"candidate": c.label, **split} for c in run_ctx.config.training.all_candidates]


def split_of(features: Any) -> dict[str, Any]:
    """The train/held-out split from the build_features XCom: one entry per candidate (the
    same split in each), or, from a DAG run of an older version, the split itself."""
    return dict(features[0] if isinstance(features, list | tuple) else features)


class PlanTuningOperator(MlopsStageOperator):
    """What the tune task maps over: ``tuning.parallel_tasks`` slots per candidate with a
    search space; none (tune is skipped) when no candidate has one. Cheap: the config only, no
    MLflow run; it runs beside ingest and validate."""

    uses_mlflow_run = False

    def run(self, run_ctx: None, context: Context) -> list[dict[str, Any]]:
        from include.mlops_core.config import resolve_config

        training = resolve_config(run_params(context)).training
        slots = [{"candidate": c.label, "worker": worker} for c in training.all_candidates
                 if c.search_space for worker in range(training.tuning.parallel_tasks)]
        tuned = sorted({s["candidate"] for s in slots})
        self.log.info("Tuning %s with %d task(s) each, %d trials per study",
                      ", ".join(tuned), training.tuning.parallel_tasks,
                      training.tuning.n_trials) if slots else \
            self.log.info("No candidate has a search space: nothing to tune")
        return slots


class EvaluateModelOperator(MlopsStageOperator):
    """Held-out and per-slice metrics, a plot, and the champion's metrics on the same rows.

    :param model: the train task's XCom (templated)
    :param features: the build_features task's XCom (templated)
    """

    template_fields: Sequence[str] = (*MlopsStageOperator.template_fields, "model", "features")

    def __init__(self, *, model: Any, features: Any, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.model = model
        self.features = features

    def run(self, run_ctx: RunContext, context: Context) -> dict[str, Any]:
        from include.mlops_core.pipeline import evaluate

        return evaluate(run_ctx, model_uri=self.model["model_uri"],
                        test_uri=split_of(self.features)["test_uri"],
                        family=self.model.get("family"), candidate=self.model.get("candidate"))


class QualityGateOperator(MlopsStageOperator):
    """Thresholds + champion-vs-challenger. A rejection is an outcome, not a failure: the
    decision and every reason are logged in one line and in the promotion card, and the
    register/promote tasks are skipped.

    :param evaluation: the evaluate task's XCom (templated)
    """

    operator_extra_links = (MLFLOW_RUN, PROMOTION_CARD)

    template_fields: Sequence[str] = (*MlopsStageOperator.template_fields, "evaluation")

    def __init__(self, *, evaluation: Any, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.evaluation = evaluation

    def run(self, run_ctx: RunContext, context: Context) -> dict[str, Any]:
        from include.mlops_core.pipeline import gate

        result = gate(run_ctx, evaluation_uri=self.evaluation["evaluation_uri"],
                      dag_context=self.dag_context(context))
        if not result["approved"]:
            self.skip_downstream(context, result)
        return result


class RegisterModelOperator(MlopsStageOperator):
    """Register the approved model in the MLflow Model Registry (once per run) with the
    reproducibility manifest as version tags.

    :param model: the train task's XCom (templated)
    :param ingest_result: the ingest task's XCom (templated)
    """

    operator_extra_links = (MLFLOW_RUN, MODEL_VERSION)

    template_fields: Sequence[str] = (*MlopsStageOperator.template_fields, "model",
                                      "ingest_result")

    def __init__(self, *, model: Any, ingest_result: Any, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.model = model
        self.ingest_result = ingest_result

    def run(self, run_ctx: RunContext, context: Context) -> dict[str, Any]:
        from include.mlops_core.pipeline import register

        return register(run_ctx, model_uri=self.model["model_uri"],
                        manifest_uri=self.ingest_result["manifest_uri"],
                        dag_context=self.dag_context(context),
                        reproducibility_uri=self.model.get("reproducibility_uri"))


class PromoteModelOperator(MlopsStageOperator):
    """Point the ``champion`` alias at the registered version, verify it and write the audit
    record. Runs in the one-slot ``mlops_promotion`` pool so promotions never interleave.

    :param registration: the register task's XCom (templated)
    :param decision: the gate task's XCom (templated)
    :param alias: registry alias to move; default: ``champion``, or ``challenger`` when the
        dataset's rollout mode is ``shadow`` or ``canary`` and a champion exists
    """

    operator_extra_links = (MLFLOW_RUN, MODEL_VERSION)

    template_fields: Sequence[str] = (*MlopsStageOperator.template_fields, "registration",
                                      "decision", "alias")

    def __init__(self, *, registration: Any, decision: Any, alias: str | None = None,
                 pool: str = PROMOTION_POOL, **kwargs: Any) -> None:
        super().__init__(pool=pool, **kwargs)
        self.registration = registration
        self.decision = decision
        self.alias = alias

    def run(self, run_ctx: RunContext, context: Context) -> dict[str, Any]:
        from include.mlops_core import tracking
        from include.mlops_core.pipeline import promote

        if not self.decision.get("approved"):
            raise AirflowFailException("refusing to promote: the gate did not approve this model")
        alias = self.alias
        if alias is None:
            # Shadow / canary rollout: an approved model beside an existing champion becomes the
            # challenger; the A/B decision on live labels promotes it later.
            has_champion = self.decision.get("champion_version") is not None
            alias = tracking.CHALLENGER if run_ctx.config.rollout.mode != "direct" and has_champion \
                else tracking.CHAMPION
        return promote(run_ctx, version=self.registration["version"],
                       reasons=self.decision["reasons"], dag_context=self.dag_context(context),
                       alias=alias, compared_with=self.decision.get("champion_version"))
