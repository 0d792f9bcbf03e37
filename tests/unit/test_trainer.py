"""The trainer entrypoint (include/mlops_core/trainer.py) in-process, against a real local MLflow
store (SQLite) and local files: the same code the trainer container runs."""

from __future__ import annotations

import json
from datetime import date
from pathlib import Path

import pytest

from include.mlops_core import trainer
from include.mlops_core.errors import CorruptFileError, PipelineError, ServiceUnavailableError


@pytest.mark.parametrize(("err", "expected"), [
    (CorruptFileError("bad file"), ("data", trainer.EXIT_DATA)),
    (ValueError("bad hyperparameter"), ("data", trainer.EXIT_DATA)),
    (RuntimeError("CUDA error: no CUDA-capable device is detected"), ("cuda", trainer.EXIT_CUDA)),
    (OSError("NVML: Driver/library version mismatch"), ("cuda", trainer.EXIT_CUDA)),
    (MemoryError(), ("oom", trainer.EXIT_OTHER)),
    (KeyError("x"), ("error", trainer.EXIT_OTHER)),
    (PipelineError("S3 refused"), ("data", trainer.EXIT_DATA)),
    # an S3 or MLflow outage is retried by Airflow, as in-process
    (ServiceUnavailableError("S3 endpoint did not answer"), ("error", trainer.EXIT_OTHER)),
    # XGBoost's errors are ValueErrors: CUDA is checked first
    (ValueError("[12:00:00] XGBoostError: CUDA error: out of memory"), ("cuda", trainer.EXIT_CUDA)),
])
def test_failures_are_classified(err: BaseException, expected: tuple[str, int]) -> None:
    assert trainer.classify(err) == expected


def test_missing_config_writes_an_error_result_and_exits_2(tmp_path: Path) -> None:
    code = trainer.main(["--work-dir", str(tmp_path)])
    result = json.loads((tmp_path / "result.json").read_text())
    assert code == 2 and result["status"] == "error" and result["error_class"] == "data"
    assert f"cannot read the trainer config {tmp_path / 'config.json'}" in result["error"]
    assert result["resources"]["peak_rss_mb"] > 0 and result["timings"]["wall_seconds"] >= 0


def test_trains_from_a_work_dir_like_the_in_process_path(tmp_path: Path,
                                                         monkeypatch: pytest.MonkeyPatch) -> None:
    from mlflow import MlflowClient

    from include.mlops_core.demo_data import write_partitions
    from include.mlops_core.pipeline import RunContext, build_features, ingest
    from include.mlops_core.storage import ObjectStore
    from tests.unit.helpers import churn_config

    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path / 'mlflow.db'}")
    monkeypatch.chdir(tmp_path)  # MLflow's default artifact root (./mlruns) for logged models
    store, source = ObjectStore(), str(tmp_path / "source")
    write_partitions(store, source, date(2025, 1, 1), 1, rows=400)
    config = churn_config(source_uri=source, min_rows=50,
                          training={"hyperparameters": {"max_iter": 20}})
    client = MlflowClient()
    experiment = client.create_experiment("trainer", artifact_location=str(tmp_path / "artifacts"))
    run_id = client.create_run(experiment).info.run_id
    run_ctx = RunContext(config=config, store=store, client=client, mlflow_run_id=run_id,
                  artifacts_uri=str(tmp_path / "out"), run_key="2025-01-02T000000")
    ingested = ingest(run_ctx, [date(2025, 1, 1)])
    features = build_features(run_ctx, ingested["snapshot_uri"])
    work = tmp_path / "work"
    work.mkdir()
    (work / "config.json").write_text(json.dumps({
        "dataset_config": json.loads(config.model_dump_json()), "train_uri": features["train_uri"],
        "manifest_uri": ingested["manifest_uri"], "mlflow_run_id": run_id,
        "artifacts_uri": run_ctx.artifacts_uri, "run_key": run_ctx.run_key}))

    assert trainer.main(["--work-dir", str(work)]) == 0
    result = json.loads((work / "result.json").read_text())
    assert result["status"] == "ok" and result["model_uri"].startswith("models:/")
    tags = client.get_run(run_id).data.tags
    assert tags["mlops.model_uri"] == result["model_uri"]  # logged to the DAG run's MLflow run
    assert result["resources"]["cpu_seconds"] > 0
    assert result["metrics"]["train_rows"] == features["train_rows"]
    assert result["metrics"]["train_seconds"] > 0 and result["mlflow_run_id"] == run_id
    # A second start (an Airflow retry) reuses the logged model instead of logging another.
    assert trainer.main(["--work-dir", str(work)]) == 0
    again = json.loads((work / "result.json").read_text())
    assert again["model_uri"] == result["model_uri"]
    assert again["metrics"]["train_rows"] == result["metrics"]["train_rows"]


FAKE_NVIDIA_SMI = """#!/bin/sh
# STUBBED GPU: no GPU on these machines; prints what nvidia-smi prints for two busy H100s.
echo "0, NVIDIA H100 80GB HBM3, 87, 40210, 81559"
echo "1, NVIDIA H100 80GB HBM3, 91, 38000, 81559"
"""


def test_gpu_sampler_summarises_nvidia_smi(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A stubbed nvidia-smi (no GPU here): utilisation and memory come out of its CSV."""
    binary = tmp_path / "nvidia-smi"
    binary.write_text(FAKE_NVIDIA_SMI)
    binary.chmod(0o755)
    monkeypatch.setenv("PATH", f"{tmp_path}:/usr/bin:/bin")
    with trainer.GpuSampler(interval_seconds=0.05) as sampler:
        import time

        time.sleep(0.2)
    summary = sampler.summary()
    assert summary["gpu_count"] == 2 and summary["gpu_name"] == "NVIDIA H100 80GB HBM3"
    assert summary["gpu_util_mean_pct"] == 89.0 and summary["gpu_util_max_pct"] == 91.0
    assert summary["gpu_memory_peak_mb"] == 40210 and summary["gpu_memory_total_mb"] == 81559


def test_gpu_sampler_without_nvidia_smi_reports_nothing(tmp_path: Path,
                                                        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PATH", str(tmp_path))
    with trainer.GpuSampler(interval_seconds=0.01) as sampler:
        pass
    assert sampler.summary() == {} and sampler.samples == []


def test_job_comes_from_the_environment_before_the_work_dir(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "config.json").write_text('{"from": "file"}')
    assert trainer.read_job(tmp_path) == {"from": "file"}
    monkeypatch.setenv(trainer.CONFIG_ENV, '{"from": "env"}')
    assert trainer.read_job(tmp_path) == {"from": "env"}
    monkeypatch.setenv(trainer.CONFIG_ENV, "{not json")
    code = trainer.main(["--work-dir", str(tmp_path)])
    result = json.loads((tmp_path / "result.json").read_text())
    assert code == trainer.EXIT_DATA and "cannot parse $MLOPS_TRAINER_CONFIG" in result["error"]


def test_credentials_come_from_a_file_that_is_deleted_first(tmp_path: Path,
                                                            monkeypatch: pytest.MonkeyPatch) -> None:
    """The operator hands the credentials over as a file in the work dir (not as container
    environment, which `docker inspect` shows); the trainer moves them into its own environment
    and deletes the file before it reads the job."""
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "placeholder")  # restored after the test
    (tmp_path / trainer.SECRETS_FILE).write_text(json.dumps({"AWS_SECRET_ACCESS_KEY": "s3cr3t"}))
    code = trainer.main(["--work-dir", str(tmp_path)])  # no job: fails after the secrets step
    assert code == 2
    import os

    assert os.environ["AWS_SECRET_ACCESS_KEY"] == "s3cr3t"
    assert not (tmp_path / trainer.SECRETS_FILE).exists()
    assert "s3cr3t" not in (tmp_path / "result.json").read_text()
