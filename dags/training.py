"""Training: check → ingest → validate → features → tune → train → select → evaluate → gate →
register → approve → promote (approve waits for a person only where the dataset config asks
for it; tune runs only for candidates with a search space).

Trains the dataset named by the ``dataset`` Param (a YAML file in include/datasets/) on the
partitions of the run's data interval, or, when started by a ``drift_detected`` or
``performance_degraded`` event, on the recent days the alert is about. A model is registered
only when every gate passes and becomes ``champion`` (or ``challenger`` under a shadow/canary
rollout) only after that. See docs/configuration.md for the Params.
"""

from airflow.sdk import DAG, AssetOrTimeSchedule, CronDataIntervalTimetable
from pendulum import datetime

from mlops_airflow.assets import DRIFT_DETECTED, PERFORMANCE_DEGRADED
from mlops_airflow.dag_defaults import default_args, run_params
from mlops_airflow.notifiers import alerts_for
from mlops_airflow.operators.approval import PromotionApprovalOperator
from mlops_airflow.operators.trainer import TrainModelOperator
from mlops_airflow.operators.training import (
    BuildFeaturesOperator,
    EvaluateModelOperator,
    IngestOperator,
    PlanTuningOperator,
    PromoteModelOperator,
    QualityGateOperator,
    RegisterModelOperator,
    SkipIfUnchangedOperator,
    ValidateDataOperator,
)
from mlops_airflow.operators.tuning import SelectModelOperator, TuneOperator

with DAG(
    dag_id="training",
    # Daily, or when monitoring raises an alert. Data-interval semantics: the run after day D
    # ends trains on partition date=D; an alert-triggered run trains on the days before the
    # alert's partition (monitoring.retrain_lookback_days), at most once per cooldown window.
    schedule=AssetOrTimeSchedule(
        timetable=CronDataIntervalTimetable("@daily", timezone="UTC"),
        assets=(DRIFT_DETECTED | PERFORMANCE_DEGRADED)),
    start_date=datetime(2025, 1, 1, tz="UTC"),
    catchup=False,
    max_active_runs=1,
    doc_md=__doc__,
    tags=["mlops", "training"],
    default_args=default_args(),
    # The trigger form: only what the deployment's policy lets a run set (docs/security.md).
    params=run_params("training", partition_date="Train on this day (YYYY-MM-DD) instead of "
                                                 "the data interval"),
):
    changed = SkipIfUnchangedOperator(task_id="check_changed")  # same data+code+params: stop here
    ingested = IngestOperator(task_id="ingest")
    validated = ValidateDataOperator(task_id="validate", ingest_result=ingested.output)
    features = BuildFeaturesOperator(task_id="build_features", ingest_result=ingested.output)
    plan = PlanTuningOperator(task_id="plan_tuning")  # which candidates to tune, how wide
    # tuning.parallel_tasks per candidate with a search space, sharing its study (none: skipped)
    tuned = TuneOperator.partial(task_id="tune", features=features.output).expand(
        slot=plan.output)
    trained = TrainModelOperator.partial(  # one per candidate, with its study's best params
        task_id="train", ingest_result=ingested.output, trigger_rule="none_failed",
        **TrainModelOperator.routing(),  # the trainer queue ($MLOPS_TRAINER_QUEUE), if any
    ).expand(features=features.output)
    selected = SelectModelOperator(task_id="select", candidates=trained.output,
                                   features=features.output)  # the best on the same rows
    evaluated = EvaluateModelOperator(task_id="evaluate", model=selected.output,
                                      features=features.output)
    decision = QualityGateOperator(task_id="gate", evaluation=evaluated.output,
                                   on_success_callback=alerts_for("gate_rejected"))
    registered = RegisterModelOperator(task_id="register", model=selected.output,
                                       ingest_result=ingested.output)
    approved = PromotionApprovalOperator(task_id="approve", decision=decision.output,
                                         registration=registered.output)  # if the dataset asks
    promoted = PromoteModelOperator(task_id="promote", registration=registered.output,
                                    decision=decision.output,
                                    on_success_callback=alerts_for("promoted"))

    changed >> ingested >> validated >> features >> tuned >> trained >> selected >> evaluated
    changed >> plan >> tuned
    evaluated >> decision
    decision >> registered >> approved >> promoted
