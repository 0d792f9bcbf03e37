"""The docker trainer on a real Docker engine: the training DAG with ``trainer=docker`` against real
MLflow and S3, and the train task alone for each failure class (exit code, OOM, missing image,
engine down, no GPU, timeout). The engine is started by ./deploy.sh test (tests/conftest.py checks
it); the trainer image is built offline by scripts/build_images.py (a no-op when it is current).

No GPU exists on these machines: the GPU *request* is checked on the real engine (the exact
DeviceRequests the container is created with), with only the GPU probe's answer stubbed, and says so.
"""

from __future__ import annotations

import json
import time
from datetime import date
from typing import Any

import pytest
from pendulum import datetime as pdatetime

from include.mlops_core.demo_data import write_partitions
from tests.integration.conftest import docker_client

FAST = {"family": "hist_gradient_boosting", "seed": 7, "hyperparameters": {"max_iter": 30}}
# The GPU-capable family (on CPU here: no GPU on these machines).
XGB = {"family": "xgboost", "seed": 7, "hyperparameters": {"n_estimators": 60, "max_depth": 4}}
# Metrics of the two trainers must agree to this (same code, same pinned libraries, both on CPU);
# docs/gpu-training.md documents it.
TOLERANCE = 1e-6


@pytest.fixture(scope="module")
def prepared(services: Any, airflow_db: None) -> dict[str, Any]:
    """Ingested + split churn rows in S3: what the train task gets from its upstream tasks."""
    from include.mlops_core.config import load_dataset_config
    from include.mlops_core.pipeline import RunContext, build_features, ingest

    store, client = services.store(), services.mlflow_client()
    source = "s3://mlops-data/it_docker_train"
    write_partitions(store, source, date(2025, 1, 1), 1, rows=1200)
    config = load_dataset_config("churn_demo", {"source_uri": source, "model_name": "it_docker"})
    experiment = client.get_experiment_by_name("it_docker_prep")
    experiment_id = experiment.experiment_id if experiment else \
        client.create_experiment("it_docker_prep")
    run_ctx = RunContext(config=config, store=store, client=client,
                  mlflow_run_id=client.create_run(experiment_id).info.run_id,
                  artifacts_uri="s3://mlops/it_docker_prep", run_key="2025-01-02T000000")
    ingested = ingest(run_ctx, [date(2025, 1, 1)])
    return {"source": source, "ingest_result": ingested, "workdir": services.workdir,
            "features": build_features(run_ctx, ingested["snapshot_uri"])}


def train_dag(prepared: dict[str, Any], dag_id: str, **operator_args: Any) -> Any:
    """A one-task DAG: the training DAG's train task on the prepared rows."""
    from airflow.sdk import DAG

    from mlops_airflow.dag_defaults import run_params
    from mlops_airflow.operators.trainer import TrainModelOperator

    with DAG(dag_id, schedule=None, start_date=pdatetime(2025, 1, 1), catchup=False,
             default_args={"retries": 0}, params=run_params("training")) as dag:
        TrainModelOperator(task_id="train", features=prepared["features"],
                           ingest_result=prepared["ingest_result"], **operator_args)
    # dag.test() runs DAGs of a bundle: write this one to the metadata DB as the dags folder's.
    from airflow.dag_processing.bundles.manager import DagBundlesManager
    from airflow.dag_processing.dagbag import DagBag, sync_bag_to_db

    DagBundlesManager().sync_bundles_to_db()
    bag = DagBag(dag_folder=str(services_dir(prepared)))
    bag.bag_dag(dag)
    sync_bag_to_db(bag, "dags-folder", None)
    return dag


def services_dir(prepared: dict[str, Any]) -> Any:
    empty = prepared["workdir"] / "no-dags"
    empty.mkdir(exist_ok=True)
    return empty


def run_train(run_any_dag: Any, deployment: Any, prepared: dict[str, Any], dag_id: str,
              container: dict[str, Any], training: dict[str, Any] | None = None,
              **operator_args: Any) -> Any:
    """The train task alone, with the container settings in the dataset config (no run can set
    them)."""
    dag = train_dag(prepared, dag_id, **operator_args)
    dataset = deployment.write_dataset(dag_id, container=container)
    return run_any_dag(dag, "2025-01-02", dataset=dataset, model_name="it_docker",
                       source_uri=prepared["source"], training=training or FAST, trainer="docker")


def trainer_containers(client: Any, dag_id: str) -> list[dict[str, Any]]:
    return client.containers(all=True, filters={"label": f"mlops.dag_id={dag_id}"})


# -- the training DAG, both trainers --------------------------------------------------------------
def test_docker_trainer_matches_in_process_and_logs_to_the_dag_runs_mlflow_run(
        services: Any, run_dag: Any, trainer_image: str, deployment: Any) -> None:
    store, client = services.store(), services.mlflow_client()
    source = "s3://mlops-data/it_docker_dag"
    write_partitions(store, source, date(2025, 1, 1), 1, rows=1500)
    dataset = deployment.write_dataset("it_docker_dag", container={"memory_limit": "2g",
                                                                   "cpus": 2})
    runs = {}
    for trainer in ("inprocess", "docker"):
        result = run_dag("2025-01-02", dataset=dataset, model_name=f"it_docker_{trainer}",
                         source_uri=source, training=XGB, gate={"thresholds": []},
                         trainer=trainer)
        assert result.state == "success", result.error_lines()
        runs[trainer] = (result, client.search_runs(
            [client.get_experiment_by_name(f"it_docker_{trainer}").experiment_id],
            filter_string=f"tags.`airflow.run_id` = '{result.run_id}'"))
    docker_result, (docker_run,) = runs["docker"]
    _, (inprocess_run,) = runs["inprocess"]

    # One MLflow run per DAG run: the container logged the model into it.
    tags = docker_run.data.tags
    assert tags["mlops.trainer"] == "docker" and tags["mlops.trainer.device"] == "cpu"
    assert tags["mlops.trainer.image"] == trainer_image
    assert tags["mlops.model_uri"].startswith("models:/") and tags["mlops.outcome"] == "promoted"
    assert inprocess_run.data.tags["mlops.trainer"] == "inprocess"
    # The same seed and data give the same held-out metrics on both paths.
    for metric in ("accuracy", "f1", "roc_auc", "log_loss"):
        assert abs(docker_run.data.metrics[metric] - inprocess_run.data.metrics[metric]) \
            <= TOLERANCE, metric
    metrics = docker_run.data.metrics
    assert metrics["trainer.wall_seconds"] > 0 and metrics["trainer.cpu_seconds"] > 0
    assert 50 < metrics["trainer.peak_rss_mb"] < 2048
    assert metrics["trainer.container_peak_mb"] >= metrics["trainer.peak_rss_mb"] * 0.5
    # The container's own log is in the task log, line by line, and no secret is.
    log = docker_result.log
    assert "include.mlops_core.trainer: Training it_docker_docker (xgboost) on cpu" in log
    assert "Trainer result:" in log and "Trainer container mlops-training-train-" in log
    assert "Credentials from the secrets file (deleted): AWS_ACCESS_KEY_ID" in log
    assert services.secret_key not in log
    # Nothing is left behind on the engine.
    assert trainer_containers(docker_client(), "training") == []


# -- the train task alone: each failure class -----------------------------------------------------
def test_data_error_in_the_container_fails_with_its_own_message(
        prepared: dict[str, Any], run_any_dag: Any, trainer_image: str, deployment: Any) -> None:
    bad = {**FAST, "hyperparameters": {"max_iter": -3}}  # sklearn refuses it at fit time
    result = run_train(run_any_dag, deployment, prepared, "it_docker_data_error", {},
                       training=bad)
    assert result.state == "failed" and result.tasks["train"] == "failed"
    # The container's own traceback reached the task log ...
    assert "InvalidParameterError: The 'max_iter' parameter of HistGradientBoostingClassifier" \
        in result.log
    # ... and the last error names the class, the exit code and the runbook.
    final = result.final_error()
    assert "the trainer failed (exit 2)" in final and "max_iter" in final
    assert "runbook: docs/runbooks/trainer-container.md#data" in final
    assert trainer_containers(docker_client(), "it_docker_data_error") == []


def test_oom_kill_under_a_small_memory_limit_is_named(
        prepared: dict[str, Any], run_any_dag: Any, trainer_image: str, deployment: Any) -> None:
    result = run_train(run_any_dag, deployment, prepared, "it_docker_oom",
                       {"memory_limit": "96m"})
    assert result.tasks["train"] == "failed"
    final = result.final_error()
    assert "killed by the kernel at its memory limit container.memory_limit=96m (exit 137, " \
           "OOMKilled=True)" in final, final
    assert "trainer-container.md#oom" in final


def test_missing_image_fails_before_any_container_starts(
        prepared: dict[str, Any], run_any_dag: Any, trainer_image: str, deployment: Any,
        monkeypatch: pytest.MonkeyPatch) -> None:
    missing = "sha256:" + "0" * 64
    monkeypatch.setenv("MLOPS_TRAINER_IMAGE", missing)
    result = run_train(run_any_dag, deployment, prepared, "it_docker_no_image", {})
    assert result.tasks["train"] == "failed"
    final = result.final_error()
    assert f"trainer image {missing!r} is not on the Docker engine" in final
    assert "is not pulled (only an image pinned by registry digest" in final
    assert "scripts/build_images.py" in final and "trainer-container.md#image" in final
    assert trainer_containers(docker_client(), "it_docker_no_image") == []


@pytest.mark.parametrize(("image", "digests"), [
    pytest.param("tag", [], id="a-tag"),
    pytest.param("id", ["sha256:" + "1" * 64], id="not-on-the-allow-list"),
])
def test_only_the_pinned_image_runs(
        prepared: dict[str, Any], run_any_dag: Any, trainer_image: str, deployment: Any,
        monkeypatch: pytest.MonkeyPatch, image: str, digests: list[str]) -> None:
    """A tag can be moved to another image, so it runs only when its image's digest is on the
    policy's allow-list; an image id not on the allow-list does not run either."""
    from tests.integration.conftest import TEST_POLICY

    monkeypatch.setenv("MLOPS_TRAINER_IMAGE", "mlops-trainer:latest" if image == "tag"
                       else trainer_image)
    deployment.set_policy({**TEST_POLICY, "trainer_image_digests": digests})
    try:
        result = run_train(run_any_dag, deployment, prepared, f"it_docker_pin_{image}", {})
    finally:
        deployment.set_policy(TEST_POLICY)
    assert result.tasks["train"] == "failed"
    final = result.final_error()
    assert "is not one the deployment pinned" in final, final
    assert "refused-by-policy.md#a-trainer-image-that-is-not-pinned" in final
    assert "Its log follows" not in result.log
    assert trainer_containers(docker_client(), f"it_docker_pin_{image}") == []


def test_engine_down_is_a_clear_retryable_error(
        prepared: dict[str, Any], run_any_dag: Any, trainer_image: str, deployment: Any) -> None:
    result = run_train(run_any_dag, deployment, prepared, "it_docker_engine_down", {},
                       docker_url="unix:///tmp/no-docker-engine-here.sock")
    assert result.tasks["train"] == "failed"
    final = result.final_error()
    assert "Docker engine at unix:///tmp/no-docker-engine-here.sock is not reachable" in final
    assert "Start it (systemctl start docker, or dockerd)" in final
    assert "trainer-container.md#engine" in final


def test_no_gpu_falls_back_to_cpu_loudly(
        services: Any, prepared: dict[str, Any], run_any_dag: Any, trainer_image: str,
        deployment: Any) -> None:
    result = run_train(run_any_dag, deployment, prepared, "it_docker_gpu_fallback",
                       {"gpus": "all", "gpu_fallback": "cpu"})
    assert result.state == "success", result.error_lines()
    assert "NO GPU: container.gpus=all but no GPU is visible" in result.log
    assert "could not select device driver" in result.log  # the engine's own words
    assert "Training ON CPU because container.gpu_fallback is 'cpu'" in result.log
    assert "include.mlops_core.trainer: Training it_docker (hist_gradient_boosting) on cpu" in result.log
    client = services.mlflow_client()
    (run,) = client.search_runs([client.get_experiment_by_name("it_docker").experiment_id],
                                filter_string=f"tags.`airflow.run_id` = '{result.run_id}'")
    assert run.data.tags["mlops.trainer.device"] == "cpu"
    assert "could not select device driver" in run.data.tags["mlops.trainer.gpu_fallback"]


def test_no_gpu_without_fallback_fails_clearly(
        prepared: dict[str, Any], run_any_dag: Any, trainer_image: str, deployment: Any) -> None:
    result = run_train(run_any_dag, deployment, prepared, "it_docker_gpu_required",
                       {"gpus": 1, "gpu_fallback": "fail"})
    assert result.tasks["train"] == "failed"
    final = result.final_error()
    assert "container.gpus=1 but no GPU is visible to a container" in final
    assert "NVIDIA container toolkit" in final and "trainer-container.md#no-gpu" in final
    assert "Its log follows" not in result.log  # failed before the trainer started


def test_timeout_stops_the_container(
        prepared: dict[str, Any], run_any_dag: Any, trainer_image: str, deployment: Any) -> None:
    started = time.monotonic()
    result = run_train(run_any_dag, deployment, prepared, "it_docker_timeout",
                       {"timeout_minutes": 0.03})  # 1.8 s
    assert result.tasks["train"] == "failed"
    final = result.final_error()
    assert "ran longer than container.timeout_minutes=0.03 and was stopped" in final
    assert "trainer-container.md#timeout" in final
    assert time.monotonic() - started < 60
    assert trainer_containers(docker_client(), "it_docker_timeout") == []


def test_gpu_request_and_limits_reach_the_engine_exactly(
        services: Any, prepared: dict[str, Any], run_any_dag: Any, trainer_image: str,
        deployment: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    """STUBBED GPU: no GPU exists here, so the probe's answer is replaced by a fake H100; the
    container is really created, and its configuration is read back from the engine before
    start: limits and GPU request exact, no credential in it (they travel as a file)."""
    from docker import APIClient
    from mlops_airflow.hooks.docker_engine import TrainerEngineHook

    monkeypatch.setattr(TrainerEngineHook, "probe_gpus",
                        lambda self, image, requests: (True, "0, NVIDIA H100 80GB HBM3, 81559 MiB"))
    seen: dict[str, Any] = {}
    real_start = APIClient.start

    def start(self: APIClient, container: Any, *args: Any, **kwargs: Any) -> Any:
        found = self.inspect_container(container)
        if found["Config"]["Labels"].get("mlops.dag_id") == "it_docker_gpu_request":
            seen.update(host=found["HostConfig"], env=found["Config"]["Env"],
                        inspect=json.dumps(found), image=found["Image"])
        return real_start(self, container, *args, **kwargs)

    monkeypatch.setattr(APIClient, "start", start)
    result = run_train(run_any_dag, deployment, prepared, "it_docker_gpu_request",
                       {"gpus": "all", "memory_limit": "1g", "cpus": 1.5})
    assert seen, "the trainer container was never started"
    # What `docker run --gpus all` sends (the CLI writes DeviceIDs null, docker-py []: any GPU).
    assert seen["host"]["DeviceRequests"] == [{"Driver": "", "Count": -1, "DeviceIDs": [],
                                               "Capabilities": [["gpu"]], "Options": {}}]
    assert seen["host"]["NanoCpus"] == 1_500_000_000
    assert seen["host"]["Memory"] == seen["host"]["MemorySwap"] == 2**30
    assert "MLOPS_TRAINER_DEVICE=cuda" in seen["env"]
    assert seen["image"] == trainer_image  # the pinned id, not a tag
    names = {entry.split("=", 1)[0] for entry in seen["env"]}
    assert not names & {"AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "MLFLOW_TRACKING_PASSWORD"}
    assert services.secret_key not in seen["inspect"]
    assert services.access_key not in seen["inspect"]
    # This engine has no NVIDIA driver, so the start itself is refused: named, not a stack dump.
    final = result.final_error()
    assert "could not select device driver" in final and "trainer-container.md#no-gpu" in final


def test_on_kill_stops_and_removes_the_container(trainer_image: str) -> None:
    from mlops_airflow.operators.trainer import TrainModelOperator

    client = docker_client()
    container = client.create_container(trainer_image, entrypoint=["sleep", "300"],
                                        labels={"mlops.dag_id": "it_docker_kill"})
    client.start(container["Id"])
    operator = TrainModelOperator(task_id="train", features={}, ingest_result={})
    operator.container_id, operator.container_name = container["Id"], "it_docker_kill"
    started = time.monotonic()
    operator.on_kill()
    assert time.monotonic() - started < 15
    assert trainer_containers(client, "it_docker_kill") == []
