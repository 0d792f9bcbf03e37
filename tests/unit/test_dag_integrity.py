"""dags/: the DagBag loads, the training DAG's graph, retries, pool, Params, and operators that do
no I/O when they are constructed (which happens on every parse)."""

from __future__ import annotations

import copy
from datetime import timedelta
from pathlib import Path
from typing import Any
from unittest import mock

import pytest
from airflow.dag_processing.dagbag import DagBag
from airflow.sdk import DAG, BaseHook, Variable, XComArg
from airflow.sdk.exceptions import ParamValidationError
from airflow.serialization.serialized_objects import DagSerialization
from pendulum import datetime

from mlops_airflow.hooks.mlflow import MlflowHook
from mlops_airflow.hooks.object_storage import ObjectStorageHook
from mlops_airflow.operators import training as ops
from mlops_airflow.operators.trainer import TrainModelOperator
from mlops_airflow.operators.tuning import SelectModelOperator, TuneOperator

DAGS = Path(__file__).resolve().parents[2] / "dags"
CHAIN = ["check_changed", "ingest", "validate", "build_features", "plan_tuning", "tune", "train",
         "select", "evaluate", "gate", "register", "approve", "promote"]
# plan_tuning needs the config only: it runs beside ingest → validate → build_features
SIDE = {"plan_tuning"}


def load() -> DagBag:
    return DagBag(dag_folder=str(DAGS))


@pytest.fixture(scope="module")
def dagbag() -> DagBag:
    return load()


@pytest.fixture(scope="module")
def training(dagbag: DagBag) -> Any:
    return dagbag.dags["training"]


# -- loading ----------------------------------------------------------------------------------------
def test_dagbag_has_no_import_errors(dagbag: DagBag) -> None:
    assert dagbag.import_errors == {}
    assert "training" in dagbag.dag_ids


def test_every_dag_has_tags(dagbag: DagBag) -> None:
    for dag_id, dag in dagbag.dags.items():
        assert dag.tags, f"{dag_id} has no tags"


def test_tasks_retry_by_default(monkeypatch: pytest.MonkeyPatch) -> None:
    """tests/conftest.py sets MLOPS_TASK_RETRIES=0 for fast integration runs; without it every
    task retries (with backoff) as production expects."""
    monkeypatch.delenv("MLOPS_TASK_RETRIES", raising=False)
    monkeypatch.delenv("MLOPS_RETRY_DELAY_SECONDS", raising=False)
    bag = load()
    assert bag.import_errors == {}
    for dag in bag.dags.values():
        assert dag.default_args.get("retries", 0) >= 1, dag.dag_id
        for task in dag.tasks:
            assert task.retries >= 1, f"{dag.dag_id}.{task.task_id}"
            assert task.retry_delay >= timedelta(seconds=30)
            assert task.retry_exponential_backoff


@pytest.mark.parametrize("retries", ["0", "5"])
def test_retries_env_var_is_honoured(monkeypatch: pytest.MonkeyPatch, retries: str) -> None:
    monkeypatch.setenv("MLOPS_TASK_RETRIES", retries)
    monkeypatch.setenv("MLOPS_RETRY_DELAY_SECONDS", "7")
    dag = load().dags["training"]
    assert {(t.retries, t.retry_delay) for t in dag.tasks} == {(int(retries), timedelta(seconds=7))}


# -- graph ------------------------------------------------------------------------------------------
def test_training_dag_has_exactly_the_pipeline_tasks(training: Any) -> None:
    """The pipeline diagram, in order (tune and train are mapped: one name each)."""
    assert sorted(training.task_ids) == sorted(CHAIN)


def test_training_dag_edges(training: Any) -> None:
    """The chain plus the data edges that XCom inputs add (all pointing forward along it)."""
    expected = {
        "check_changed": {"ingest", "plan_tuning"},
        "ingest": {"validate", "build_features", "train", "register"},
        "validate": {"build_features"},
        "build_features": {"tune", "train", "select", "evaluate"},
        "plan_tuning": {"tune"},
        "tune": {"train"},
        "train": {"select"},
        "select": {"evaluate", "register"},
        "evaluate": {"gate"},
        "gate": {"register", "approve", "promote"},
        "register": {"approve", "promote"},
        "approve": {"promote"},
        "promote": set(),
    }
    assert {t: set(training.get_task(t).downstream_task_ids) for t in CHAIN} == expected


def test_training_dag_reduces_to_the_chain(training: Any) -> None:
    """Every edge points forward and consecutive steps are linked: the only order is the chain
    check_changed → ingest → validate → build_features → train → evaluate → gate → register →
    approve → promote, so a skip at check_changed or gate reaches everything after it."""
    position = {task_id: i for i, task_id in enumerate(CHAIN)}
    for task_id in CHAIN:
        downstream = training.get_task(task_id).downstream_task_ids
        assert all(position[d] > position[task_id] for d in downstream), task_id
    main = [t for t in CHAIN if t not in SIDE]
    for before, after in zip(main, main[1:], strict=False):
        assert after in training.get_task(before).downstream_task_ids
    assert training.get_task("plan_tuning").upstream_task_ids == {"check_changed"}
    assert [t.task_id for t in training.topological_sort()] == CHAIN


def test_tune_and_train_are_mapped_and_train_runs_when_tuning_is_skipped(training: Any) -> None:
    """tune expands over plan_tuning's slots (none: skipped), train over build_features' one
    entry per candidate; train must still run when tune was skipped."""
    from airflow.sdk.definitions.mappedoperator import MappedOperator

    tune, train = training.get_task("tune"), training.get_task("train")
    assert isinstance(tune, MappedOperator) and isinstance(train, MappedOperator)
    assert tune.expand_input.value["slot"].operator.task_id == "plan_tuning"
    assert train.expand_input.value["features"].operator.task_id == "build_features"
    assert train.partial_kwargs["trigger_rule"] == "none_failed"
    assert training.get_task("select").trigger_rule == "all_success"


@pytest.mark.parametrize(
    ("task_id", "field", "upstream"),
    [
        pytest.param("validate", "ingest_result", "ingest", id="validate"),
        pytest.param("build_features", "ingest_result", "ingest", id="build_features"),
        pytest.param("select", "candidates", "train", id="select-candidates"),
        pytest.param("select", "features", "build_features", id="select-features"),
        pytest.param("evaluate", "model", "select", id="evaluate-model"),
        pytest.param("evaluate", "features", "build_features", id="evaluate-features"),
        pytest.param("gate", "evaluation", "evaluate", id="gate"),
        pytest.param("register", "model", "select", id="register-model"),
        pytest.param("register", "ingest_result", "ingest", id="register-ingest"),
        pytest.param("promote", "registration", "register", id="promote-registration"),
        pytest.param("promote", "decision", "gate", id="promote-decision"),
    ],
)
def test_inputs_are_xcoms_of_the_right_task(training: Any, task_id: str, field: str,
                                            upstream: str) -> None:
    value = getattr(training.get_task(task_id), field)
    assert isinstance(value, XComArg)
    assert value.operator.task_id == upstream
    assert field in training.get_task(task_id).template_fields  # resolved at run time


def test_only_promote_uses_the_promotion_pool(training: Any) -> None:
    assert training.get_task("promote").pool == "mlops_promotion"
    assert {t.pool for t in training.tasks if t.task_id != "promote"} == {"default_pool"}


# -- Params -----------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def serialized(training: Any) -> Any:
    """The DAG as the API server and scheduler see it; they validate a run's conf against it."""
    return DagSerialization.from_dict(DagSerialization.to_dict(training))


def test_schedule_reads_complete_daily_intervals_one_run_at_a_time(training: Any,
                                                                  serialized: Any) -> None:
    assert training.catchup is False
    assert training.max_active_runs == 1
    assert training.doc_md
    # A run after day D has ended (scheduled or manual) reads the interval [D, D+1).
    interval = serialized.timetable.infer_manual_data_interval(run_after=datetime(2025, 1, 2, 10))
    assert (interval.start, interval.end) == (datetime(2025, 1, 1), datetime(2025, 1, 2))


def test_default_params_are_what_the_default_policy_allows(serialized: Any) -> None:
    """The trigger form shows only what a run may set: the dataset, the day(s), force and the
    hyperparameters; never the image, limits, artifact location or the gate."""
    params = serialized.params.deep_merge({}).validate()
    assert params == {"dataset": "churn_demo", "partition_date": None, "force": False,
                      "lookback_days": None, "training": {}}
    training = serialized.params.get_param("training").schema
    assert set(training["properties"]) == {"hyperparameters"}
    assert training["additionalProperties"] is False


def test_valid_conf_is_accepted(serialized: Any) -> None:
    conf = {"dataset": "churn_demo", "lookback_days": 3, "partition_date": "2025-01-02",
            "training": {"hyperparameters": {"max_iter": 50}}, "force": True}
    assert serialized.params.deep_merge(conf).validate()["lookback_days"] == 3


@pytest.mark.parametrize(
    ("conf", "message"),
    [
        pytest.param({"lookback_days": 0}, "0 is less than the minimum of 1", id="lookback-zero"),
        pytest.param({"lookback_days": "3"}, "is not of type", id="lookback-string"),
        pytest.param({"dataset": "../etc/passwd"}, "does not match", id="dataset-traversal"),
        pytest.param({"partition_date": "2025-13-45"}, "is not a 'date'", id="bad-date"),
        pytest.param({"training": "random_forest"}, "is not of type 'object'", id="training-string"),
        pytest.param({"training": {"seed": 7}}, "Additional properties are not allowed",
                     id="training-field-not-allowed"),
        pytest.param({"training": {"hyperparameters": "deep"}}, "is not of type 'object'",
                     id="hyperparameters-string"),
        pytest.param({"force": "yes"}, "is not of type 'boolean'", id="force-string"),
    ],
)
def test_bad_param_value_is_rejected(serialized: Any, training: Any, conf: dict[str, Any],
                                     message: str) -> None:
    with pytest.raises(ParamValidationError, match=message):
        serialized.params.deep_merge(conf).validate()
    # the DAG object itself refuses the value too
    key, value = next(iter(conf.items()))
    params = copy.deepcopy(training.params)
    with pytest.raises(ParamValidationError, match=message):
        params[key] = value


def test_a_wider_policy_widens_the_form(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Params follow the deployment's policy file: what it allows appears, typed from the config
    model; what it can never allow (container, artifacts_uri) never does."""
    policy = tmp_path / "policy.yaml"
    policy.write_text("run_overrides: [partition_date, trainer, gate, rollout.mode, "
                      "training.seed]\n")
    monkeypatch.setenv("MLOPS_POLICY_FILE", str(policy))
    dag = DagSerialization.from_dict(DagSerialization.to_dict(load().dags["training"]))
    assert set(dag.params.deep_merge({}).validate()) == {
        "dataset", "partition_date", "trainer", "gate", "rollout", "training"}
    schema = {key: dag.params.get_param(key).schema for key in ("gate", "rollout", "training")}
    assert set(schema["gate"]["properties"]) == {
        "thresholds", "champion_metric", "champion_margin", "require_significance",
        "significance_confidence", "significance_test", "bootstrap_resamples"}
    assert schema["gate"]["properties"]["significance_test"]["enum"] == [
        "auto", "bootstrap", "mcnemar", "delong"]
    assert schema["rollout"]["properties"]["mode"]["enum"] == ["direct", "shadow", "canary"]
    assert schema["training"]["properties"] == {"seed": {
        "type": "integer", "description": "Random seed of the split and the estimator"}}
    for conf, message in (({"trainer": "gpu"}, "'gpu' is not one of"),
                          ({"gate": {"thresholds": ["roc_auc is good"]}}, "does not match"),
                          ({"gate": {"champion_margin": -1}}, "less than the minimum of 0"),
                          ({"gate": {"significance_confidence": 0.4}}, "minimum of 0.5"),
                          ({"rollout": {"canary_share": 0.2}}, "Additional properties")):
        with pytest.raises(ParamValidationError, match=message):
            dag.params.deep_merge(conf).validate()


# -- operators --------------------------------------------------------------------------------------
OPERATORS = [
    pytest.param(ops.IngestOperator, {}, ("artifacts_uri",), id="IngestOperator"),
    pytest.param(ops.SkipIfUnchangedOperator, {}, ("artifacts_uri",),
                 id="SkipIfUnchangedOperator"),
    pytest.param(ops.ValidateDataOperator, {"ingest_result": {}},
                 ("artifacts_uri", "ingest_result"), id="ValidateDataOperator"),
    pytest.param(ops.BuildFeaturesOperator, {"ingest_result": {}},
                 ("artifacts_uri", "ingest_result"), id="BuildFeaturesOperator"),
    pytest.param(TrainModelOperator, {"features": {}, "ingest_result": {}},
                 ("artifacts_uri", "features", "ingest_result", "trainer", "candidate"),
                 id="TrainModelOperator"),
    pytest.param(ops.EvaluateModelOperator, {"model": {}, "features": {}},
                 ("artifacts_uri", "model", "features"), id="EvaluateModelOperator"),
    pytest.param(ops.QualityGateOperator, {"evaluation": {}}, ("artifacts_uri", "evaluation"),
                 id="QualityGateOperator"),
    pytest.param(ops.RegisterModelOperator, {"model": {}, "ingest_result": {}},
                 ("artifacts_uri", "model", "ingest_result"), id="RegisterModelOperator"),
    pytest.param(ops.PromoteModelOperator, {"registration": {}, "decision": {}},
                 ("artifacts_uri", "registration", "decision", "alias"), id="PromoteModelOperator"),
    pytest.param(ops.PlanTuningOperator, {}, ("artifacts_uri",), id="PlanTuningOperator"),
    pytest.param(TuneOperator, {"slot": {}, "features": {}}, ("artifacts_uri", "slot", "features"),
                 id="TuneOperator"),
    pytest.param(SelectModelOperator, {"candidates": [], "features": {}},
                 ("artifacts_uri", "candidates", "features"), id="SelectModelOperator"),
]


@pytest.fixture
def lookups() -> Any:
    """Connection and Variable lookups, made to fail loudly and counted."""
    with mock.patch.object(BaseHook, "get_connection",
                           mock.Mock(side_effect=RuntimeError("connection lookup"))) as conn, \
            mock.patch.object(Variable, "get", mock.Mock(side_effect=RuntimeError("variable"))) as var:
        yield conn, var


@pytest.mark.parametrize(("cls", "inputs", "fields"), OPERATORS)
def test_operator_construction_does_no_lookup(lookups: Any, cls: type, inputs: dict[str, Any],
                                              fields: tuple[str, ...]) -> None:
    get_connection, get_variable = lookups
    with DAG("probe", schedule=None, start_date=datetime(2025, 1, 1)):
        operator = cls(task_id="probe_task", mlflow_conn_id="no_such_mlflow",
                       s3_conn_id="no_such_s3", **inputs)
        hooks = (operator.mlflow_hook, operator.s3_hook)  # building hooks stores ids only

    get_connection.assert_not_called()
    get_variable.assert_not_called()
    assert hooks[0].mlflow_conn_id == "no_such_mlflow" and hooks[1].s3_conn_id == "no_such_s3"

    # The lookups happen on first use, inside execute(): the patch would have seen them.
    with pytest.raises(RuntimeError, match="connection lookup"):
        _ = operator.s3_hook.store
    get_connection.assert_called_once_with("no_such_s3")
    with pytest.raises(RuntimeError, match="connection lookup"):
        _ = operator.mlflow_hook.tracking_uri
    get_connection.assert_called_with("no_such_mlflow")


@pytest.mark.parametrize(("cls", "inputs", "fields"), OPERATORS)
def test_templated_arguments_render_and_connection_ids_do_not(cls: type, inputs: dict[str, Any],
                                                              fields: tuple[str, ...]) -> None:
    """What Airflow renders before execute(): each argument that takes an upstream XCom or a
    run's Param (a Jinja template) comes out rendered; the connection ids do not, so a run's
    Params cannot point a task at other credentials."""
    with DAG("probe", schedule=None, start_date=datetime(2025, 1, 1)):
        operator = cls(task_id="probe_task", **{
            **inputs, **{field: f"{{{{ params.value }}}}/{field}" for field in fields}},
            mlflow_conn_id="{{ params.value }}", s3_conn_id="{{ params.value }}")
    assert operator.artifacts_uri == "{{ params.value }}/artifacts_uri"  # nothing resolved yet

    operator.render_template_fields({"params": {"value": "rendered"}})

    assert {field: getattr(operator, field) for field in fields} == \
        {field: f"rendered/{field}" for field in fields}
    assert operator.mlflow_conn_id == operator.s3_conn_id == "{{ params.value }}"


def test_operator_defaults_resolve_at_run_time() -> None:
    operator = ops.IngestOperator(task_id="probe_task")
    assert operator.artifacts_uri is None  # the policy's, resolved in execute()
    assert operator.mlflow_conn_id == MlflowHook.default_conn_name == "mlflow_default"
    assert operator.s3_conn_id == ObjectStorageHook.default_conn_name == "mlops_s3"


def test_promote_operator_defaults() -> None:
    operator = ops.PromoteModelOperator(task_id="promote", registration={}, decision={})
    assert operator.pool == ops.PROMOTION_POOL == "mlops_promotion"
    assert operator.alias is None  # champion, or challenger under a shadow/canary rollout


def test_the_mapped_train_task_goes_to_the_trainer_queue(monkeypatch: pytest.MonkeyPatch) -> None:
    """The scheduler routes a mapped task by its partial arguments (no operator instance exists
    yet): the production stack's MLOPS_TRAINER_QUEUE must reach them."""
    from airflow.configuration import conf

    monkeypatch.setenv("MLOPS_TRAINER_QUEUE", "gpu")
    train = load().dags["training"].get_task("train")
    assert train.queue == "gpu"
    assert {t.queue for t in load().dags["training"].tasks if t.task_id != "train"} == {
        conf.get("operators", "default_queue")}
    monkeypatch.delenv("MLOPS_TRAINER_QUEUE")
    assert load().dags["training"].get_task("train").queue == conf.get("operators", "default_queue")
