"""Container entrypoint of the trainer image: the same :func:`include.mlops_core.pipeline.train` as the
in-process path, driven by a work directory.

    python -m include.mlops_core.trainer --work-dir /work

Reads the job from ``$MLOPS_TRAINER_CONFIG`` (JSON; what the Airflow operator passes, so it works
on a remote engine too) or else ``<work-dir>/config.json``::

    {"dataset_config": {...DatasetConfig...}, "candidate": "…", "tuned": {…},
     "train_uri": "s3://…", "manifest_uri": "s3://…",
     "mlflow_run_id": "…", "artifacts_uri": "s3://…", "run_key": "2025-01-01T000000"}

Where the services are comes from the environment (``MLFLOW_TRACKING_URI``,
``MLOPS_S3_ENDPOINT_URL``); the credentials (``AWS_ACCESS_KEY_ID``, ``AWS_SECRET_ACCESS_KEY``,
``MLFLOW_TRACKING_USERNAME``/``PASSWORD``) from ``<work-dir>/secrets.json``, which the operator
puts into the container before it starts and which is read and deleted first thing, so they are
never in the container's configuration (``docker inspect``); else from the environment, for a run
by hand. Never from the job. Always writes
``<work-dir>/result.json`` (``status`` ok or error, the train result, timings, resource use
including GPU utilisation and memory when ``nvidia-smi`` sees a GPU, and for an error its class
and message) and exits with a code that names the failure class: 0 ok, 2 data or config error,
3 CUDA / driver error, 1 anything else (137 is the kernel's OOM kill, which no process can report
itself).
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import resource
import shutil
import subprocess
import sys
import threading
import time
import traceback
from pathlib import Path
from typing import Any

log = logging.getLogger("include.mlops_core.trainer")

EXIT_OK, EXIT_OTHER, EXIT_DATA, EXIT_CUDA = 0, 1, 2, 3
_CUDA_MARKERS = ("cuda", "cudnn", "nvidia", "nvml", "gpu driver", "no cuda-capable device")


def classify(err: BaseException) -> tuple[str, int]:
    """``(error class, exit code)`` of an exception raised while training.

    CUDA first: XGBoost's errors are ValueErrors. What a retry can help with
    (:func:`include.mlops_core.errors.retryable`: a service outage, a garbled answer) is ``error``,
    so Airflow retries it, as it would in-process.
    """
    from include.mlops_core.errors import PipelineError, retryable

    text = f"{type(err).__name__}: {err}".lower()
    if any(marker in text for marker in _CUDA_MARKERS):
        return "cuda", EXIT_CUDA
    if isinstance(err, PipelineError | ValueError) and not retryable(err):
        return "data", EXIT_DATA
    if isinstance(err, MemoryError):
        return "oom", EXIT_OTHER
    return "error", EXIT_OTHER


CONFIG_ENV = "MLOPS_TRAINER_CONFIG"
SECRETS_FILE = "secrets.json"  # in the work dir; written by the operator, deleted on start
# cgroup v2, then v1: the container's peak memory, what the OOM killer compares with the limit.
_CGROUP_PEAK = ("/sys/fs/cgroup/memory.peak", "/sys/fs/cgroup/memory/memory.max_usage_in_bytes")


def resources() -> dict[str, float]:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    out = {"cpu_seconds": round(usage.ru_utime + usage.ru_stime, 3),
           "peak_rss_mb": round(usage.ru_maxrss / 1024, 1)}  # Linux: KiB
    for path in _CGROUP_PEAK:
        try:
            out["container_peak_mb"] = round(int(Path(path).read_text()) / 2**20, 1)
            break
        except (OSError, ValueError):
            continue
    return out


class GpuSampler:
    """Samples ``nvidia-smi`` in a thread while training: utilisation and memory of the GPUs the
    container sees. Does nothing (``summary()`` is empty) when there is no nvidia-smi or GPU."""

    QUERY = "--query-gpu=index,name,utilization.gpu,memory.used,memory.total"

    def __init__(self, interval_seconds: float = 1.0) -> None:
        self.interval = interval_seconds
        self.samples: list[dict[str, Any]] = []
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.binary = shutil.which("nvidia-smi")

    def sample(self) -> list[dict[str, Any]]:
        if not self.binary:
            return []
        try:
            out = subprocess.run([self.binary, self.QUERY, "--format=csv,noheader,nounits"],
                                 capture_output=True, text=True, timeout=10, check=True).stdout
        except (OSError, subprocess.SubprocessError):
            return []
        rows = []
        for line in out.strip().splitlines():
            parts = [p.strip() for p in line.split(",")]
            try:
                rows.append({"index": int(parts[0]), "name": parts[1], "util": float(parts[2]),
                             "mem_used": float(parts[3]), "mem_total": float(parts[4])})
            except (IndexError, ValueError):  # "[N/A]" on some boards: skip that sample
                continue
        return rows

    def _loop(self) -> None:
        while not self._stop.is_set():
            self.samples.extend(self.sample())
            self._stop.wait(self.interval)

    def __enter__(self) -> GpuSampler:
        if self.binary:
            self._thread = threading.Thread(target=self._loop, name="gpu-sampler", daemon=True)
            self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=15)
        self.samples.extend(self.sample())  # at least one sample, even for a short fit

    def summary(self) -> dict[str, Any]:
        if not self.samples:
            return {}
        util = [s["util"] for s in self.samples]
        names = sorted({s["name"] for s in self.samples})
        return {"gpu_count": len({s["index"] for s in self.samples}), "gpu_name": ", ".join(names),
                "gpu_util_mean_pct": round(sum(util) / len(util), 1),
                "gpu_util_max_pct": max(util),
                "gpu_memory_peak_mb": max(s["mem_used"] for s in self.samples),
                "gpu_memory_total_mb": max(s["mem_total"] for s in self.samples)}


def load_secrets(work_dir: Path) -> list[str]:
    """Move the credentials from ``<work-dir>/secrets.json`` into this process's environment and
    delete the file; returns their names (never the values)."""
    from include.mlops_core.errors import ConfigError

    path = work_dir / SECRETS_FILE
    if not path.exists():
        return []
    try:
        secrets = json.loads(path.read_text())
    except (OSError, ValueError) as err:
        raise ConfigError(f"cannot read the credentials file {path}: {type(err).__name__}") \
            from None
    finally:
        path.unlink(missing_ok=True)
    os.environ.update({str(key): str(value) for key, value in secrets.items()})
    return sorted(secrets)


def read_job(work_dir: Path) -> dict[str, Any]:
    from include.mlops_core.errors import ConfigError

    if os.environ.get(CONFIG_ENV):
        try:
            return json.loads(os.environ[CONFIG_ENV])
        except ValueError as err:
            raise ConfigError(f"cannot parse ${CONFIG_ENV}: {err}") from err
    config_path = work_dir / "config.json"
    try:
        return json.loads(config_path.read_text())
    except (OSError, ValueError) as err:
        raise ConfigError(f"cannot read the trainer config {config_path} (and ${CONFIG_ENV} "
                          f"is not set): {err}") from err


def run(work_dir: Path) -> tuple[dict[str, Any], int]:
    """Train from ``work_dir/config.json``; returns the result dict and the exit code."""
    started = time.monotonic()
    result: dict[str, Any] = {"status": "error"}
    device = os.environ.get("MLOPS_TRAINER_DEVICE", "cpu")
    sampler = GpuSampler()
    try:
        names = load_secrets(work_dir)
        if names:
            log.info("Credentials from the secrets file (deleted): %s", ", ".join(names))
        job = read_job(work_dir)
        from mlflow import MlflowClient

        from include.mlops_core.config import DatasetConfig
        from include.mlops_core.pipeline import RunContext, train
        from include.mlops_core.storage import ObjectStore

        config = DatasetConfig.model_validate(job["dataset_config"])
        store = ObjectStore.from_env() if job["train_uri"].startswith("s3://") else ObjectStore()
        run_ctx = RunContext(config=config, store=store, client=MlflowClient(),
                      mlflow_run_id=job["mlflow_run_id"], artifacts_uri=job["artifacts_uri"],
                      run_key=job["run_key"])
        candidate, tuned = job.get("candidate"), job.get("tuned") or {}
        family = config.candidate_view(candidate or config.training.all_candidates[0].label,
                                       tuned).training.family
        if device == "cuda" and family != "xgboost":
            log.warning("A GPU was given, but family %s trains on CPU only (xgboost uses it)",
                        family)
            device = "cpu"  # what actually trained, for result.json and the MLflow tags
        log.info("Training %s (%s) on %s; MLflow run %s", config.registered_model_name,
                 family, device, job["mlflow_run_id"])
        with sampler:
            trained = train(run_ctx, train_uri=job["train_uri"], manifest_uri=job["manifest_uri"],
                            candidate=candidate, tuned=tuned)
        result = {"status": "ok", **trained, "mlflow_run_id": job["mlflow_run_id"]}
        code = EXIT_OK
    except Exception as err:  # noqa: BLE001 - every failure becomes a classified result file
        from include.mlops_core.errors import PipelineError

        error_class, code = classify(err)
        # The message without its runbook suffix; the runbook goes alongside, so the operator's
        # final line carries one link (the specific page, e.g. schema-mismatch.md).
        message = err.args[0] if isinstance(err, PipelineError) and err.args else str(err)
        result = {"status": "error", "error_class": error_class,
                  "error": f"{type(err).__name__}: {message}",
                  "runbook": err.runbook if isinstance(err, PipelineError) else None}
        log.error("Training failed (%s): %s", error_class, err)
        traceback.print_exc(file=sys.stderr)
    result["timings"] = {"wall_seconds": round(time.monotonic() - started, 3)}
    result["resources"] = {**resources(), **sampler.summary()}
    result["device"] = device
    work_dir.mkdir(parents=True, exist_ok=True)
    tmp = work_dir / ".result.json.tmp"
    tmp.write_text(json.dumps(result, indent=2, default=str))
    tmp.replace(work_dir / "result.json")  # atomic: the operator never reads half a file
    return result, code


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Train one model from a work directory")
    parser.add_argument("--work-dir", type=Path, default=Path("/work"))
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, stream=sys.stdout,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    result, code = run(args.work_dir)
    log.info("Trainer result: %s", json.dumps({k: v for k, v in result.items()
                                                if k in ("status", "error_class", "model_uri")}))
    return code


if __name__ == "__main__":
    exit_code = main()
    # Everything is written (result.json, MLflow calls are synchronous): skip the interpreter's
    # teardown of the ML libraries, which took about 1 s per container.
    logging.shutdown()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(exit_code)
