"""plugins/mlops_airflow/operators/trainer.py: how a finished trainer container is classified (the
container's state and result file in, a TrainerError of one class out), with no engine. The same
classes on a real engine: tests/integration/test_docker_trainer.py."""

from __future__ import annotations

from typing import Any

import pytest

from include.mlops_core.config import ContainerConfig
from include.mlops_core.errors import TrainerError
from mlops_airflow.operators.trainer import TrainModelOperator

CONFIG = ContainerConfig(memory_limit="512m", timeout_minutes=5)


def classify(state: dict[str, Any], result: dict[str, Any], stopped_for: str | None = None
             ) -> TrainerError | None:
    operator = TrainModelOperator(task_id="train", features={}, ingest_result={})
    try:
        operator.raise_for_failure(CONFIG, result, state, timed_out=stopped_for == "timeout",
                                   killed=stopped_for == "kill")
    except TrainerError as err:
        return err
    return None


OK = {"status": "ok", "model_uri": "models:/m-1"}


@pytest.mark.parametrize(("state", "result", "stopped_for", "error_class", "text", "retried"), [
    ({"ExitCode": 137, "OOMKilled": True}, {}, None, "oom",
     "container.memory_limit=512m (exit 137, OOMKilled=True)", False),
    ({"ExitCode": 137, "OOMKilled": False}, {}, None, "oom", "exit 137", False),
    ({"ExitCode": 143, "OOMKilled": False}, {}, "timeout", "timeout",
     "container.timeout_minutes=5 and was stopped (exit 143)", False),
    ({"ExitCode": 2}, {"status": "error", "error_class": "data",
                       "error": "SchemaError: column x"}, None, "data",
     "the trainer failed (exit 2): SchemaError: column x; fix what it names", False),
    ({"ExitCode": 3}, {"status": "error", "error_class": "cuda",
                       "error": "XGBoostError: CUDA error: out of memory"}, None, "cuda",
     "check the GPU with nvidia-smi", True),
    ({"ExitCode": 1}, {"status": "error", "error_class": "oom", "error": "MemoryError: "}, None,
     "oom", "the trainer failed (exit 1): MemoryError: ; raise container.memory_limit (now 512m)",
     False),
    ({"ExitCode": 1}, {"status": "error", "error_class": "error",
                       "error": "ServiceUnavailableError: S3 endpoint did not answer"}, None,
     "error", "the trainer failed (exit 1): ServiceUnavailableError: S3", True),
    ({"ExitCode": 1, "Error": ""}, {}, None, "error", "exited 1 without a result file", True),
    ({"ExitCode": 0}, {}, None, "error", "exited 0 without a result file", True),
])
def test_failed_containers_are_classified(state: dict[str, Any], result: dict[str, Any],
                                          stopped_for: str | None, error_class: str, text: str,
                                          retried: bool) -> None:
    err = classify(state, result, stopped_for)
    assert err is not None and err.error_class == error_class
    assert text in str(err)
    assert str(err).endswith(f"(runbook: docs/runbooks/trainer-container.md#"
                             f"{error_class.replace('_', '-')})")
    assert str(err).count("(runbook:") == 1
    assert err.retryable is retried


def test_a_data_error_keeps_its_own_runbook_page() -> None:
    err = classify({"ExitCode": 2}, {"status": "error", "error_class": "data",
                                     "error": "SchemaError: column x is missing",
                                     "runbook": "schema-mismatch.md"})
    assert err is not None and err.error_class == "data" and not err.retryable
    assert str(err).endswith("a retry meets the same (runbook: docs/runbooks/schema-mismatch.md)")
    assert str(err).count("(runbook:") == 1


def test_a_clean_exit_with_a_result_is_not_a_failure() -> None:
    assert classify({"ExitCode": 0, "OOMKilled": False}, OK) is None


def test_a_container_killed_with_the_task_is_not_called_oom() -> None:
    err = classify({"ExitCode": 137, "OOMKilled": False}, {}, stopped_for="kill")
    assert err is not None and err.error_class == "error"


def test_unknown_trainer_is_a_config_error() -> None:
    from include.mlops_core.errors import ConfigError

    operator = TrainModelOperator(task_id="train", features={}, ingest_result={}, trainer="gpu")
    with pytest.raises(ConfigError, match="trainer 'gpu' is not one of inprocess, docker"):
        operator.run(None, {"params": {}})  # type: ignore[arg-type]


def test_training_goes_to_the_deployments_trainer_queue(monkeypatch: pytest.MonkeyPatch) -> None:
    """The production stack parses the DAG with MLOPS_TRAINER_QUEUE=gpu: the train task goes to
    the workers that reach a Docker engine; without it, to Airflow's default queue; a queue
    given in the DAG file wins."""
    from airflow.configuration import conf

    monkeypatch.delenv("MLOPS_TRAINER_QUEUE", raising=False)
    default = TrainModelOperator(task_id="train", features={}, ingest_result={})
    assert default.queue == conf.get("operators", "default_queue")
    monkeypatch.setenv("MLOPS_TRAINER_QUEUE", "gpu")
    assert TrainModelOperator(task_id="train", features={}, ingest_result={}).queue == "gpu"
    assert TrainModelOperator(task_id="train", features={}, ingest_result={},
                              queue="big").queue == "big"
